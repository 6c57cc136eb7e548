# Stage 6: provenance, merged tables, acquisition actions, gallery images, plots, narrative summary, HTML report.
# Every output a reader needs is marked for `snakemake --report` with a category and a caption.


rule pipeline_info:
    output:
        params=report(R / "pipeline_info/params.json", category="Provenance", caption="../report/params.rst"),
        versions=report(
            R / "pipeline_info/software_versions.json",
            category="Provenance",
            caption="../report/software_versions.rst",
        ),
    log:
        R / "logs/pipeline_info.log",
    benchmark:
        R / "benchmarks/pipeline_info/run.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        config=canonical(config),
    script:
        "../scripts/stage.py"


rule tables:
    input:
        every_batch("imported"),
        every_batch("quality"),
        every_batch("inference"),
        every_batch("segmentation"),
        every_batch("review"),
        every_batch("refinement"),
        corrections=review_corrections,
    output:
        units=report(R / "tables/units.csv", category="Tables", subcategory="Units", caption="../report/units.rst"),
        units_parquet=R / "tables/units.parquet",
        objects_parquet=R / "tables/objects.parquet",
        reviews_parquet=R / "tables/reviews.parquet",
        objects=report(
            R / "tables/objects.csv", category="Tables", subcategory="Objects", caption="../report/objects.rst"
        ),
        reviews=report(
            R / "tables/reviews.csv", category="Review", subcategory="Reviews", caption="../report/reviews.rst"
        ),
        reviews_jsonl=R / "tables/reviews.jsonl",
        finetune=R / "tables/finetune.jsonl",
        failures=report(
            R / "tables/failures.csv", category="Tables", subcategory="Failures", caption="../report/failures.rst"
        ),
        warnings=report(
            R / "tables/warnings.csv", category="Tables", subcategory="Warnings", caption="../report/warnings.rst"
        ),
        answers=report(
            R / "tables/answers.csv", category="Review", subcategory="Answers", caption="../report/answers.rst"
        ),
        aggregates=report(
            R / "tables/aggregates.json",
            category="Tables",
            subcategory="Aggregates",
            caption="../report/aggregates.rst",
        ),
        actions=report(
            R / "tables/acquisition_actions.json",
            category="Acquisition actions",
            caption="../report/acquisition_actions.rst",
        ),
    log:
        R / "logs/tables.log",
    benchmark:
        R / "benchmarks/tables/run.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        **POSITIONS,
        batches=list(BATCHES),
        channels=CHANNELS,
        condition_column=config["review"]["condition_column"],
        dataset=config["dataset"],
    script:
        "../scripts/stage.py"


rule gallery:
    input:
        imported=B.imported,
        refinement=B.refinement,
        reference=R / "quality/reference.json",
    output:
        gallery=B.gallery,
    log:
        R / "logs/gallery/{batch}.log",
    benchmark:
        R / "benchmarks/gallery/{batch}.tsv"
    conda:
        "../envs/analysis.yaml"
    threads: JOB_THREADS
    resources:
        mem_mb=field_mem_mb("gallery", 2000),
        runtime=30,
    params:
        settings=GALLERY_SETTINGS,
        channels=CHANNELS,
    script:
        "../scripts/stage.py"


rule plots:
    input:
        units=R / "tables/units.csv",
        objects=R / "tables/objects.csv",
    output:
        **{
            name: report(
                R / f"report/plots/{name}.svg",
                category="Plots",
                subcategory=PLOT_SUBCATEGORIES[name],
                caption=f"../report/plots/{name}.rst",
            )
            for name in PLOT_NAMES
        },
    log:
        R / "logs/plots.log",
    benchmark:
        R / "benchmarks/plots/run.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        **POSITIONS,
        condition_column=config["review"]["condition_column"],
        thresholds=canonical(config["review"]["thresholds"]),
    script:
        "../scripts/stage.py"


rule run_summary:
    input:
        aggregates=R / "tables/aggregates.json",
        prompt=summary_prompt,
        llm_check=llm_check_record,
    output:
        run_summary=report(
            R / "tables/run_summary.json",
            category="Review",
            subcategory="Narrative summary",
            caption="../report/run_summary.rst",
        ),
    log:
        R / "logs/run_summary.log",
    benchmark:
        R / "benchmarks/run_summary/run.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        settings=REVIEW_PARAMS,
    script:
        "../scripts/stage.py"


rule report:
    input:
        tables=rules.tables.output,
        plots=rules.plots.output,
        gallery=every_batch("gallery"),
        run_summary=R / "tables/run_summary.json",
        model_check=R / "models/model_check.json",
        params=R / "pipeline_info/params.json",
        versions=R / "pipeline_info/software_versions.json",
    output:
        html=report(R / "report/report.html", category="Report", caption="../report/report_html.rst"),
    log:
        R / "logs/report.log",
    conda:
        "../envs/analysis.yaml"
    params:
        dataset=config["dataset"],
        batches=list(BATCHES),
        settings=REPORT_SETTINGS,
    script:
        "../scripts/stage.py"


rule ome_zarr:
    input:
        imported=every_batch("imported"),
        refinement=every_batch("refinement"),
    output:
        ome_zarr=directory(R / "ome_zarr"),
    log:
        R / "logs/ome_zarr.log",
    benchmark:
        R / "benchmarks/ome_zarr/run.tsv"
    conda:
        "../envs/analysis.yaml"
    resources:
        runtime=120,
    params:
        plate_column=config["report"]["plate_column"],
        well_column=config["report"]["well_column"],
        dataset=config["dataset"],
    script:
        "../scripts/stage.py"


rule ro_crate:
    input:
        imported=every_batch("imported"),
        report=R / "report/report.html",
        tables=rules.tables.output,
        run_summary=R / "tables/run_summary.json",
        params=R / "pipeline_info/params.json",
        versions=R / "pipeline_info/software_versions.json",
        model_check=R / "models/model_check.json",
        ome_zarr=[R / "ome_zarr"] if config["report"]["ome_zarr"] else [],
    output:
        ro_crate=R / "ro-crate-metadata.json",
    log:
        R / "logs/ro_crate.log",
    conda:
        "../envs/analysis.yaml"
    params:
        dataset=config["dataset"],
    script:
        "../scripts/stage.py"

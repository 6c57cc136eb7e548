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
        config=as_json(config),
        out=lambda wildcards, output: Path(output.params).parent,
    shell:
        '"$SNAKESCOPE_PYTHON" -m snakescope pipeline-info --config {params.config:q} --out {params.out:q} 2> {log:q}'


rule tables:
    input:
        unpack(review_corrections),
        imported=expand(R / "import/{batch}", batch=BATCHES),
        quality=expand(R / "quality/{batch}.json", batch=BATCHES),
        inference=expand(R / "inference/{batch}", batch=BATCHES),
        segmentation=expand(R / "segmentation/{batch}", batch=BATCHES),
        review=expand(R / "review/{batch}", batch=BATCHES),
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
        batches=as_json(list(BATCHES)),
        model=as_json({"channels": config["model"]["channels"]}),
        condition_column=config["review"]["condition_column"],
        dataset=config["dataset"],
        positions=as_json({k: config["report"][k] for k in ("plate_column", "well_column", "usable_verdicts")}),
        results=lambda wildcards, output: Path(output.units).parents[1],
        corrections=lambda wildcards, input: (
            f"--corrections {shlex.quote(input.corrections)}" if hasattr(input, "corrections") else ""
        ),
        out=lambda wildcards, output: Path(output.units).parent,
    shell:
        '"$SNAKESCOPE_PYTHON" -m snakescope tables --batches {params.batches:q} --results {params.results:q} --model-settings {params.model:q} '
        "--condition-column {params.condition_column:q} --dataset {params.dataset:q} --report-settings {params.positions:q} "
        "--out {params.out:q} {params.corrections} 2> {log:q}"


rule gallery:
    input:
        imported=R / "import/{batch}",
        segmentation=R / "segmentation/{batch}",
        review=R / "review/{batch}",
        reference=R / "quality/reference.json",
    output:
        R / "report/gallery/{batch}.json",
    log:
        R / "logs/gallery/{batch}.log",
    benchmark:
        R / "benchmarks/gallery/{batch}.tsv"
    conda:
        "../envs/analysis.yaml"
    resources:
        mem_mb=field_mem_mb("gallery", 2000),
        runtime=30,
    params:
        settings=as_json({k: config["report"][k] for k in ("thumbnail_px", "detail_px", "image_quality")}),
        model=as_json({"channels": config["model"]["channels"]}),
    shell:
        '"$SNAKESCOPE_PYTHON" -m snakescope gallery --manifest {input.imported:q}/manifest.json --segmentation {input.segmentation:q} '
        "--review {input.review:q} --model-settings {params.model:q} --settings {params.settings:q} --reference {input.reference:q} "
        "--out {output:q} 2> {log:q}"


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
        condition_column=config["review"]["condition_column"],
        thresholds=as_json(config["review"]["thresholds"]),
        positions=as_json({k: config["report"][k] for k in ("plate_column", "well_column", "usable_verdicts")}),
        tables=lambda wildcards, input: Path(input.units).parent,
        out=lambda wildcards, output: Path(output[0]).parent,
    shell:
        '"$SNAKESCOPE_PYTHON" -m snakescope plots --tables {params.tables:q} --condition-column {params.condition_column:q} '
        "--thresholds {params.thresholds:q} --settings {params.positions:q} --out {params.out:q} 2> {log:q}"


rule run_summary:
    input:
        unpack(summary_prompts),
        aggregates=R / "tables/aggregates.json",
    output:
        report(
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
        settings=as_json(REVIEW_PARAMS),
    shell:
        '"$SNAKESCOPE_PYTHON" -m snakescope summary --aggregates {input.aggregates:q} --settings {params.settings:q} '
        "--out {output:q} 2> {log:q}"


rule report:
    input:
        tables=rules.tables.output,
        plots=rules.plots.output,
        gallery=expand(R / "report/gallery/{batch}.json", batch=BATCHES),
        run_summary=R / "tables/run_summary.json",
        model_check=R / "models/model_check.json",
        params=R / "pipeline_info/params.json",
        versions=R / "pipeline_info/software_versions.json",
    output:
        report(R / "report/report.html", category="Report", caption="../report/report_html.rst"),
    log:
        R / "logs/report.log",
    conda:
        "../envs/analysis.yaml"
    params:
        dataset=config["dataset"],
        batches=as_json(list(BATCHES)),
        settings=as_json({k: config["report"][k] for k in ("page_size", "detail_images_max_units")}),
        tables=lambda wildcards, input: Path(input.run_summary).parent,
        plots=lambda wildcards, input: Path(input.plots[0]).parent,
        pipeline_info=lambda wildcards, input: Path(input.params).parent,
        benchmarks=lambda wildcards, output: Path(output[0]).parents[1] / "benchmarks",
    shell:
        '"$SNAKESCOPE_PYTHON" -m snakescope report --tables {params.tables:q} --plots {params.plots:q} --gallery {input.gallery:q} '
        "--model-check {input.model_check:q} --pipeline-info {params.pipeline_info:q} --dataset {params.dataset:q} "
        "--settings {params.settings:q} --benchmarks {params.benchmarks:q} --batches {params.batches:q} --out {output:q} 2> {log:q}"

rule pipeline_info:
    output:
        params=R / "pipeline_info/params.json",
        versions=R / "pipeline_info/software_versions.json",
    params:
        config=as_json(config),
    log:
        R / "logs/pipeline_info.log",
    conda:
        "../../envs/analysis.yaml"
    shell:
        "{SNAKESCOPE} pipeline-info --config {params.config:q} --out {R}/pipeline_info 2> {log}"


rule tables:
    input:
        imported=expand(R / "import/{batch}", batch=BATCHES),
        quality=expand(R / "quality/{batch}.json", batch=BATCHES),
        inference=expand(R / "inference/{batch}", batch=BATCHES),
        segmentation=expand(R / "segmentation/{batch}", batch=BATCHES),
        review=expand(R / "review/{batch}", batch=BATCHES),
    output:
        units=report(R / "tables/units.csv", category="Tables", caption="../report/units.rst"),
        objects=report(R / "tables/objects.csv", category="Tables", caption="../report/objects.rst"),
        reviews=report(R / "tables/reviews.csv", category="Tables", caption="../report/reviews.rst"),
        reviews_jsonl=R / "tables/reviews.jsonl",
        failures=report(R / "tables/failures.csv", category="Tables", caption="../report/failures.rst"),
        answers=report(R / "tables/answers.csv", category="Tables", caption="../report/answers.rst"),
        aggregates=R / "tables/aggregates.json",
    params:
        batches=as_json(list(BATCHES)),
        model=as_json({"channels": config["model"]["channels"]}),
        condition_column=config["review"]["condition_column"],
    log:
        R / "logs/tables.log",
    conda:
        "../../envs/analysis.yaml"
    shell:
        "{SNAKESCOPE} tables --batches {params.batches:q} --results {R} --model-settings {params.model:q} "
        "--condition-column {params.condition_column:q} --out {R}/tables 2> {log}"


rule run_summary:
    input:
        unpack(summary_prompts),
        aggregates=R / "tables/aggregates.json",
    output:
        R / "tables/run_summary.json",
    params:
        settings=as_json(REVIEW_PARAMS),
    log:
        R / "logs/run_summary.log",
    conda:
        "../../envs/analysis.yaml"
    shell:
        "{SNAKESCOPE} summary --aggregates {input.aggregates} --settings {params.settings:q} --runtime {OLLAMA_RUNTIME:q} "
        "--cache-dir {CACHE_DIR:q} --out {output} 2> {log}"


rule report:
    input:
        tables=rules.tables.output,
        run_summary=R / "tables/run_summary.json",
        model_check=R / "models/model_check.json",
        params=R / "pipeline_info/params.json",
        versions=R / "pipeline_info/software_versions.json",
    output:
        report(R / "report/report.html", category="Report", caption="../report/report_html.rst"),
    params:
        batches=as_json(list(BATCHES)),
        dataset=config["dataset"],
    log:
        R / "logs/report.log",
    conda:
        "../../envs/analysis.yaml"
    shell:
        "{SNAKESCOPE} report --tables {R}/tables --results {R} --batches {params.batches:q} "
        "--model-check {input.model_check} --pipeline-info {R}/pipeline_info --dataset {params.dataset:q} "
        "--run-summary {input.run_summary} --out {output} 2> {log}"

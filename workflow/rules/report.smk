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
        review=expand(R / "review/{batch}.json", batch=BATCHES),
    output:
        units=report(R / "tables/units.csv", category="Tables", caption="../report/units.rst"),
        objects=report(R / "tables/objects.csv", category="Tables", caption="../report/objects.rst"),
        reviews=report(R / "tables/reviews.csv", category="Tables", caption="../report/reviews.rst"),
        reviews_jsonl=R / "tables/reviews.jsonl",
        failures=report(R / "tables/failures.csv", category="Tables", caption="../report/failures.rst"),
        counts=R / "tables/counts.json",
    params:
        batches=as_json(list(BATCHES)),
        model=as_json({"channels": config["model"]["channels"]}),
    log:
        R / "logs/tables.log",
    conda:
        "../../envs/analysis.yaml"
    shell:
        "{SNAKESCOPE} tables --batches {params.batches:q} --results {R} --model-settings {params.model:q} "
        "--out {R}/tables 2> {log}"


rule report:
    input:
        tables=rules.tables.output,
        segmentation=expand(R / "segmentation/{batch}", batch=BATCHES),
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
        "--out {output} 2> {log}"

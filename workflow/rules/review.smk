rule review:
    input:
        imported=R / "import/{batch}",
        quality=R / "quality/{batch}.json",
        inference=R / "inference/{batch}",
        segmentation=R / "segmentation/{batch}",
        knowledge_base=config["review"]["knowledge_base"],
        schema=workflow.source_path("../schemas/review.schema.json"),
    output:
        R / "review/{batch}.json",
    params:
        settings=as_json(config["review"]),
        model=as_json({"channels": config["model"]["channels"]}),
    log:
        R / "logs/review/{batch}.log",
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        "../../envs/analysis.yaml"
    shell:
        "{SNAKESCOPE} review --manifest {input.imported}/manifest.json --quality {input.quality} "
        "--inference {input.inference}/manifest.json --segmentation {input.segmentation} "
        "--knowledge-base {input.knowledge_base} --settings {params.settings:q} --model-settings {params.model:q} "
        "--schema {input.schema} --out {output} 2> {log}"

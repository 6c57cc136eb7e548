rule review:
    input:
        unpack(review_prompts),
        imported=R / "import/{batch}",
        quality=R / "quality/{batch}.json",
        reference=R / "quality/reference.json",
        inference=R / "inference/{batch}",
        segmentation=R / "segmentation/{batch}",
        knowledge_base=config["review"]["knowledge_base"],
        schema=workflow.source_path("../schemas/review.schema.json"),
    output:
        directory(R / "review/{batch}"),
    params:
        settings=as_json(REVIEW_PARAMS),
        postprocess=as_json(config["postprocess"]),
        model=as_json({"channels": config["model"]["channels"]}),
    log:
        R / "logs/review/{batch}.log",
    benchmark:
        R / "benchmarks/review/{batch}.tsv",
    resources:
        mem_mb=4000,
        runtime=240,
    conda:
        "../../envs/analysis.yaml"
    shell:
        "{SNAKESCOPE} review --manifest {input.imported:q}/manifest.json --quality {input.quality:q} "
        "--inference {input.inference:q}/manifest.json --segmentation {input.segmentation:q} "
        "--knowledge-base {input.knowledge_base:q} --settings {params.settings:q} --postprocess {params.postprocess:q} "
        "--model-settings {params.model:q} --schema {input.schema:q} --reference {input.reference:q} --runtime {OLLAMA_RUNTIME:q} "
        "--cache-dir {CACHE_DIR:q} --out {output:q} 2> {log:q}"

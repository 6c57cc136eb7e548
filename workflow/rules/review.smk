rule review:
    input:
        unpack(review_prompts),
        imported=R / "import/{batch}",
        quality=R / "quality/{batch}.json",
        reference=R / "quality/reference.json",
        inference=R / "inference/{batch}",
        segmentation=R / "segmentation/{batch}",
        knowledge_base=KNOWLEDGE_BASE,
        schema=workflow.source_path("../schemas/review.schema.json"),
    output:
        directory(R / "review/{batch}"),
    log:
        R / "logs/review/{batch}.log",
    benchmark:
        R / "benchmarks/review/{batch}.tsv"
    conda:
        "../envs/analysis.yaml"
    resources:
        mem_mb=field_mem_mb("review_with_refinement" if USES_LLM else "review", 4000),
        runtime=240,
    params:
        settings=as_json(REVIEW_PARAMS),
        postprocess=as_json(config["postprocess"]),
        model=as_json({"channels": config["model"]["channels"]}),
    shell:
        '"$SNAKESCOPE_PYTHON" -m snakescope review --manifest {input.imported:q}/manifest.json --quality {input.quality:q} '
        "--inference {input.inference:q}/manifest.json --segmentation {input.segmentation:q} "
        "--knowledge-base {input.knowledge_base:q} --settings {params.settings:q} --postprocess {params.postprocess:q} "
        "--model-settings {params.model:q} --schema {input.schema:q} --reference {input.reference:q} "
        "--out {output:q} 2> {log:q}"

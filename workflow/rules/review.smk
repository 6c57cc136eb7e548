rule review:
    input:
        imported=B.imported,
        quality=B.quality,
        reference=R / "quality/reference.json",
        inference=B.inference,
        segmentation=B.segmentation,
        knowledge_base=KNOWLEDGE_BASE,
        schema=workflow.source_path("../schemas/review.schema.json"),
        prompt=review_prompt,
    output:
        review=directory(B.review),
    log:
        R / "logs/review/{batch}.log",
    benchmark:
        R / "benchmarks/review/{batch}.tsv"
    conda:
        "../envs/analysis.yaml"
    resources:
        mem_mb=field_mem_mb("review", 4000),
        runtime=240,
    params:
        settings=REVIEW_PARAMS,
        channels=CHANNELS,
    script:
        "../scripts/stage.py"

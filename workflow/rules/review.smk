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
        llm_check=llm_check_record,
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


# The LLM's self-test, once per run and endpoint (not once per review job): the review jobs and the run summary read
# its record; changing the backend, endpoint or model reruns it.
rule llm_check:
    output:
        llm_check=R / "review/llm_check.json",
    log:
        R / "logs/review/llm_check.log",
    benchmark:
        R / "benchmarks/review/llm_check.tsv"
    conda:
        "../envs/analysis.yaml"
    resources:
        runtime=60,
    params:
        settings=LLM_CHECK_PARAMS,
    script:
        "../scripts/stage.py"

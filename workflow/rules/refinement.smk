rule refinement:
    input:
        imported=B.imported,
        quality=B.quality,
        inference=B.inference,
        segmentation=B.segmentation,
        review=B.review,
        knowledge_base=KNOWLEDGE_BASE,
    output:
        refinement=directory(B.refinement),
    log:
        R / "logs/refinement/{batch}.log",
    benchmark:
        R / "benchmarks/refinement/{batch}.tsv"
    conda:
        "../envs/analysis.yaml"
    resources:
        mem_mb=field_mem_mb("refinement" if USES_LLM else "review", 2000),
        runtime=120,
    params:
        settings=POSTPROCESS_SETTINGS,
        channels=CHANNELS,
        refine=REFINE,
        count_tolerance=config["review"]["thresholds"]["count_tolerance"],
        cell_line_column=config["review"]["cell_line_column"],
    script:
        "../scripts/stage.py"

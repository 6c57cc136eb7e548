rule postprocess:
    input:
        imported=B.imported,
        inference=B.inference,
    output:
        segmentation=directory(B.segmentation),
    log:
        R / "logs/segmentation/{batch}.log",
    benchmark:
        R / "benchmarks/postprocess/{batch}.tsv"
    conda:
        "../envs/analysis.yaml"
    threads: JOB_THREADS
    resources:
        mem_mb=field_mem_mb("postprocess", 4000),
        runtime=60,
    params:
        settings=POSTPROCESS_SETTINGS,
        channels=CHANNELS,
    script:
        "../scripts/stage.py"

rule import_batch:
    input:
        batch_sources,
    output:
        imported=directory(B.imported),
    log:
        R / "logs/import/{batch}.log",
    benchmark:
        R / "benchmarks/import_batch/{batch}.tsv"
    conda:
        "../envs/import-aicsimageio.yaml" if config["reader"] == "aicsimageio" else "../envs/import.yaml"
    threads: JOB_THREADS
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        sources=batch_source_records,
        settings=IMPORT_SETTINGS,
    script:
        "../scripts/stage.py"

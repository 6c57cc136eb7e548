rule quality_metrics:
    input:
        imported=B.imported,
    output:
        quality=B.quality,
    log:
        R / "logs/quality/{batch}.log",
    benchmark:
        R / "benchmarks/quality_metrics/{batch}.tsv"
    conda:
        "../envs/analysis.yaml"
    threads: JOB_THREADS
    resources:
        mem_mb=field_mem_mb("quality", 2000),
        runtime=30,
    script:
        "../scripts/stage.py"


rule quality_reference:
    input:
        quality=every_batch("quality"),
        imported=every_batch("imported"),
    output:
        reference=R / "quality/reference.json",
    log:
        R / "logs/quality/reference.log",
    benchmark:
        R / "benchmarks/quality_reference/run.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        plate_column=config["report"]["plate_column"],
    script:
        "../scripts/stage.py"

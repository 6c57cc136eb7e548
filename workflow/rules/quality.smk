rule quality_metrics:
    input:
        R / "import/{batch}",
    output:
        R / "quality/{batch}.json",
    log:
        R / "logs/quality/{batch}.log",
    benchmark:
        R / "benchmarks/quality_metrics/{batch}.tsv"
    conda:
        "../envs/analysis.yaml"
    resources:
        mem_mb=field_mem_mb("quality", 2000),
        runtime=30,
    shell:
        '"$SNAKESCOPE_PYTHON" -m snakescope quality --manifest {input:q}/manifest.json --out {output:q} 2> {log:q}'


rule quality_reference:
    input:
        quality=expand(R / "quality/{batch}.json", batch=BATCHES),
        imported=expand(R / "import/{batch}", batch=BATCHES),
    output:
        R / "quality/reference.json",
    log:
        R / "logs/quality/reference.log",
    benchmark:
        R / "benchmarks/quality_reference/run.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        manifests=IMPORT_MANIFESTS,
        plate_column=config["report"]["plate_column"],
    shell:
        '"$SNAKESCOPE_PYTHON" -m snakescope quality-reference --quality {input.quality:q} --manifests {params.manifests:q} '
        "--plate-column {params.plate_column:q} --out {output:q} 2> {log:q}"

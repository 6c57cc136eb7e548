rule quality_metrics:
    input:
        R / "import/{batch}",
    output:
        R / "quality/{batch}.json",
    log:
        R / "logs/quality/{batch}.log",
    benchmark:
        R / "benchmarks/quality_metrics/{batch}.tsv",
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/analysis.yaml"
    shell:
        "{SNAKESCOPE} quality --manifest {input}/manifest.json --out {output} 2> {log}"


rule quality_reference:
    input:
        expand(R / "quality/{batch}.json", batch=BATCHES),
    output:
        R / "quality/reference.json",
    log:
        R / "logs/quality/reference.log",
    benchmark:
        R / "benchmarks/quality_reference/run.tsv",
    conda:
        "../../envs/analysis.yaml"
    shell:
        "{SNAKESCOPE} quality-reference --quality {input} --out {output} 2> {log}"

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

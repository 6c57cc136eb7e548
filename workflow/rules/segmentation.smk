rule postprocess:
    input:
        imported=R / "import/{batch}",
        inference=R / "inference/{batch}",
    output:
        directory(R / "segmentation/{batch}"),
    log:
        R / "logs/segmentation/{batch}.log",
    benchmark:
        R / "benchmarks/postprocess/{batch}.tsv"
    conda:
        "../envs/analysis.yaml"
    resources:
        mem_mb=field_mem_mb("postprocess", 4000),
        runtime=60,
    params:
        settings=as_json(config["postprocess"]),
        model=as_json({"channels": config["model"]["channels"]}),
    shell:
        '"$SNAKESCOPE_PYTHON" -m snakescope postprocess --manifest {input.imported:q}/manifest.json --inference {input.inference:q}/manifest.json '
        "--settings {params.settings:q} --model-settings {params.model:q} --out {output:q} 2> {log:q}"

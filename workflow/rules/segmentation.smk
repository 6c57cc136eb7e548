rule postprocess:
    input:
        imported=R / "import/{batch}",
        inference=R / "inference/{batch}",
    output:
        directory(R / "segmentation/{batch}"),
    params:
        settings=as_json(config["postprocess"]),
        model=as_json({"channels": config["model"]["channels"]}),
    log:
        R / "logs/segmentation/{batch}.log",
    benchmark:
        R / "benchmarks/postprocess/{batch}.tsv",
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/analysis.yaml"
    shell:
        "{SNAKESCOPE} postprocess --manifest {input.imported:q}/manifest.json --inference {input.inference:q}/manifest.json "
        "--settings {params.settings:q} --model-settings {params.model:q} --out {output:q} 2> {log:q}"

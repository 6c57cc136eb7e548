rule import_batch:
    input:
        batch_sources,
    output:
        directory(R / "import/{batch}"),
    log:
        R / "logs/import/{batch}.log",
    benchmark:
        R / "benchmarks/import_batch/{batch}.tsv"
    conda:
        "../envs/import-aicsimageio.yaml" if config["reader"] == "aicsimageio" else "../envs/import.yaml"
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        sources=batch_sources_json,
        settings=as_json(config["import"]),
        reader=config["reader"],
    shell:
        '"$SNAKESCOPE_PYTHON" -m snakescope import --batch {wildcards.batch} --sources {params.sources:q} --settings {params.settings:q} '
        "--reader {params.reader:q} --out {output:q} 2> {log:q}"

rule check_model:
    output:
        report(R / "models/model_check.json", category="Provenance", caption="../report/model_check.rst"),
    log:
        R / "logs/check_model.log",
    benchmark:
        R / "benchmarks/check_model/run.tsv"
    conda:
        "../envs/inference.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        settings=as_json(config["model"]),
        cache_dir=config["cache_dir"],
    shell:
        '"$SNAKESCOPE_PYTHON" -m snakescope check-model --settings {params.settings:q} --cache-dir {params.cache_dir:q} --out {output:q} 2> {log:q}'


rule dataset_pixels:
    input:
        expand(R / "import/{batch}", batch=BATCHES),
    output:
        R / "inference/dataset_pixels.npy",
    log:
        R / "logs/inference/dataset_pixels.log",
    benchmark:
        R / "benchmarks/dataset_pixels/run.tsv"
    conda:
        "../envs/inference.yaml"
    params:
        manifests=IMPORT_MANIFESTS,
        model=as_json({"channels": config["model"]["channels"]}),
    shell:
        '"$SNAKESCOPE_PYTHON" -m snakescope dataset-pixels --manifests {params.manifests:q} --model-settings {params.model:q} --out {output:q} 2> {log:q}'


rule infer:
    input:
        unpack(dataset_normalization),
        imported=R / "import/{batch}",
        model_check=R / "models/model_check.json",
    output:
        directory(R / "inference/{batch}"),
    log:
        R / "logs/inference/{batch}.log",
    benchmark:
        R / "benchmarks/infer/{batch}.tsv"
    conda:
        "../envs/inference.yaml"
    threads: INFER_THREADS
    resources:
        mem_mb=field_mem_mb("infer", 6000),
        runtime=120,
    params:
        settings=as_json(MODEL_PARAMS),
        dataset_pixels=lambda wildcards, input: (
            f"--dataset-pixels {shlex.quote(input.pixels)}" if hasattr(input, "pixels") else ""
        ),
    shell:
        '"$SNAKESCOPE_PYTHON" -m snakescope infer --manifest {input.imported:q}/manifest.json --settings {params.settings:q} '
        "--model-check {input.model_check:q} --threads {threads} --out {output:q} {params.dataset_pixels} 2> {log:q}"

rule check_model:
    output:
        model_check=report(R / "models/model_check.json", category="Provenance", caption="../report/model_check.rst"),
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
        settings=MODEL_SETTINGS,
    script:
        "../scripts/stage.py"


rule dataset_pixels:
    input:
        imported=every_batch("imported"),
    output:
        pixels=R / "inference/dataset_pixels.npy",
    log:
        R / "logs/inference/dataset_pixels.log",
    benchmark:
        R / "benchmarks/dataset_pixels/run.tsv"
    conda:
        "../envs/inference.yaml"
    params:
        channels=CHANNELS,
    script:
        "../scripts/stage.py"


rule infer:
    input:
        imported=B.imported,
        model_check=R / "models/model_check.json",
        pixels=dataset_normalization,
    output:
        inference=directory(B.inference),
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
        settings=INFER_SETTINGS,
    script:
        "../scripts/stage.py"

# Entry point: `snakemake --configfile my-config.yaml` from this folder. The workflow is workflow/Snakefile
# (the catalog's standard layout); it is included with its default target, rule `all`.

workflow.include("workflow/Snakefile", overwrite_default_target=True)

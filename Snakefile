# snakescope: microscope acquisitions -> bioimage.io inference -> review -> report.
# Rules live in workflow/rules/, logic in the snakescope package (workflow/snakescope/).

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/import.smk"
include: "workflow/rules/quality.smk"
include: "workflow/rules/inference.smk"
include: "workflow/rules/segmentation.smk"
include: "workflow/rules/review.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        R / "report/report.html",
        R / "tables/units.csv",
        R / "tables/acquisition_actions.json",
    default_target: True


onsuccess:
    print(f"\nsnakescope: report written to {(R / 'report/report.html').resolve()}")

# Every rule's script (Snakemake's `script:` directive): the job's named inputs, outputs and params go, by name, to
# the stage function that snakescope.stages declares for the rule.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the snakescope package beside the rules
from snakescope.stages import run_job  # noqa: E402

run_job(snakemake)  # noqa: F821 - defined by Snakemake's script directive

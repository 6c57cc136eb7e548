# Config validation, inputs, batches and small helpers shared by all rules.

import json
import os
import shlex
import shutil
import sys
from pathlib import Path

from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))
from snakescope.configuration import config_errors  # noqa: E402
from snakescope.inputs import InputError, batches, read_sample_sheet, sources_from_globs  # noqa: E402
from snakescope.plots import PLOT_NAMES, PLOT_SUBCATEGORIES  # noqa: E402

# One readable line per problem first; then Snakemake's validate fills in the schema's defaults.
_problems = config_errors(config, json.loads(Path(workflow.source_path("../schemas/config.schema.json")).read_text()))
if _problems:
    raise WorkflowError("snakescope: invalid configuration:\n  " + "\n  ".join(_problems))
validate(config, schema="../schemas/config.schema.json")

R = Path(config["results"]) / config["dataset"]

try:
    SOURCES = read_sample_sheet(config["samples"]) if config["samples"] else sources_from_globs(config["inputs"])
    BATCHES = batches(SOURCES, config["batch_size"])
except InputError as err:
    raise WorkflowError(f"snakescope: {err}")

if not Path(config["review"]["knowledge_base"]).is_file():
    raise WorkflowError(f"snakescope: knowledge base not found: {config['review']['knowledge_base']} (config key review.knowledge_base)")

# The stage CLI. With --sdm conda each rule's env provides the Python; otherwise the Python running
# Snakemake (e.g. the project's venv). The package is found through PYTHONPATH either way.
_PKG = Path(workflow.basedir) / "workflow"
_PYTHON = "python" if "conda" in str(workflow.deployment_settings.deployment_method).lower() else sys.executable
# Paths are data: quoted, so a space or a `$(...)` in a folder name is never run by the shell.
SNAKESCOPE = os.environ.get("SNAKESCOPE_CMD") or (
    f"PYTHONPATH={shlex.quote(str(_PKG))}${{PYTHONPATH:+:$PYTHONPATH}} {shlex.quote(_PYTHON)} -m snakescope.cli"
)


def as_json(value):
    """Params as canonical JSON: a changed value changes the param, so Snakemake reruns the rule."""
    return json.dumps(value, sort_keys=True)


def batch_sources(wildcards):
    return [s.path for s in BATCHES[wildcards.batch]]


def batch_sources_json(wildcards):
    return as_json([{"sample_id": s.sample_id, "path": s.path, "metadata": s.metadata} for s in BATCHES[wildcards.batch]])


MODEL_PARAMS = {k: v for k, v in config["model"].items() if k != "run_test"}

# Ollama settings that do not change answers (where the server is, how long to wait) are passed
# outside params, so changing them does not rerun reviews; everything else is a rerun trigger.
_OLLAMA = config["review"].get("ollama", {})
OLLAMA_RUNTIME_KEYS = ("host", "keep_alive", "timeout_s", "server", "pull")
OLLAMA_RUNTIME = as_json({k: v for k, v in _OLLAMA.items() if k in OLLAMA_RUNTIME_KEYS})
REVIEW_PARAMS = {**config["review"], "ollama": {k: v for k, v in _OLLAMA.items() if k not in OLLAMA_RUNTIME_KEYS}}
REVIEW_PARAMS.pop("condition_column", None)  # used by the tables, not the reviewers
if config["review"]["backend"] != "ollama":
    REVIEW_PARAMS.pop("ollama")  # irrelevant without the LLM backend
CACHE_DIR = config["cache_dir"]


IMPORT_MANIFESTS = [str(R / f"import/{batch}/manifest.json") for batch in BATCHES]


def dataset_normalization(wildcards):
    """With model.normalization: dataset, inference normalises with statistics pooled over the whole run."""
    if config["model"].get("normalization", "per_image") != "dataset":
        return {}
    return {"pixels": R / "inference/dataset_pixels.npy"}


def review_prompts(wildcards):
    """Prompt templates are inputs when the LLM reviews: editing one reruns the reviews."""
    if config["review"]["backend"] != "ollama":
        return {}
    return {"prompt": _OLLAMA.get("prompt", "config/prompts/review_v1.txt")}


def summary_prompts(wildcards):
    if config["review"]["backend"] != "ollama":
        return {}
    return {"prompt": _OLLAMA.get("summary_prompt", "config/prompts/summary_v1.txt")}


wildcard_constraints:
    batch=r"b\d{4}",

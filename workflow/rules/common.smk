# Config validation, inputs, batches and small helpers shared by all rules.

import os
import sys
from pathlib import Path

# The package beside the rules (workflow/snakescope), found from this file, not the working directory,
# so the workflow also runs as a module of another workflow.
WORKFLOW_DIR = Path(str(workflow.current_basedir)).parent
PROJECT_DIR = WORKFLOW_DIR.parent
sys.path.insert(0, str(WORKFLOW_DIR))
from snakescope.core.configuration import (  # noqa: E402
    ConfigError,
    check_config,
    fill_for_lint,
    job_environment,
)
from snakescope.core.layout import BatchPaths, manifest  # noqa: E402
from snakescope.core.settings import (  # noqa: E402
    GallerySettings,
    ImportSettings,
    ModelSettings,
    PostprocessSettings,
    ReportSettings,
)
from snakescope.stages import LLM_RUNTIME_KEYS, as_params, canonical  # noqa: E402
from snakescope.core.corrections import CorrectionsError, load_corrections  # noqa: E402
from snakescope.core.costs import job_mem_mb  # noqa: E402
from snakescope.core.inputs import InputError, batches, read_sample_sheet, sources_from_globs  # noqa: E402
from snakescope.llm.settings import BACKENDS as LLM_BACKENDS  # noqa: E402
from snakescope.stages.report.plots import PLOT_NAMES, PLOT_SUBCATEGORIES  # noqa: E402
from snakescope.core.progress import run_summary_message  # noqa: E402
from snakescope.core.slurm_site import profile_values, site_problems  # noqa: E402

# `snakemake --lint` plans nothing: where the user's keys are unset (a bare clone's config/config.yaml), the rules
# are read with the .test configuration's, as the Snakemake workflow catalog lints a repository's root. Snakemake
# (9.x, pinned) marks a workflow loaded for linting only by not checking its environment variables.
if getattr(workflow, "check_envvars", True) is False:
    fill_for_lint(config, PROJECT_DIR / ".test")

# The keys a user must set first, then one readable line per schema problem, then the schema's defaults
# (snakescope.core.configuration.check_config, which `snakescope watch` uses too).
try:
    check_config(config, workflow.source_path("../schemas/config.schema.yaml"))
except ConfigError as err:
    raise WorkflowError(f"snakescope: {err}")

R = Path(config["results"]) / config["dataset"]


def project_file(path):
    """A file named in the config: relative to the working directory, else one shipped with snakescope (module use)."""
    if path and not Path(path).exists() and not Path(path).is_absolute() and (PROJECT_DIR / path).exists():
        return str(PROJECT_DIR / path)
    return path


try:
    SOURCES = read_sample_sheet(config["samples"]) if config["samples"] else sources_from_globs(config["inputs"])
    BATCHES = batches(SOURCES, config["batch_size"])
except InputError as err:
    raise WorkflowError(f"snakescope: {err}")


def given_cores():
    """The cores this run may use (`--cores`), or 1 where Snakemake has none to give (a dry run, a lint)."""
    try:
        cores = workflow.global_resources["_cores"]
    except (KeyError, AttributeError):
        return 1
    cores = getattr(cores, "value", cores)
    return cores if isinstance(cores, int) and 0 < cores < 10**6 else 1


# Cores per batch job: the run's cores shared among the batches' jobs that run side by side, at most a batch's
# fields, at least 1. Import, quality metrics, post-processing and the gallery process that many fields at once
# (snakescope.core.fields); inference gives them to the model runtime. On clusters the profile sets them per rule
# (`set-threads`; SLURM's cpus_per_task follows). `--set-threads <rule>=N` overrides it.
JOB_THREADS = max(1, min(config["batch_size"], os.cpu_count() or 1, given_cores() // max(1, len(BATCHES))))
INFER_THREADS = JOB_THREADS

if config["review"].get("corrections"):  # a person's corrections: checked now, so a bad file stops before any job
    try:
        load_corrections(config["review"]["corrections"])
    except CorrectionsError as err:
        raise WorkflowError(f"snakescope: {err}")

KNOWLEDGE_BASE = project_file(config["review"]["knowledge_base"])
if not Path(KNOWLEDGE_BASE).is_file():
    raise WorkflowError(f"snakescope: knowledge base not found: {KNOWLEDGE_BASE} (config key review.knowledge_base)")

# Jobs import the package beside the rules (for --sdm conda environments too, which do not install it).
os.environ.update(job_environment(WORKFLOW_DIR))
B = BatchPaths(R, "{batch}")  # where each stage keeps a batch: the rules' outputs


def field_mem_mb(stage, floor):
    """A rule's mem_mb, from its batch's largest field (snakescope.core.costs; evaluated when the job is about to run)."""

    section = config.get("postprocess", {})
    blocks = {
        "postprocess_block_px": section.get("block_px", 2048),
        "postprocess_overlap_px": section.get("block_overlap_px", 256),
    }

    def mem_mb(wildcards, input, threads):
        check = getattr(input, "model_check", None)
        workers = 1 if stage in ("review", "refinement") else threads  # fields processed side by side, at most
        return job_mem_mb(
            manifest(BatchPaths(R, wildcards.batch).imported),
            stage,
            floor,
            model_check=check,
            workers=workers,
            **blocks,
        )

    return mem_mb


def batch_sources(wildcards):
    return [s.path for s in BATCHES[wildcards.batch]]


def batch_source_records(wildcards):
    return [{"sample_id": s.sample_id, "path": s.path, "metadata": s.metadata} for s in BATCHES[wildcards.batch]]


# Settings parsed once, passed to the stage functions as params (a changed value reruns what depends on it;
# snakescope.stages.as_params: plain canonical dicts, which the job turns back into the settings classes).
IMPORT_SETTINGS = as_params(ImportSettings.from_config(config["import"], reader=config["reader"]))
MODEL_SETTINGS = as_params(ModelSettings.from_config(config["model"]))
INFER_SETTINGS = {**MODEL_SETTINGS, "run_test": True}  # whether the model's test runs does not change predictions
POSTPROCESS_SETTINGS = as_params(PostprocessSettings.from_config(config["postprocess"]))
GALLERY_SETTINGS = as_params(GallerySettings.from_config(config["report"]))
REPORT_SETTINGS = as_params(ReportSettings.from_config(config["report"]))
CHANNELS = canonical(config["model"]["channels"])
POSITIONS = canonical({k: config["report"][k] for k in ("plate_column", "well_column", "usable_verdicts")})

# The review's params: what changes answers. The LLM's server settings reach jobs from the config itself
# (snakescope.stages.LLM_RUNTIME_KEYS), so changing them reruns no review.
USES_LLM = config["review"]["backend"] in LLM_BACKENDS
_LLM = dict(config["review"].get("llm", {}))
for _key, _default in (("prompt", "config/prompts/review_v1.txt"), ("summary_prompt", "config/prompts/summary_v2.txt")):
    _LLM[_key] = project_file(_LLM.get(_key, _default))
REVIEW_PARAMS = canonical({**config["review"], "llm": {k: v for k, v in _LLM.items() if k not in LLM_RUNTIME_KEYS}})
REVIEW_PARAMS.pop("condition_column", None)  # used by the tables, not the reviewers
REVIEW_PARAMS.pop("corrections", None)  # a person's corrections change the final verdicts (tables), not the reviews
if not USES_LLM:
    REVIEW_PARAMS.pop("llm")  # irrelevant without an LLM backend
REFINE = (
    canonical(_LLM["refine"]) if USES_LLM else {"enabled": False}
)  # the critique's re-segmentation needs an LLM's critique


def every_batch(name):
    """One stage's output of every batch of the run, in order (BatchPaths' attribute ``name``)."""
    return [getattr(BatchPaths(R, batch), name) for batch in BATCHES]


def dataset_normalization(wildcards):
    """With model.normalization: dataset, inference normalises with statistics pooled over the whole run."""
    if config["model"].get("normalization", "per_image") != "dataset":
        return []
    return R / "inference/dataset_pixels.npy"


def review_corrections(wildcards):
    """A corrections file exported from the report (review.corrections) is an input of the tables: editing it reruns
    the tables, plots, summary and report, never a review."""
    return config["review"].get("corrections") or []


def review_prompt(wildcards):
    """Prompt templates are inputs when the LLM reviews: editing one reruns the reviews."""
    return _LLM["prompt"] if USES_LLM else []


def summary_prompt(wildcards):
    return _LLM["summary_prompt"] if USES_LLM else []


# What the self-test depends on: the backend, where the server is, which models and how they are asked.
LLM_CHECK_KEYS = ("endpoint", "api_key_env", "selftest", "model", "summary_model", "structured_output", "options")
LLM_CHECK_PARAMS = canonical(
    {
        "backend": config["review"]["backend"],
        "llm": {k: v for k, v in _LLM.items() if k in LLM_CHECK_KEYS},
    }
)


def llm_check_record(wildcards):
    """The run's LLM self-test record (rule llm_check), when an LLM reviews."""
    return R / "review/llm_check.json" if USES_LLM else []


wildcard_constraints:
    batch=r"b\d{4}",


def _site_resources(resources):
    """The partition and account of a profile's resources (a mapping, or Snakemake's parsed resources)."""
    out = {}
    for name in ("slurm_partition", "slurm_account"):
        item = resources.get(name) if resources else None
        value = getattr(item, "raw", item)  # as the profile or command line gave it (not evaluated for a rule)
        if isinstance(value, str):
            out[name] = value
    return out


def check_slurm_site():
    """Before any job is submitted to SLURM: the profile's partitions and accounts exist on this cluster (sinfo,
    sacctmgr), else one message naming the profile keys, instead of refused jobs and a run that waits."""
    plugin = workflow.executor_plugin
    if plugin is None or plugin.name != "slurm":
        return
    settings = workflow.resource_settings
    partitions, accounts = profile_values(
        default_resources=_site_resources(settings.default_resources),
        rule_resources={rule: _site_resources(r) for rule, r in (settings.overwrite_resources or {}).items()},
    )
    problems = site_problems(partitions=partitions, accounts=accounts)
    if problems:
        raise WorkflowError(
            "snakescope: the SLURM profile does not fit this cluster; change these keys of the profile "
            "(profiles/slurm/config.yaml, or --default-resources / --set-resources), nothing was submitted:\n  "
            + "\n  ".join(problems)
        )

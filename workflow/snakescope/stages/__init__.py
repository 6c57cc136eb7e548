"""The pipeline's stages, each declared once: the rule that runs it and the function that does it.

A rule in ``workflow/rules/`` is the stage's table of inputs, outputs, params, resources and log; its one-line call is
``script: "../scripts/stage.py"``, which hands the job to :func:`run_job`. That looks the rule up here and calls the
stage's function with the rule's named inputs, outputs and params as keyword arguments of the same names (and
``batch``, ``threads``, ``cache_dir``, ``llm_runtime`` where the function asks for them). Settings travel as plain,
canonical dicts (:func:`as_params`: Snakemake compares params by their ``repr`` to decide what to rerun, and skips
objects it cannot represent) and reach the function as the settings class its signature names. A name the function needs
and the rule does not give, or an input or param the rule gives and the function does not take, stops the job with
one line naming both: the rule and the function cannot drift apart unnoticed.

The functions live in the stage modules, side by side; this module imports none of them until a job runs.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import sys
import typing
from dataclasses import dataclass
from typing import Any, Callable

# ``review.llm`` keys that say where and how to reach the server, not what it answers: they reach jobs from the config
# itself (not as params), so changing them reruns nothing.
LLM_RUNTIME_KEYS = ("endpoint", "api_key_env", "keep_alive", "timeout_s", "server", "pull", "max_concurrency", "selftest")


@dataclass(frozen=True)
class Stage:
    """One rule: ``name`` is the pipeline stage it belongs to (its module here, its output folder and its lines in the
    terminal), ``function`` the ``module:function`` in this package that runs one job of it."""

    rule: str
    name: str
    function: str
    watch: bool = False  # watch mode writes this rule's outputs itself; ``snakemake --touch`` adopts them


STAGES = {
    stage.rule: stage
    for stage in (
        Stage("import_batch", "import", "acquisition:run_import", watch=True),
        Stage("quality_metrics", "quality", "quality:run_quality", watch=True),
        Stage("quality_reference", "quality", "quality:run_quality_reference"),
        Stage("check_model", "inference", "inference:run_check", watch=True),
        Stage("dataset_pixels", "inference", "inference:run_dataset_pixels"),
        Stage("infer", "inference", "inference:run_inference", watch=True),
        Stage("postprocess", "segmentation", "segmentation:run_segmentation", watch=True),
        Stage("llm_check", "review", "review:run_llm_check"),
        Stage("review", "review", "review:run_review"),
        Stage("refinement", "refinement", "refinement:run_refinement"),
        Stage("gallery", "report", "report.gallery:run_gallery"),
        Stage("pipeline_info", "report", "report.provenance:run_pipeline_info"),
        Stage("tables", "report", "report.tables:run_tables"),
        Stage("plots", "report", "report.plots:run_plots"),
        Stage("run_summary", "report", "report.summary:run_summary"),
        Stage("report", "report", "report.page:run_report"),
        Stage("ome_zarr", "report", "report.ome_zarr:run_ome_zarr"),
        Stage("ro_crate", "report", "report.ro_crate:run_ro_crate"),
    )
}


def stage_of(rule: str) -> Stage:
    """The stage of a rule, also under the name a workflow that uses snakescope as a module gives it
    (``use rule * from snakescope as snakescope_*``: ``snakescope_import_batch``)."""
    if rule in STAGES:
        return STAGES[rule]
    matches = [name for name in STAGES if rule.endswith("_" + name)]
    if not matches:
        raise KeyError(f"rule {rule!r} is not a snakescope stage (snakescope.stages.STAGES)")
    return STAGES[max(matches, key=len)]


def stage_function(rule: str) -> Callable[..., None]:
    module, name = stage_of(rule).function.split(":")
    return getattr(importlib.import_module(f"snakescope.stages.{module}"), name)


def runtime_values(config: dict[str, Any]) -> dict[str, Any]:
    """What a job may read from the config without it being a rerun trigger: the cache folder and the LLM's
    server settings (:data:`LLM_RUNTIME_KEYS`)."""
    llm = config.get("review", {}).get("llm") or {}
    return {"cache_dir": config.get("cache_dir", ".snakescope-cache"),
            "llm_runtime": {k: v for k, v in llm.items() if k in LLM_RUNTIME_KEYS}}


def canonical(value: Any) -> Any:
    """A param value whose ``repr`` depends only on its content: mappings with sorted keys, sequences as lists."""
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


def as_params(settings: Any) -> dict[str, Any]:
    """A settings object as a rule's param (:func:`canonical` of its fields); :func:`call_arguments` turns it back."""
    return canonical(dataclasses.asdict(settings))


def _settings(annotation: Any, value: Any) -> Any:
    """A dict param given to a parameter annotated with a settings class, as that class."""
    if isinstance(value, dict) and dataclasses.is_dataclass(annotation):
        return annotation(**value)
    return value


def _files(item: Any) -> Any:
    """A named input or output as the function gets it: a file name as a string, a list of them as a list, an optional
    input the rule left out (an empty list) as None."""
    if isinstance(item, str) or not isinstance(item, (list, tuple)):
        return item
    return [str(i) for i in item] or None


def call_arguments(rule: str, function: Callable[..., None], named: dict[str, dict[str, Any]],
                   extra: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``function`` from the rule's ``named`` items (``input``, ``output``, ``params``) and
    the job's ``extra`` values; raises ``TypeError`` naming what does not match."""
    signature = inspect.signature(function)
    hints = typing.get_type_hints(function)
    wanted = {n: p for n, p in signature.parameters.items() if p.kind is p.KEYWORD_ONLY}
    takes_rest = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    given: dict[str, Any] = {}
    for kind in ("input", "params", "output"):
        for name, value in named[kind].items():
            if name in given:
                raise TypeError(f"rule {rule}: {kind} {name!r} is named twice (input, output and params share one namespace)")
            if name not in wanted and not (kind == "output" or takes_rest):
                raise TypeError(f"rule {rule}: {kind} {name!r} is not a parameter of {function.__module__}.{function.__name__}")
            given[name] = _settings(hints.get(name), value) if kind == "params" else _files(value)
    given.update({k: v for k, v in extra.items() if k in wanted})
    missing = [n for n, p in wanted.items() if n not in given and p.default is p.empty]
    if missing:
        raise TypeError(f"rule {rule} does not give {', '.join(missing)} to {function.__module__}.{function.__name__}")
    return {n: v for n, v in given.items() if n in wanted or takes_rest}


def run_job(job: Any) -> None:
    """Run one job of Snakemake's ``script:`` directive (``job`` is its ``snakemake`` object): stderr (this process's
    and its libraries') goes to the job's log, then the stage's function runs with the rule's named items."""
    if job.log:
        log = os.open(str(job.log[0]), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        sys.stderr.flush()
        os.dup2(log, 2)
        os.close(log)
    function = stage_function(job.rule)
    named = {kind: dict(getattr(job, kind).items()) for kind in ("input", "output", "params")}
    extra = {"batch": getattr(job.wildcards, "batch", None), "threads": job.threads, **runtime_values(job.config)}
    function(**call_arguments(job.rule, function, named, extra))


def run_stage(rule: str, arguments: dict[str, Any]) -> None:
    """One job of ``rule`` outside Snakemake (benches, debugging): ``arguments`` by the names the rule gives, settings
    as dicts. ``python -m snakescope.stages RULE '{"imported": "...", ...}'`` does the same from a shell."""
    function = stage_function(rule)
    hints = typing.get_type_hints(function)
    function(**{name: _settings(hints.get(name), value) for name, value in arguments.items()})


if __name__ == "__main__":
    import json

    run_stage(sys.argv[1], json.loads(sys.argv[2]))

"""The stage registry: every rule runs a declared function, and a rule and its function cannot drift apart."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from conftest import ROOT
from snakescope.stages import STAGES, as_params, call_arguments, stage_function, stage_of


def test_every_rule_runs_a_declared_stage_function_with_keyword_only_parameters():
    import inspect

    rules = set()
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        text = smk.read_text()
        rules |= set(re.findall(r"^rule (\w+):", text, re.M))
        assert text.count('script:\n        "../scripts/stage.py"') == len(re.findall(r"^rule ", text, re.M)), smk.name
    assert rules == set(STAGES)
    for rule in STAGES:
        parameters = inspect.signature(stage_function(rule)).parameters.values()
        assert parameters and all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in parameters), rule


@dataclass(frozen=True)
class Knobs:
    depth: int = 1
    names: tuple[str, ...] = ()


def stage(*, imported: str, out: str, knobs: Knobs, threads: int, note: str | None = None) -> None:
    """A stand-in stage function with the shapes the real ones take."""


def test_named_items_reach_the_function_by_name_and_settings_by_their_class():
    named = {"input": {"imported": ["a/b0000"]}, "output": {"out": "x.json", "log_only": "y.txt"},
             "params": {"knobs": as_params(Knobs(2, ("DAPI",)))}}
    arguments = call_arguments("demo_rule", stage, named, {"threads": 2, "batch": "b0000"})
    assert arguments == {"imported": ["a/b0000"], "out": "x.json", "knobs": Knobs(2, ["DAPI"]), "threads": 2}
    assert as_params(Knobs(2, ("DAPI",))) == {"depth": 2, "names": ["DAPI"]}  # plain, so Snakemake compares it
    assert call_arguments("demo_rule", stage, {**named, "input": {"imported": [], "note": []}}, {"threads": 1})["note"] is None


def test_a_rule_and_its_function_that_disagree_stop_the_job_naming_both():
    named = {"input": {"imported": "a"}, "output": {"out": "x"}, "params": {"knobs": {}}}
    with pytest.raises(TypeError, match=r"rule demo_rule does not give threads to .*stage"):
        call_arguments("demo_rule", stage, named, {})
    with pytest.raises(TypeError, match=r"rule demo_rule: params 'extra' is not a parameter of .*stage"):
        call_arguments("demo_rule", stage, {**named, "params": {"knobs": {}, "extra": 1}}, {"threads": 1})


def test_rules_renamed_by_a_workflow_that_uses_snakescope_as_a_module_find_their_stage():
    assert stage_of("snakescope_import_batch") is STAGES["import_batch"]
    assert stage_of("imaging_quality_reference") is STAGES["quality_reference"]
    assert stage_of("snakescope_report") is STAGES["report"]
    with pytest.raises(KeyError, match="not a snakescope stage"):
        stage_of("fastqc")

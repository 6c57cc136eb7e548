"""The config's documentation, template and schema agree; required keys are named; the job environment."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from snakescope.core.configuration import config_errors, drop_nulls, job_environment, unset_required

SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
NO_DEFAULT = object()


def schema_default(path: list[str]):
    node = SCHEMA
    for key in path:
        node = node["properties"][key]
    return node.get("default", NO_DEFAULT)


def documented_rows() -> dict[tuple[str, ...], tuple[str, str]]:
    """{key path: (default cell, meaning)} from every `| key | default | meaning |` table of config/README.md."""
    rows: dict[tuple[str, ...], str] = {}
    section: list[str] = []
    for line in (ROOT / "config" / "README.md").read_text().splitlines():
        heading = re.match(r"^#{2,3} (?:`([\w.]+)`|Top level)", line)
        if heading:
            section = heading.group(1).split(".") if heading.group(1) else []
            continue
        if line.startswith("## "):
            section = ["(not a key table)"]
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(r"`[\w.]+`", cells[0]) and section != ["(not a key table)"]:
            rows[tuple(section + cells[0].strip("`").split("."))] = (cells[1], "|".join(cells[2:]).strip())
    return rows


def documented_defaults() -> dict[tuple[str, ...], str]:
    return {path: default for path, (default, _) in documented_rows().items()}


def documented_meanings() -> dict[tuple[str, ...], str]:
    return {path: meaning for path, (_, meaning) in documented_rows().items()}


def test_every_documented_default_is_the_applied_default():
    rows = documented_defaults()
    assert len(rows) > 40, "the README's key tables were not found"
    checked = 0
    for path, cell in rows.items():
        try:
            applied = schema_default(list(path))
        except KeyError:
            pytest.fail(f"config/README.md documents {'.'.join(path)}, which the schema does not know")
        if cell == "(required)":
            assert applied is NO_DEFAULT, path
            continue
        documented = yaml.safe_load(cell.strip("`").replace("`, `", ", ")) if cell.startswith("`") else cell
        if isinstance(applied, dict):  # e.g. `{temperature: 0, ...}`
            documented = yaml.safe_load(cell.strip("`"))
        assert documented == applied, f"{'.'.join(path)}: documented {cell}, applied {applied!r}"
        checked += 1
    assert checked > 40


def test_the_template_changes_no_default():
    """config/config.yaml is merged under every user config: each value it sets must be the schema's default."""
    template = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())

    def walk(node, path):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, path + [key])
            elif value is not None:
                assert schema_default(path + [key]) == value, ".".join(path + [key])

    walk(template, [])
    assert template["dataset"] is None and template["model"]["source"] is None and template["samples"] is None


def test_required_keys_are_named_and_nulls_take_defaults():
    template = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    messages = unset_required(template)
    assert [m.split("'")[1] for m in messages] == ["dataset", "model.source", "samples"]
    config = {**template, "dataset": "d", "model": {**template["model"], "source": "m.yaml"}, "inputs": ["*.tif"]}
    assert unset_required(config) == []
    drop_nulls(config)
    assert "samples" not in config
    assert config_errors(config, SCHEMA) == []


def test_job_environment_puts_the_package_first_once(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/pkg:/other")
    assert job_environment("/pkg") == {"PYTHONPATH": "/pkg:/other"}
    assert job_environment("/new") == {"PYTHONPATH": "/new:/pkg:/other"}


def test_every_runtime_dependency_is_in_a_stage_env():
    """pyproject.toml is the one dependency list; the per-stage conda envs together must cover it."""
    import tomllib

    from snakescope.stages.report.provenance import declared_in_envs

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.match(r"[A-Za-z0-9_.\-]+", d).group(0) for d in deps} - {"snakemake"}
    declared = {k.lower() for k in declared_in_envs()}
    assert sorted(n for n in names if n.lower() not in declared) == []


def test_keys_of_earlier_versions_say_what_to_write_instead():
    schema = SCHEMA
    old = config_errors({"review": {"backend": "ollama", "ollama": {"host": "gpu01"}}}, schema)
    assert "config key 'review.ollama' was renamed: write review.llm (with review.backend: ollama or openai)" in old
    host = config_errors({"review": {"backend": "openai", "llm": {"host": "gpu01:8000"}}}, schema)
    assert "config key 'review.llm.host' was renamed: write review.llm.endpoint" in host


def schema_keys(node=None, path=()):
    """Every key of the schema that a README row documents: the leaves, and sections without properties of their own."""
    node = SCHEMA if node is None else node
    for key, value in node.get("properties", {}).items():
        if "properties" in value:
            yield from schema_keys(value, path + (key,))
        else:
            yield path + (key,), value


def test_every_key_is_described_in_the_schema_and_the_readme_says_the_same():
    """The schema owns the config: each key has a description (and a default unless only the user can say it), and
    config/README.md's row for it gives that default and that description word for word."""
    rows = documented_meanings()
    keys = dict(schema_keys())
    assert len(keys) > 80
    for path, node in keys.items():
        dotted = ".".join(path)
        assert node.get("description"), f"schema key {dotted} has no description"
        assert "default" in node or path in (("dataset",), ("model", "source")), f"schema key {dotted} has no default"
        assert path in rows, f"config/README.md has no row for {dotted}"
        assert rows[path] == node["description"], f"{dotted}: README says {rows[path]!r}, the schema {node['description']!r}"
    assert set(rows) <= set(keys), sorted(set(rows) - set(keys))


@pytest.mark.parametrize("section, settings", [
    (("import",), "ImportSettings"), (("model",), "ModelSettings"), (("postprocess",), "PostprocessSettings"),
    (("review", "thresholds"), "ReviewThresholds"), (("report",), "GallerySettings"), (("report",), "ReportSettings"),
    (("watch",), "WatchSettings"), (("review", "llm"), "LLMSettings")])
def test_settings_classes_take_the_schemas_defaults(section, settings):
    """A stage called without the workflow (tests, watch mode, benches) behaves as one called through it."""
    import dataclasses

    import snakescope.llm.settings
    import snakescope.core.settings

    cls = getattr(snakescope.core.settings, settings, None) or getattr(snakescope.llm.settings, settings)
    node = SCHEMA
    for key in section:
        node = node["properties"][key]
    compared = 0
    for field in dataclasses.fields(cls):
        schema_node = node["properties"].get(field.name) or (SCHEMA["properties"].get(field.name) if field.name == "reader" else None)
        if schema_node is None or "default" not in schema_node:
            continue
        expected = schema_node["default"]
        if "properties" in schema_node:  # a section: its keys' own defaults
            expected = {k: v["default"] for k, v in schema_node["properties"].items()}
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        default = list(default) if isinstance(default, tuple) else default
        assert default == expected, f"{settings}.{field.name}: {default!r}, schema {'.'.join(section)}: {expected!r}"
        compared += 1
    assert compared >= 1


def test_no_profile_overrides_the_memory_a_rule_computes_from_its_field_sizes():
    """A rule whose mem_mb is estimated from its batch's field sizes (field_mem_mb) must get that estimate on every
    executor: a profile's set-resources mem_mb for it would replace the estimate (issue 30: infer got 8000 MB
    whatever the fields)."""
    import re

    import yaml

    estimated = set()
    for path in (ROOT / "workflow" / "rules").glob("*.smk"):
        for block in re.split(r"^rule ", path.read_text(encoding="utf-8"), flags=re.M)[1:]:
            if "mem_mb=field_mem_mb(" in block:
                estimated.add(block.split(":", 1)[0].strip())
    assert {"infer", "postprocess", "review", "quality_metrics"} <= estimated, estimated
    for profile in (ROOT / "profiles").glob("*/config.yaml"):
        overrides = (yaml.safe_load(profile.read_text(encoding="utf-8")) or {}).get("set-resources") or {}
        clashing = sorted(rule for rule, resources in overrides.items() if rule in estimated and "mem_mb" in (resources or {}))
        assert not clashing, f"{profile.relative_to(ROOT)} sets mem_mb for {clashing}, replacing the field-size estimate"


def test_every_rule_environment_pins_what_constraints_txt_pins():
    """workflow/envs/*.yaml (what `--sdm conda` builds per rule) and envs/snakescope.yaml (what runs Snakemake) pin every
    package, to the versions tested together in constraints.txt (issue 30: scipy, tifffile, pillow, pandas, pyarrow, xarray and httpx were unpinned)."""
    import re

    import yaml

    conda_names = {"pytorch-cpu": "torch", "pyyaml": "pyyaml", "pylibczirw": "pylibczirw"}
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)\s*(==|<)\s*([^\s#]+)", line)
        if match:
            pins[match.group(1).lower()] = (match.group(2), match.group(3).rstrip(".*"))
    legacy = ROOT / "workflow" / "envs" / "import-aicsimageio.yaml"  # aicsimageio's own, older stack (its file says why)
    for path in sorted([*(ROOT / "workflow" / "envs").glob("*.yaml"), *(ROOT / "envs").glob("*.yaml")]):
        if path == legacy:
            continue
        entries = []
        for dep in yaml.safe_load(path.read_text(encoding="utf-8"))["dependencies"]:
            entries += dep["pip"] if isinstance(dep, dict) else [dep]
        for entry in entries:
            if str(entry).startswith(("-c ", "-e ")):  # the driver env installs the package itself, with the constraints
                continue
            match = re.match(r"^([A-Za-z0-9_.\-]+)\s*(?:==|=|<)?\s*([^\s#]*)", str(entry).strip())
            name, version = conda_names.get(match.group(1), match.group(1)).lower(), match.group(2)
            if name in ("python", "pip"):
                continue
            assert name in pins, f"{path.name}: {name} is not pinned in constraints.txt"
            assert version, f"{path.name}: {name} has no version (constraints.txt: {''.join(pins[name])})"
            expected = pins[name][1]
            assert version.startswith(expected) or expected.startswith(version), \
                f"{path.name}: {name} {version} but constraints.txt says {''.join(pins[name])}"


def test_linting_a_bare_clone_reads_the_rules_with_the_test_configuration():
    import yaml

    from snakescope.core.configuration import fill_for_lint

    template = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    assert fill_for_lint(template, ROOT / ".test") == ["dataset", "model.source", "samples"]
    assert unset_required(template) == []
    assert Path(template["samples"]).is_file() and Path(template["model"]["source"]).is_file()
    mine = {"dataset": "screen", "model": {"source": "zoo-id"}, "inputs": ["raw/*.tif"]}
    assert fill_for_lint(mine, ROOT / ".test") == [] and mine["dataset"] == "screen" and "samples" not in mine

"""Config checking with messages that name the key: 'unknown config key model.weigth_format (did you mean weight_format?)'."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _dotted(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


# Keys of earlier versions, and what to write instead.
RENAMED = {"review.ollama": "review.llm (with review.backend: ollama or openai)", "review.llm.host": "review.llm.endpoint"}


def config_errors(config: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Readable messages for every schema violation of ``config``, one line each, naming the key."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    messages = []
    for error in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        where = list(error.absolute_path)
        if error.validator == "additionalProperties":
            allowed = list(error.schema.get("properties", {}))
            for key in sorted(set(error.instance) - set(allowed)):
                if (old := _dotted(where + [key])) in RENAMED:
                    messages.append(f"config key {old!r} was renamed: write {RENAMED[old]}")
                    continue
                hint = difflib.get_close_matches(key, allowed, n=1)
                suggestion = f" (did you mean {hint[0]!r}?)" if hint else f" (allowed: {', '.join(allowed)})"
                messages.append(f"unknown config key {_dotted(where + [key])!r}{suggestion}")
        elif error.validator == "required":
            messages.append(f"missing config key at {_dotted(where)}: {error.message}")
        else:
            messages.append(f"config key {_dotted(where)!r}: {error.message}")
    return messages


# What a user must set; config/config.yaml leaves them null. (key path, what to write there)
REQUIRED = (
    (("dataset",), "a name for the dataset; results go to <results>/<dataset>/"),
    (("model", "source"), "the bioimage.io model: a local bioimageio.yaml, a zoo id, a DOI or a URL"),
)


def unset_required(config: dict[str, Any]) -> list[str]:
    """One line per key a user must set and has not (null or absent), and samples-or-inputs."""
    messages = []
    for path, meaning in REQUIRED:
        node: Any = config
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node in (None, ""):
            messages.append(f"set config key {_dotted(path)!r}: {meaning}")
    if not config.get("samples") and not config.get("inputs"):
        messages.append("set config key 'samples' (a TSV sample sheet) or 'inputs' (glob patterns): the images to process")
    return messages


def fill_for_lint(config: dict[str, Any], test_dir: str | Path) -> list[str]:
    """The keys a user must set, where unset, taken from the committed test configuration (``test_dir``: .test,
    paths made absolute), so the rules can be read where nothing is planned: ``snakemake --lint`` on a bare clone,
    which is how the Snakemake workflow catalog lints a repository. Returns the keys filled (none when all are set)."""
    import yaml

    if not unset_required(config):
        return []
    test_dir = Path(test_dir).resolve()
    test = yaml.safe_load((test_dir / "config" / "config.yaml").read_text(encoding="utf-8"))
    filled = []
    if config.get("dataset") in (None, ""):
        config["dataset"], filled = test["dataset"], filled + ["dataset"]
    model = config.get("model")
    if not isinstance(model, dict):
        model = config["model"] = {}
    if model.get("source") in (None, ""):
        model["source"], filled = str(test_dir / test["model"]["source"]), filled + ["model.source"]
    if not config.get("samples") and not config.get("inputs"):
        config["samples"], filled = str(test_dir / test["samples"]), filled + ["samples"]
    return filled


def drop_nulls(config: dict[str, Any], keys: tuple[str, ...] = ("samples",)) -> None:
    """Top-level keys left null in the template take their schema default."""
    for key in keys:
        if key in config and config[key] is None:
            del config[key]


def job_environment(package_dir: str | Path) -> dict[str, str]:
    """``PYTHONPATH`` with the package beside the rules first (once): set in the Snakemake process, it reaches local
    and SLURM jobs, and lets ``--sdm conda`` environments, which do not install snakescope, import it."""
    current = os.environ.get("PYTHONPATH", "")
    parts = [str(package_dir)] + [p for p in current.split(os.pathsep) if p and p != str(package_dir)]
    return {"PYTHONPATH": os.pathsep.join(parts)}


class ConfigError(ValueError):
    """A configuration that cannot be used; the message lists every problem, one per line."""


def _merged(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Snakemake's config-file merge: nested sections are merged key by key, anything else replaced."""
    out = dict(base)
    for key, value in update.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def check_config(config: dict[str, Any], schema_path: str | Path) -> None:
    """Check a merged configuration in place, as the workflow does before planning anything: the keys a user must
    set first (config/config.yaml leaves them null), then one readable line per schema problem; then Snakemake's
    ``validate`` fills in the schema's defaults. Raises :class:`ConfigError` naming every problem."""
    import yaml
    from snakemake.utils import validate

    problems = unset_required(config)
    if problems:
        raise ConfigError("the configuration is missing what only you can say (copy config/config.yaml, see "
                          "config/README.md; the demo is config/demo.yaml):\n  " + "\n  ".join(problems))
    drop_nulls(config)
    problems = config_errors(config, yaml.safe_load(Path(schema_path).read_text(encoding="utf-8")))
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    validate(config, schema=str(schema_path))


def load_config(config_files: list[str | Path], project_dir: str | Path) -> dict[str, Any]:
    """The configuration a ``snakemake --configfile ...`` run would see, checked the same way and with the schema's
    defaults filled in: the project's config/config.yaml, then each file over it (outside Snakemake, e.g. for watch)."""
    import yaml

    project = Path(project_dir)
    config: dict[str, Any] = yaml.safe_load((project / "config" / "config.yaml").read_text(encoding="utf-8")) or {}
    for path in config_files:
        config = _merged(config, yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})
    check_config(config, project / "workflow" / "schemas" / "config.schema.yaml")
    return config

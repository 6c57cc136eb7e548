"""Run records: the parameters used and the software versions (nf-core style pipeline_info)."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from pathlib import Path
from typing import Any

from ...core.records import write_json
from ...core.layout import ENVS_DIR

PACKAGES = ["snakemake", "snakemake-executor-plugin-slurm", "bioimageio.core", "bioimageio.spec", "bioio", "bioio-ome-tiff",
            "bioio-tifffile", "bioio-czi", "bioio-lif", "bioio-imageio", "bioio-nd2", "aicsimageio", "onnxruntime", "openvino", "torch",
            "numpy", "xarray", "scikit-image", "scipy", "tifffile", "ollama", "openai", "jsonschema", "PyYAML", "pydantic",
            "pylibCZIrw", "liffile", "edt", "pandas", "pyarrow", "pillow", "httpx", "ome-zarr", "zarr", "rocrate"]  # every package that reads or writes data


CONDA_NAMES = {"pytorch-cpu": "torch", "pytorch-gpu": "torch", "pytorch": "torch", "pyyaml": "PyYAML"}


def declared_in_envs(envs_dir: Path = ENVS_DIR) -> dict[str, str]:
    """{package: "<spec> (envs/<file>)"} from the per-stage conda env files (conda and pip entries)."""
    import re

    import yaml

    declared: dict[str, str] = {}
    for path in sorted(envs_dir.glob("*.yaml")):
        entries = []
        for dep in yaml.safe_load(path.read_text()).get("dependencies", []):
            entries += dep.get("pip", []) if isinstance(dep, dict) else [dep]
        for entry in entries:
            match = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", str(entry).strip())
            if match and match.group(1) not in ("python", "pip"):
                name = CONDA_NAMES.get(match.group(1), match.group(1))
                declared.setdefault(name, f"{match.group(2) or 'any'} (envs/{path.name})")
    return declared


def workflow_commit(folder: Path = Path(__file__).resolve().parents[3]) -> dict[str, Any] | None:
    """The git commit of the workflow's own checkout (and whether it had uncommitted changes), or None outside git."""
    import subprocess

    try:
        commit = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
        tag = subprocess.run(["git", "-C", str(folder), "describe", "--tags", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"commit": commit.stdout.strip(), "describe": tag.stdout.strip() or None, "uncommitted_changes": bool(status.stdout.strip())}


def software_versions() -> dict[str, Any]:
    """Versions of Python and of the packages the stages use, as installed where this runs.

    With ``--sdm conda`` each stage has its own environment: a package absent here (``null``) is listed
    under ``declared`` with the version its stage's env file asks for."""
    from ... import __version__

    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    declared = declared_in_envs() if ENVS_DIR.is_dir() else {}
    return {"snakescope": __version__, "workflow_git": workflow_commit(), "python": sys.version.split()[0],
            "platform": platform.platform(), "packages": versions,
            "declared": {k: v for k, v in declared.items() if k in versions and versions[k] is None}}


def run_pipeline_info(*, params: str, versions: str, config: dict[str, Any]) -> None:
    """Rule ``pipeline_info``: the run's full configuration and the versions of the software that ran it."""
    write_json(params, config)
    write_json(versions, software_versions())

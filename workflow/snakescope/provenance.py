"""Run records: the parameters used and the software versions (nf-core style pipeline_info)."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from pathlib import Path
from typing import Any

from .records import write_json

PACKAGES = ["snakemake", "snakemake-executor-plugin-slurm", "bioimageio.core", "bioimageio.spec", "bioio", "bioio-ome-tiff",
            "bioio-tifffile", "bioio-czi", "bioio-lif", "bioio-nd2", "aicsimageio", "onnxruntime", "torch", "numpy", "xarray",
            "scikit-image", "scipy", "tifffile", "ollama", "jsonschema", "PyYAML", "pydantic"]


def software_versions() -> dict[str, Any]:
    """Versions of Python and of the packages the stages use (``null`` when not installed)."""
    from . import __version__

    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"snakescope": __version__, "python": sys.version.split()[0], "platform": platform.platform(), "packages": versions}


def write_pipeline_info(config: dict[str, Any], out_dir: str | Path) -> None:
    out = Path(out_dir)
    write_json(out / "params.json", config)
    write_json(out / "software_versions.json", software_versions())

"""Shared fixtures: paths to ../shared, the built-in demo data and demo model (generated once per session)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))
SHARED = Path(os.environ.get("SNAKESCOPE_SHARED", ROOT.parent / "shared"))
UNET = SHARED / "models" / "unet2d_nuclei_broad" / "bioimageio.yaml"
FORMATS = SHARED / "data" / "formats"


def needs_shared(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path} is absent: the real data and model live in ../shared beside the project")


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    from snakescope.demo import write_demo_data, write_demo_model

    out = tmp_path_factory.mktemp("demo")
    write_demo_data(out)
    write_demo_model(out / "model")
    return out


@pytest.fixture(scope="session")
def unet_model() -> Path:
    needs_shared(UNET)
    return UNET

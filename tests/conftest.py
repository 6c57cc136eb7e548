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


def real_nuclei(count: int) -> list[tuple[str, "np.ndarray", "np.ndarray"]]:
    """(set name, ground-truth labels as int32, the image's first channel) of the first ``count`` fields of each real
    nuclei set, BBBC039 and DSB2018 (the test is skipped without ../shared)."""
    import numpy as np
    import tifffile

    folder = SHARED / "data" / "nuclei"
    needs_shared(folder)
    fields = []
    for name in ("bbbc039", "dsb2018"):
        for mask_path in sorted((folder / name / "masks").glob("*.tif"))[:count]:
            image = tifffile.imread(folder / name / "images" / mask_path.name)
            fields.append((name, tifffile.imread(mask_path).astype(np.int32), image[..., 0] if image.ndim == 3 else image))
    return fields


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


@pytest.fixture(scope="session")
def demo_batch(tmp_path_factory, demo_dir) -> dict:
    """One batch of demo units taken through import, quality, inference and post-processing (no Snakemake)."""
    from snakescope.stages.acquisition import import_batch
    from snakescope.core.settings import ImportSettings
    from snakescope.stages.inference import check_model, predict_batch
    from snakescope.core.settings import ModelSettings
    from snakescope.core.inputs import read_sample_sheet
    from snakescope.stages.quality import quality_batch
    from snakescope.core.records import write_json
    from snakescope.stages.segmentation import postprocess_batch
    from snakescope.core.settings import PostprocessSettings

    root = tmp_path_factory.mktemp("batch")
    wanted = {"ctrl_01", "ctrl_04", "treated_04", "blurred_01", "saturated_01", "empty_01", "dim_01"}
    sources = [s for s in read_sample_sheet(demo_dir / "samples.tsv") if s.sample_id in wanted]
    import_batch("b0000", sources, ImportSettings(), root / "import")
    quality_batch(root / "import" / "manifest.json", root / "quality.json")
    settings = ModelSettings(source=str(demo_dir / "model" / "bioimageio.yaml"), channels=("DAPI",))
    write_json(root / "check.json", check_model(settings, root / "cache"))
    predict_batch(root / "import" / "manifest.json", settings, root / "check.json", root / "inference")
    postprocess_batch(root / "import" / "manifest.json", root / "inference" / "manifest.json", PostprocessSettings(),
                      ("DAPI",), root / "segmentation")
    return {"root": root, "truth": __import__("json").loads((demo_dir / "truth.json").read_text())}


@pytest.fixture()
def fake_llm():
    from fake_llm import FakeLLMServer

    server = FakeLLMServer().start()
    yield server
    server.stop()

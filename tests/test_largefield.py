"""Large fields post-processed block by block give what the whole field gives (real BBBC039 nuclei)."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from snakescope.core.images import write_ome_tiff
from snakescope.core.blocks import Histogram, layout, refined_median
from snakescope.stages.segmentation import postprocess_one
from snakescope.core.settings import PostprocessSettings

from conftest import SHARED

NUCLEI = SHARED / "data" / "nuclei" / "bbbc039"


def mosaic(folder: str, n: int = 2) -> np.ndarray:
    """n x n real fields side by side (BBBC039: 520 x 696 each), so nuclei cross the block borders."""
    fields = [tifffile.imread(p) for p in sorted((NUCLEI / folder).glob("*.tif"))[: n * n]]
    fields = [f[..., 0] if f.ndim == 3 else f for f in fields]
    return np.concatenate([np.concatenate(fields[i * n:(i + 1) * n], axis=1) for i in range(n)], axis=0)


@pytest.fixture(scope="module")
def field(tmp_path_factory) -> dict:
    """A unit of two channels (real Hoechst, and its square root as a second stain) and a soft probability map
    made from the real instance masks."""
    folder = tmp_path_factory.mktemp("large")
    image, truth = mosaic("images"), mosaic("masks")
    second = np.sqrt(image.astype(np.float64)).astype(np.uint16)
    write_ome_tiff(folder / "unit.ome.tif", np.stack([image, second]), ["DAPI", "second"], {"x": 0.645, "y": 0.645})
    np.save(folder / "unit.probability.npy", ndi.gaussian_filter((truth > 0).astype(np.float32), 1.5).astype(np.float16))
    unit = {"unit_id": "unit", "image_path": str(folder / "unit.ome.tif"), "channel_names": ["DAPI", "second"],
            "pixel_size_um": {"x": 0.645, "y": 0.645}, "shape": [2, *image.shape], "source_path": "mosaic"}
    return {"folder": folder, "unit": unit, "shape": image.shape}


def run(field: dict, settings: PostprocessSettings, name: str) -> tuple[dict, list[dict], np.ndarray]:
    out = field["folder"] / name
    out.mkdir()
    summary, objects = postprocess_one(field["unit"], field["folder"] / "unit.probability.npy", settings, ("DAPI",), out)
    assert (out / "unit.overlay.png").stat().st_size > 0
    assert not list(out.glob(".*.npy")), "the block scratch arrays are removed"
    return summary, objects, tifffile.imread(out / "unit.labels.ome.tif")


def assert_same_up_to_renumbering(whole: np.ndarray, blocked: np.ndarray) -> dict[int, int]:
    pairs = np.unique(np.stack([blocked.ravel(), whole.ravel()]), axis=1)
    pairs = pairs[:, (pairs > 0).any(axis=0)]
    assert (pairs > 0).all(), f"{np.sum((pairs == 0).any(axis=0))} object(s) differ in their pixels"
    assert np.unique(pairs[0]).size == np.unique(pairs[1]).size == pairs.shape[1], "objects split or merged differently"
    return dict(zip(pairs[0].tolist(), pairs[1].tolist()))


@pytest.mark.parametrize("variant", [{}, {"nucleus_diameter_um": 12.0, "exclude_border_objects": True}, {"split_touching": False}])
def test_blocks_give_the_whole_fields_labels_and_measurements(field, variant):
    whole_settings = replace(PostprocessSettings(), **variant)
    blocked_settings = replace(whole_settings, block_px=512, block_overlap_px=128)
    assert len(layout(field["shape"], 512, 128)) == 9
    whole_summary, whole_objects, whole = run(field, whole_settings, f"whole{len(variant)}{variant.get('split_touching')}")
    summary, objects, blocked = run(field, blocked_settings, f"blocks{len(variant)}{variant.get('split_touching')}")
    assert whole.shape == blocked.shape == field["shape"]
    assert whole.max() > 300 and blocked.max() == whole.max()
    crossing = [o for o in objects if any(o[f"centroid_{a}_px"] // 512 != (o[f"centroid_{a}_px"] + 15) // 512 for a in "yx")]
    assert len(crossing) > 20, "the field must have nuclei across block borders"
    mapping = assert_same_up_to_renumbering(whole, blocked)
    by_label = {o["label"]: o for o in whole_objects}
    assert len(objects) == len(whole_objects)
    for row in objects:
        expected = by_label[mapping[row["label"]]]
        for key, value in expected.items():
            if key == "label":
                continue
            if isinstance(value, float):
                assert row[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key
            else:
                assert row[key] == value, key
    assert summary["blocks"] == 9 and summary["left_out_large"] == 0
    for key in ("object_count", "typical_diameter_px", "removed_low_contrast", "diameter_um_median", "solidity_median"):
        assert summary[key] == pytest.approx(whole_summary[key]), key


def test_clusters_larger_than_the_overlap_are_counted_and_named(field, capfd):
    settings = replace(PostprocessSettings(), block_px=256, block_overlap_px=16)
    summary, objects, labels = run(field, settings, "tight")
    assert summary["left_out_large"] > 0
    assert summary["object_count"] == labels.max() == len(objects)
    assert "postprocess.block_overlap_px" in capfd.readouterr().err


def test_histogram_quantiles_equal_numpys():
    rng = np.random.default_rng(0)
    values = rng.integers(90, 4000, 10_001).astype(np.uint16)
    histogram = Histogram(0, 65535, integer=True)
    for part in np.array_split(values, 7):
        histogram.add(part)
    assert histogram.median() == np.median(values.astype(np.float64))
    for q in (1, 50, 90, 95, 99.8):
        assert histogram.percentile(q, np.float32) == float(np.percentile(values.astype(np.float32), q))
    centre = float(np.median(values))
    assert histogram.median_abs_deviation(centre) == np.median(np.abs(values - centre))
    floats = rng.normal(100, 15, 50_000)
    parts = np.array_split(floats, 5)
    coarse = Histogram(floats.min(), floats.max(), integer=False, bins=64)
    for part in parts:
        coarse.add(part)
    assert refined_median(lambda i: parts[i], list(range(5)), coarse) == np.median(floats)


def test_quality_and_gallery_read_a_large_unit_by_blocks(field, monkeypatch):
    """With the large-field side lowered below this mosaic's, quality and the gallery never read the whole unit:
    the metrics equal the whole plane's (integer image) and the gallery's panels show outlines."""
    import base64
    import io

    from PIL import Image

    from snakescope.core import blocks, images
    from snakescope.stages.report.gallery import gallery_batch
    from snakescope.core.settings import GallerySettings
    from snakescope.stages.quality import channel_metrics, quality_one
    from snakescope.core.records import write_json

    whole = channel_metrics(tifffile.imread(field["unit"]["image_path"])[1])
    out = field["folder"] / "gallery"
    out.mkdir()
    summary, objects, labels = run(field, replace(PostprocessSettings(), block_px=512, block_overlap_px=128), "for_gallery")
    (out / "segmentation").mkdir()
    (field["folder"] / "for_gallery" / "unit.labels.ome.tif").rename(out / "segmentation" / "unit.labels.ome.tif")
    write_json(out / "manifest.json", {"batch": "b0000", "units": [{**field["unit"], "sample_id": "mosaic"}]})
    monkeypatch.setattr(blocks, "LARGE_SIDE", 512)
    monkeypatch.setattr(images, "read_unit", lambda *a, **k: (_ for _ in ()).throw(AssertionError("read whole")))
    from snakescope.stages.inference import pooled_pixels

    pooled = pooled_pixels([out / "manifest.json"], ("DAPI",), per_unit=5000)
    assert pooled.shape[0] == 1 and 5000 <= pooled.shape[1] <= 1040 * 1392 // 4
    assert set(np.unique(pooled)) <= set(np.unique(tifffile.imread(field["unit"]["image_path"])[0]).astype(np.float32))
    metrics, failure = quality_one(field["unit"], "b0000")
    assert failure is None and metrics["second"]["median"] == whole["median"] and metrics["second"]["blur"] == pytest.approx(whole["blur"])
    final = {"unit": {"labels": str(out / "segmentation" / "unit.labels.ome.tif")}}  # the refinement stage's final labels
    doc = gallery_batch(out / "manifest.json", final, ("DAPI",), GallerySettings(), out / "gallery.json")
    assert not doc["failures"], doc["failures"]
    image = doc["images"]["unit"]
    assert image["outlines"] and image["scale_bar_um"]
    detail = np.asarray(Image.open(io.BytesIO(base64.b64decode(image["detail"].split(",", 1)[1]))).convert("RGB"))
    yellow = (detail[..., 0] > 180) & (detail[..., 1] > 140) & (detail[..., 2] < 90)  # the outline colour, after WebP
    assert detail.shape[1] > 384 and yellow[:, detail.shape[1] // 2:].sum() > 500 and yellow[:, :detail.shape[1] // 2].sum() < 50

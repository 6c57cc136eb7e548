"""The deterministic reviewer: right issues for degraded demo images, schema-valid output."""

import jsonschema
import numpy as np
import pytest
import yaml

from conftest import ROOT
from snakescope.demo import DEMO_FIELDS, render_field
from snakescope.stages.quality import channel_metrics
from snakescope.stages.review import load_schema, review_unit, validate_review
from snakescope.core.knowledge import expected_diameter
from snakescope.core.settings import ReviewThresholds
from snakescope.methods.measurements import segment_unit
from snakescope.core.settings import PostprocessSettings

KB = yaml.safe_load((ROOT / "config" / "knowledge_base.yaml").read_text())


def review_field(field, metadata=None):
    image, truth = render_field(field)
    summary_labels, objects, summary = segment_unit((truth > 0).astype(np.float32) if field.degradation == "none" else
                                                    (image > np.percentile(image, 80)).astype(np.float32),
                                                    image, (0.65, 0.65), PostprocessSettings())
    unit = {"unit_id": field.name, "metadata": metadata or {"cell_line": "HeLa"}}
    return review_unit(unit, channel_metrics(image), summary, [o["equivalent_diameter_um"] for o in objects], KB,
                       ReviewThresholds())


@pytest.mark.parametrize("field", DEMO_FIELDS, ids=lambda f: f.name)
def test_demo_fields_get_the_issue_they_were_made_with(field):
    review = review_field(field)
    validate_review(review, load_schema())
    types = {i["type"] for i in review["issues"]}
    if field.degradation == "none":
        assert review["verdict"] == "pass", review["issues"]
    else:
        assert field.degradation in types
        assert review["verdict"] in ("warn", "fail")
        assert review["suggested_actions"][0]["action"] != "none"


def test_sizes_outside_the_knowledge_base_range_are_flagged():
    field = DEMO_FIELDS[0]
    image, truth = render_field(field)
    _, objects, summary = segment_unit((truth > 0).astype(np.float32), image, (2.0, 2.0), PostprocessSettings())
    review = review_unit({"unit_id": "x", "metadata": {"cell_line": "hela"}}, channel_metrics(image), summary,
                         [o["equivalent_diameter_um"] for o in objects], KB, ReviewThresholds())
    assert "object_size_out_of_range" in {i["type"] for i in review["issues"]}
    assert review["reviewer"]["provenance"]["cell_line"] == "HeLa"


def test_knowledge_base_every_range_has_a_source_and_default_fallback():
    for name, entry in KB["nucleus_diameter_um"].items():
        assert entry["min"] < entry["max"] and len(entry["source"]) > 20, name
    assert expected_diameter({"cell_line": "unknown line"}, KB, "cell_line")[0] == "default"


def test_schema_rejects_an_issue_outside_the_taxonomy():
    review = review_field(DEMO_FIELDS[0])
    review["issues"] = [{"type": "aliens", "severity": "warn", "evidence": "x"}]
    with pytest.raises(jsonschema.ValidationError):
        validate_review(review, load_schema())


def test_failed_processing_is_a_fail_verdict():
    review = review_unit({"unit_id": "u", "metadata": {}}, None, None, [], KB, ReviewThresholds(), failure="inference: boom")
    assert review["verdict"] == "fail" and review["issues"][0]["type"] == "processing_failed"
    validate_review(review, load_schema())


def test_relative_checks_compare_a_field_with_its_plate_and_say_so(tmp_path):
    """An outlier of its own plate is flagged with both numbers, even where the absolute limit is not reached."""
    from snakescope.core.records import write_json
    from snakescope.stages.review import quality_issues, unit_reference
    from snakescope.stages.quality import write_run_reference

    rng = np.random.default_rng(0)
    metrics, units = {}, []
    for plate, blur in (("P1", 0.30), ("P2", 0.50)):
        for i in range(12):
            uid = f"{plate}_{i}"
            metrics[uid] = {"DAPI": {"snr": float(rng.normal(80, 5)), "blur": float(blur + rng.normal(0, 0.01))}}
            units.append({"unit_id": uid, "metadata": {"plate": plate}})
    metrics["P1_odd"] = {"DAPI": {"snr": 80.0, "blur": 0.55}}  # ordinary on P2, far out on P1
    units.append({"unit_id": "P1_odd", "metadata": {"plate": "P1"}})
    write_json(tmp_path / "q.json", {"metrics": metrics})
    write_json(tmp_path / "m.json", {"units": units})
    doc = write_run_reference([tmp_path / "q.json"], tmp_path / "ref.json", [tmp_path / "m.json"])
    field = {"snr": 80.0, "blur": 0.55, "foreground_fraction": 0.2, "percent_saturated": 0.0, "max": 100.0}
    (issue,) = quality_issues(field, ReviewThresholds(), unit_reference(doc, "P1", "DAPI"))
    assert issue["type"] == "out_of_focus" and "blur 0.55" in issue["evidence"] and "median of plate P1" in issue["evidence"]
    assert quality_issues(field, ReviewThresholds(), unit_reference(doc, "P2", "DAPI")) == []  # P2's own median is 0.5


def test_a_few_real_nuclei_in_a_large_field_are_not_an_empty_field(unet_model):
    """Three real BBBC039 nuclei (with their own surroundings) in a 2048 x 1024 field of the same field's background
    level and camera noise, as a cytotoxic well on a large camera gives: 0.1 % foreground, under the empty limit. The U-Net and
    the segmentation keep the three nuclei, so the review does not fail the field as empty (its nuclei are the result):
    it warns, to be looked at (debris alone would look the same), and asks nothing of the microscope; the same field
    without them fails as empty."""
    import tifffile
    from scipy import ndimage as ndi

    from conftest import SHARED, needs_shared
    from snakescope.core.background import fit_background
    from snakescope.stages.inference import Predictor
    from snakescope.core.settings import ModelSettings

    folder = SHARED / "data" / "nuclei" / "bbbc039"
    needs_shared(folder)
    path = sorted((folder / "images").glob("*.tif"))[0]
    image, truth = tifffile.imread(path), tifffile.imread(folder / "masks" / path.name)
    rng = np.random.default_rng(3)
    from snakescope.stages.quality import pixel_noise

    level = float(np.median(image[~ndi.binary_dilation(truth > 0, iterations=4)]))  # the field's background and camera noise
    sparse = np.clip(np.round(rng.normal(level, pixel_noise(image), (1024, 2048))), 0, 65535).astype(image.dtype)
    empty = sparse.copy()
    areas = np.bincount(truth.ravel())
    ids = np.arange(1, areas.size)[areas[1:] > 0]
    kept = [int(i) for i in ids[np.argsort(np.abs(areas[ids] - np.median(areas[ids])))][:3]]  # three typical nuclei
    for n, label in enumerate(kept):
        ys, xs = np.nonzero(ndi.binary_dilation(truth == label, iterations=3))
        sparse[ys - ys.min() + 200 + 250 * n, xs - xs.min() + 300 + 600 * n] = image[ys, xs]
    predictor = Predictor(ModelSettings(source=str(unet_model)), threads=1)
    kb = yaml.safe_load((ROOT / "config" / "knowledge_base.yaml").read_text())
    verdicts = {}
    for name, field in (("sparse", sparse), ("empty", empty)):
        metrics = channel_metrics(field, fit_background(field))
        assert metrics["foreground_fraction"] <= ReviewThresholds().empty_foreground_fraction
        probability = predictor.predict(field[None].astype(np.float32))
        _, objects, summary = segment_unit(probability, field, (0.645, 0.645), PostprocessSettings(), name)
        review = review_unit({"unit_id": name, "metadata": {}}, metrics, summary, [o["equivalent_diameter_um"] for o in objects],
                             kb, ReviewThresholds())
        verdicts[name] = (summary["object_count"], [(i["type"], i["severity"]) for i in review["issues"]], review["verdict"],
                          [a["action"] for a in review["suggested_actions"]])
    predictor.close()
    assert verdicts["sparse"][0] == 3 and verdicts["sparse"][1] == [("empty_field", "warn")], verdicts
    assert verdicts["sparse"][2] == "warn" and verdicts["sparse"][3] == ["none"]  # kept, and not skipped unasked
    assert verdicts["empty"][0] == 0 and ("empty_field", "fail") in verdicts["empty"][1] and verdicts["empty"][2] == "fail"


def test_a_field_with_no_data_is_not_an_empty_field(tmp_path):
    """All-NaN, mostly-NaN and constant frames are ``no_data`` with ``reacquire``; a real field with a few NaN pixels
    is reviewed as before and its NaN pixels are in the unit's warnings (warnings.csv); real black backgrounds are data."""
    import tifffile

    from conftest import FORMATS, needs_shared
    from snakescope.core.inputs import Source
    from snakescope.core.records import read_json
    from snakescope.core.settings import ImportSettings
    from snakescope.stages.acquisition import import_batch
    from snakescope.stages.quality import quality_batch

    images = FORMATS.parent / "nuclei"
    needs_shared(images / "bbbc039")
    real = tifffile.imread(sorted((images / "bbbc039" / "images").glob("*.tif"))[0]).astype(np.float32)
    rng = np.random.default_rng(0)
    mostly = real.copy()
    mostly[rng.random(real.shape) < 0.7] = np.nan
    few = real.copy()
    few.flat[rng.choice(few.size, few.size // 200, replace=False)] = np.nan
    stuck = np.full(real.shape, 100, np.float32)
    stuck.flat[rng.choice(stuck.size, 20, replace=False)] = 4095  # hot pixels on a stuck frame
    fields = {"all_nan": np.full(real.shape, np.nan, np.float32), "mostly_nan": mostly, "zeros": np.zeros(real.shape, np.float32),
              "stuck": stuck, "few_nan": few, "clean": real}
    sources = []
    for name, image in fields.items():
        tifffile.imwrite(tmp_path / f"{name}.ome.tif", image[None], ome=True,
                         metadata={"axes": "CYX", "PhysicalSizeX": 0.645, "PhysicalSizeY": 0.645, "Channel": {"Name": ["DNA"]}})
        sources.append(Source(name, str(tmp_path / f"{name}.ome.tif")))
    for path in sorted((images / "dsb2018" / "images").glob("*.tif")):  # black backgrounds: up to 86 % of pixels at 0
        sources.append(Source(path.stem, str(path)))
    import_batch("b0000", sources, ImportSettings(), tmp_path / "import")
    units = {u["unit_id"]: u for u in read_json(tmp_path / "import" / "manifest.json")["units"]}
    quality = quality_batch(tmp_path / "import" / "manifest.json", tmp_path / "quality.json")["metrics"]
    reviews = {}
    for uid, unit in units.items():
        metrics = next(iter(quality[uid].values()))
        summary = {"object_count": 0 if uid not in ("few_nan", "clean") else 40, "diameter_um_median": 9.0,
                   "fraction_large": 0.0, "fraction_low_solidity": 0.0, "length_unit": "µm"}
        reviews[uid] = review_unit(unit, metrics, summary, [9.0] * summary["object_count"], KB, ReviewThresholds())
        validate_review(reviews[uid], load_schema())
    for uid in ("all_nan", "mostly_nan", "zeros", "stuck"):
        assert [(i["type"], i["severity"]) for i in reviews[uid]["issues"]] == [("no_data", "fail")], uid
        assert [a["action"] for a in reviews[uid]["suggested_actions"]] == ["reacquire"], uid
    assert "NaN" in reviews["all_nan"]["issues"][0]["evidence"] and "constant" in reviews["zeros"]["issues"][0]["evidence"]
    assert any("NaN or infinite" in w for w in units["all_nan"]["warnings"])
    assert any("0.5%" in w for w in units["few_nan"]["warnings"]) and not units["clean"]["warnings"]
    assert reviews["few_nan"]["verdict"] == reviews["clean"]["verdict"] == "pass"
    assert not [uid for uid, r in reviews.items() if uid not in fields and any(i["type"] == "no_data" for i in r["issues"])]


def test_a_field_gets_one_consistent_account_and_at_most_one_exposure_action():
    """Real DSB2018 and BBBC039 fields clipped at the camera maximum (3-15 % of pixels) are saturated, never also
    low_signal (clipping lowers the measured SNR; more exposure would make it worse) nor empty; a field whose few
    objects are dim is low_signal, not also empty_field."""
    import tifffile

    from conftest import FORMATS, needs_shared

    images = FORMATS.parent / "nuclei"
    needs_shared(images / "dsb2018")
    paths = sorted((images / "dsb2018" / "images").glob("*.tif")) + sorted((images / "bbbc039" / "images").glob("*.tif"))
    seen = set()
    for path in paths:
        image = tifffile.imread(path).astype(np.float64)
        top, background = 65535.0 if image.max() > 255 else 255.0, float(np.median(image))
        for clipped_percent in (3, 15):
            high = np.percentile(image, 100 - clipped_percent)
            clipped = np.clip(background + (image - background) * (top - background) / max(high - background, 1e-9), 0, top)
            review = review_unit({"unit_id": path.stem, "metadata": {}}, channel_metrics(np.round(clipped)), None, [], KB,
                                 ReviewThresholds())
            kinds = {i["type"] for i in review["issues"]}
            seen.add(frozenset(kinds))
            assert "saturated" in kinds and not kinds & {"low_signal", "empty_field"}, (path.name, clipped_percent, kinds)
            exposure = [a["action"] for a in review["suggested_actions"] if a["action"].endswith("_exposure")]
            assert exposure == ["reduce_exposure"], (path.name, exposure)
    dim = {"foreground_fraction": 0.001, "percent_saturated": 0.0, "snr": 3.0, "blur": 0.2, "max": 300.0, "min": 90.0,
           "p01": 95.0, "p99": 130.0, "median": 100.0}
    kinds = [i["type"] for i in review_unit({"unit_id": "dim", "metadata": {}}, dim, {"object_count": 4}, [], KB,
                                            ReviewThresholds())["issues"]]
    assert kinds == ["low_signal"]

"""bioimage.io inference with the real U-Net in ../shared (ONNX and TorchScript) and the project's demo model."""

import numpy as np
import pytest
import tifffile

from conftest import UNET, needs_shared
from snakescope.stages.acquisition import import_batch
from snakescope.core.settings import ImportSettings
from snakescope.stages.inference import ModelError, Predictor, check_model, predict_batch
from snakescope.core.settings import ModelSettings
from snakescope.core.inputs import Source
from snakescope.core.records import write_json


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def unet_tensors():
    needs_shared(UNET)
    folder = UNET.parent
    return np.load(folder / "test_input.npy")[0], np.load(folder / "test_output.npy")[0, 0]


@pytest.mark.parametrize("weight_format", ["onnx", "torchscript"])
def test_unet_reproduces_its_test_output_and_tiles_large_images(unet_tensors, weight_format):
    image, expected = unet_tensors
    predictor = Predictor(ModelSettings(source=str(UNET), weight_format=weight_format))
    try:
        probability = predictor.predict(image)
        assert probability.shape == expected.shape
        # snakescope mirror-pads by the halo (context at the borders) and so tiles 576 px, not 512: the
        # normalisation statistics and block seams move a little, the segmentation does not
        inner = (slice(40, -40), slice(40, -40))
        assert np.abs(probability - expected)[inner].max() < 0.06
        assert dice(probability > 0.5, expected > 0.5) > 0.98
        # 1024 x 1024 (2 x 2 copies, so normalisation statistics are unchanged) needs several 512 blocks
        big = predictor.predict(np.tile(image, (1, 2, 2)))
        assert big.shape == (1024, 1024)
        assert dice(big[:512, :512] > 0.5, expected > 0.5) > 0.98
    finally:
        predictor.close()


@pytest.mark.parametrize("weight_format,shape", [("onnx", s) for s in [(20, 66), (256, 256), (512, 510), (520, 696), (2100, 2300), (1, 40)]]
                         + [("torchscript", s) for s in [(20, 66), (520, 696)]])
def test_unet_predicts_any_image_size(unet_tensors, weight_format, shape):
    """Smaller than one 512 tile, odd, thin, and multi-megapixel: padded to the input axes, cropped back."""
    image, expected = unet_tensors
    predictor = shared_predictor(weight_format)
    field = np.tile(image, (1, 5, 5))[:, : shape[0], : shape[1]]
    probability = predictor.predict(field)
    assert probability.shape == shape and np.isfinite(probability).all()
    assert 0 <= probability.min() and probability.max() <= 1
    if min(shape) >= 256:  # enough context: the nuclei found agree with the model's own test output
        window = (slice(64, 192), slice(64, 192))
        assert dice(probability[window] > 0.5, expected[window] > 0.5) > 0.9


@pytest.mark.parametrize("shape", [(40, 40), (80, 80), (150, 150), (150, 196), (196, 120)])
def test_fields_smaller_than_the_models_default_block_are_predicted(demo_dir, shape):
    """The demo model accepts 64 + n*16 px; bioimageio.core's blocked prediction uses 224 px blocks: a smaller field
    (or one side smaller) is predicted in blocks no larger than the padded field, and finds the field's nuclei."""
    from snakescope.core.images import read_unit

    predictor = Predictor(ModelSettings(source=str(demo_dir / "model" / "bioimageio.yaml")))
    assert predictor.default_block == {"y": 224, "x": 224}
    full = read_unit(demo_dir / "images" / "ctrl_01.ome.tif").astype(np.float32)
    reference = predictor.predict(full)
    crop = (slice(60, 60 + shape[0]), slice(60, 60 + shape[1]))  # the demo field is 256 px; nuclei in every crop
    probability = predictor.predict(full[:, crop[0], crop[1]])
    assert probability.shape == shape and np.isfinite(probability).all()
    window = (slice(8, shape[0] - 8), slice(8, shape[1] - 8))  # away from the borders, where context differs
    assert dice(probability[window] > 0.5, reference[crop][window] > 0.5) > 0.8


_PREDICTORS: dict = {}


def shared_predictor(weight_format="onnx"):
    if weight_format not in _PREDICTORS:
        _PREDICTORS[weight_format] = Predictor(ModelSettings(source=str(UNET), weight_format=weight_format))
    return _PREDICTORS[weight_format]


def test_dataset_normalisation_makes_a_field_independent_of_its_background(unet_tensors):
    """Per-image statistics change when a field sits in more background; statistics pooled over a run do not."""
    from snakescope.stages.inference import pooled_pixels  # noqa: F401 - the workflow's way to build the pool

    image, _ = unet_tensors
    canvas = np.full((1, 1024, 1024), np.median(image), np.float32)
    canvas[:, 256:768, 256:768] = image
    pool = np.concatenate([image.reshape(1, -1), canvas.reshape(1, -1)[:, ::7]], axis=1)
    per_image = shared_predictor()
    dataset = Predictor(ModelSettings(source=str(UNET)), pool)
    inner = (slice(32, -32), slice(32, -32))
    alone, embedded = per_image.predict(image), per_image.predict(canvas)[256:768, 256:768]
    d_alone, d_embedded = dataset.predict(image), dataset.predict(canvas)[256:768, 256:768]
    assert np.abs(d_alone - d_embedded)[inner].max() < 0.02
    assert np.abs(alone - embedded)[inner].max() > 5 * np.abs(d_alone - d_embedded)[inner].max()


def test_padding_plan_follows_the_axis_rules():
    from snakescope.stages.inference import padded_length, plan_padding

    assert padded_length(20, 512, 0) == 512 and padded_length(600, 512, 0) == 600  # fixed size: blocking tiles the rest
    assert padded_length(20, 64, 16) == 64 and padded_length(70, 64, 16) == 80 and padded_length(64, 64, 16) == 64
    plan = plan_padding((20, 66), {"y": (512, 0), "x": (512, 0)}, {"y": 32, "x": 32})
    assert sum(plan.y) + 20 == 512 and sum(plan.x) + 66 == 512
    plan = plan_padding((520, 696), {"y": (512, 0), "x": (512, 0)}, {"y": 32, "x": 32})
    assert plan.y == (32, 32) and plan.x == (32, 32)
    assert plan.crop(np.zeros((584, 760))).shape == (520, 696)


def test_demo_model_passes_test_model_and_the_result_is_cached(demo_dir, tmp_path):
    settings = ModelSettings(source=str(demo_dir / "model" / "bioimageio.yaml"))
    first = check_model(settings, tmp_path)
    assert first["test"]["status"] == "passed" and not first["test_cached"]
    second = check_model(settings, tmp_path)
    assert second["test_cached"] and second["digest"] == first["digest"]


def test_unusable_models_name_the_config_key(tmp_path, demo_dir):
    with pytest.raises(ModelError, match="model.source"):
        check_model(ModelSettings(source=str(tmp_path / "missing" / "bioimageio.yaml")), tmp_path)
    with pytest.raises(ModelError, match="model.weight_format"):
        check_model(ModelSettings(source=str(demo_dir / "model" / "bioimageio.yaml"), weight_format="torchscript"), tmp_path)


def test_predict_batch_loads_once_and_records_per_unit_failures(demo_dir, tmp_path):
    model = demo_dir / "model" / "bioimageio.yaml"
    sources = [Source("ctrl", str(demo_dir / "images" / "ctrl_01.ome.tif")),
               Source("multi", str(demo_dir / "images" / "multiscene_01.ome.tif"))]
    imported = import_batch("b0000", sources, ImportSettings(), tmp_path / "import")
    # a unit without the requested channel fails alone
    odd = tmp_path / "odd.ome.tif"
    tifffile.imwrite(odd, np.ones((1, 64, 64), np.uint16), ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": ["GFP"]}, "PhysicalSizeX": 1, "PhysicalSizeY": 1})
    extra = import_batch("b0001", [Source("odd", str(odd))], ImportSettings(), tmp_path / "import2")
    imported["units"] += extra["units"]
    write_json(tmp_path / "import" / "manifest.json", imported)
    settings = ModelSettings(source=str(model), channels=("DAPI",))
    check = check_model(settings, tmp_path / "cache")
    write_json(tmp_path / "check.json", check)
    doc = predict_batch(tmp_path / "import" / "manifest.json", settings, tmp_path / "check.json", tmp_path / "out")
    assert sorted(doc["predictions"]) == ["ctrl", "multi_s0", "multi_s1"]
    (failure,) = doc["failures"]
    assert failure["unit_id"] == "odd" and "DAPI" in failure["reason"]
    probability = np.load(doc["predictions"]["ctrl"]["path"])
    assert probability.shape == (256, 256) and 0 <= probability.min() and probability.max() <= 1


def test_a_blank_model_channel_beside_a_channel_with_signal_fails_the_unit_naming_the_key():
    """Real nuclei in the second channel and the model pointed at a blank first one: the unit fails with the key and
    the channel to choose, instead of a field of nuclei reviewed as empty; a field blank in every channel passes
    (it is empty, and the review says so); the right channel passes."""
    from conftest import SHARED
    from snakescope.core.channels import check_model_channels

    folder = SHARED / "data" / "nuclei" / "bbbc039" / "images"
    needs_shared(folder)
    nuclei = tifffile.imread(sorted(folder.glob("*.tif"))[0])
    unit = np.stack([np.zeros_like(nuclei), nuclei])
    names = ["Cy5", "DAPI"]
    with pytest.raises(ValueError, match=r"model.channels selects 'Cy5', blank .* 'DAPI' carries signal.*\[1\] or \['DAPI'\]"):
        check_model_channels(unit, names, (0,))
    check_model_channels(unit, names, ("DAPI",))
    check_model_channels(unit, names, (0, 1))  # one of the model's channels has signal
    check_model_channels(np.zeros_like(unit), names, (0,))


def test_a_model_channel_picked_by_index_beside_a_nuclear_stain_is_warned():
    """Cell-painting-like channel names: index 0 is actin and the DNA stain is index 2: one warning naming both and the
    setting; no warning when the chosen channel is the stain, when it was chosen by name, or when no name says."""
    from snakescope.core.channels import channel_choice_warning

    warning = channel_choice_warning(["Actin-488", "Tubulin", "w3 DAPI"], (0,))
    assert "'Actin-488' (index 0)" in warning and "'w3 DAPI' (index 2)" in warning and "model.channels: ['w3 DAPI']" in warning
    assert channel_choice_warning(["GFP", "H2B-mCherry"], (0,)) is not None
    assert channel_choice_warning(["w1 Hoechst 33342", "w2 Mito"], (0,)) is None
    assert channel_choice_warning(["Actin", "DAPI"], ("Actin",)) is None
    assert channel_choice_warning(["Channel:0:0", "Channel:0:1"], (0,)) is None
    assert channel_choice_warning(["SiR-DNA", "PINK1-GFP"], (1,)) is not None  # "PINK1" is not a nuclear stain


def test_a_model_that_fails_its_own_test_is_refused_with_the_reason(demo_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken-model"
    shutil.copytree(demo_dir / "model", broken)
    expected = np.load(broken / "test_output.npy")
    np.save(broken / "test_output.npy", 1.0 - expected)  # wrong expected output
    import hashlib
    import yaml

    rdf = yaml.safe_load((broken / "bioimageio.yaml").read_text())
    rdf["outputs"][0]["test_tensor"]["sha256"] = hashlib.sha256((broken / "test_output.npy").read_bytes()).hexdigest()
    (broken / "bioimageio.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    record = check_model(ModelSettings(source=str(broken / "bioimageio.yaml")), tmp_path / "cache")
    assert record["test"]["status"] != "passed" and record["test"]["failed_checks"]
    cached = [p for p in (tmp_path / "cache").rglob("*.json") if ".tile-" not in p.name]  # the tile check is its own
    assert not cached, "a failed test must not be cached"
    from snakescope.stages.inference import run_check

    with pytest.raises(SystemExit) as stopped:  # the rule check_model's job stops with the reason
        run_check(settings=ModelSettings(source=str(broken / "bioimageio.yaml")), cache_dir=str(tmp_path / "c2"),
                  model_check=str(tmp_path / "check.json"))
    assert "model.source" in str(stopped.value) and "did not pass" in str(stopped.value)
    assert not (tmp_path / "check.json").exists()


def test_unknown_zoo_id_fails_fast_naming_the_key(tmp_path):
    import time

    started = time.time()
    with pytest.raises(ModelError, match="model.source=.snakescope-no-such-model."):
        check_model(ModelSettings(source="snakescope-no-such-model"), tmp_path)
    assert time.time() - started < 60


def test_large_fields_are_predicted_by_blocks_with_the_fields_normalisation(tmp_path, monkeypatch):
    """Real BBBC039 nuclei, 2 x 2 fields (1040 x 1392) predicted whole and in 512-px blocks (96 px of context): the
    blocks are normalised with the whole field's mean and SD, so they agree with the whole field as the model's
    own tiles agree with larger ones; normalised per block, the lower fields' nuclei would not."""
    from snakescope.core import blocks
    from snakescope.stages import inference
    from snakescope.core.images import write_ome_tiff
    from snakescope.stages.inference import predict_one
    from snakescope.methods.tiling import agreement, agrees

    from conftest import SHARED

    needs_shared(UNET)
    fields = [tifffile.imread(p) for p in sorted((SHARED / "data" / "nuclei" / "bbbc039" / "images").glob("*.tif"))[:4]]
    image = np.concatenate([np.concatenate(fields[:2], 1), np.concatenate(fields[2:], 1)], 0)
    write_ome_tiff(tmp_path / "unit.ome.tif", image[None], ["DAPI"], {})
    unit = {"unit_id": "unit", "image_path": str(tmp_path / "unit.ome.tif"), "channel_names": ["DAPI"],
            "shape": [1, *image.shape], "source_path": "mosaic"}
    predictor = shared_predictor()
    whole = predictor.predict(image[None].astype(np.float32))
    monkeypatch.setattr(blocks, "LARGE_SIDE", 512)
    monkeypatch.setattr(inference, "BLOCK_PX", 512)
    record, failure = predict_one(predictor, unit, tmp_path, "[inference test]")
    assert failure is None
    blocked = np.load(record["path"])
    assert blocked.shape == image.shape and blocked.dtype == np.float16
    figures = agreement(whole, blocked)
    assert agrees(figures) and figures["max_abs_difference"] < 0.1, figures

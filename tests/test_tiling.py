"""Inference tiles other than the model's own (model.tile_px: auto by default, or an edge): validated per model, then
used on real fields of any size."""

from dataclasses import replace

import numpy as np
import pytest
import tifffile
import yaml

from conftest import SHARED, UNET, needs_shared
from snakescope.stages.inference import ModelError, Predictor, check_model, predict_batch
from snakescope.core.settings import ModelSettings
from snakescope.core.records import write_json
from snakescope.methods.engines import free_size_onnx
from snakescope.methods.tiling import TileRule

BBBC039 = SHARED / "data" / "nuclei" / "bbbc039" / "images"


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    needs_shared(UNET)
    cache = tmp_path_factory.mktemp("tile-cache")
    settings = ModelSettings(source=str(UNET), tile_px=1100, run_test=False)
    return settings, check_model(settings, cache), cache


def test_the_real_unet_passes_the_tile_check_and_the_result_is_cached(checked):
    settings, record, cache = checked
    tiling = record["tiling"]
    assert tiling["status"] == "passed" and not tiling["cached"]
    assert tiling["rule"]["tile_px"] == 1100 and tiling["rule"]["step"] in (8, 16, 32, 64)
    # small fields run at their own size when a crop smaller than the model's tile agrees too (it does for the U-Net)
    assert tiling["small_field"]["own_size"] and tiling["rule"]["minimum"] == tiling["rule"]["step"]
    assert tiling["mean_abs_difference"] <= 0.005 and tiling["foreground_agreement"] >= 0.995
    assert check_model(settings, cache)["tiling"]["cached"]


@pytest.mark.parametrize("shape", [(81, 147), (256, 256), (520, 696), (1024, 1024), (1500, 2050)])
def test_larger_tiles_segment_real_fields_like_the_models_own_tiles(checked, shape):
    """Smaller than one tile, a real BBBC039 field, one large tile, several large tiles with seams."""
    settings, record, _ = checked
    fields = [tifffile.imread(p).astype(np.float32) for p in sorted(BBBC039.glob("*.tif"))[:4]]
    mosaic = np.block([[fields[0], fields[1], fields[0]], [fields[2], fields[3], fields[2]], [fields[1], fields[0], fields[3]]])
    image = mosaic[None, : shape[0], : shape[1]]
    own = Predictor(replace(settings, tile_px="model"))
    larger = Predictor(settings, tile_rule=TileRule(**record["tiling"]["rule"]))
    try:
        reference, probability = own.predict(image), larger.predict(image)
    finally:
        own.close(), larger.close()
    assert probability.shape == shape and np.isfinite(probability).all()
    assert np.mean((reference > 0.5) == (probability > 0.5)) >= 0.995
    foreground_dice = 2 * np.logical_and(reference > 0.5, probability > 0.5).sum() / ((reference > 0.5).sum() + (probability > 0.5).sum())
    assert foreground_dice > 0.98


def test_tile_rule_uses_one_tile_when_the_field_fits_else_equal_tiles():
    rule = TileRule(tile_px=1100, minimum=512, step=16)
    assert rule.largest == 1088
    assert rule.fits(1088) and not rule.fits(1089)
    # 3000 px with a 32-px halo: three tiles of 1000 (rounded to the step) plus halo, not two full ones and a sliver
    assert rule.block(3000, 32) == 1072 and rule.block(2048, 32) == 1088 and rule.block(3000) == 1008
    small = TileRule(tile_px=1728, minimum=8, step=8)
    assert small.block(2048, 32) == 1088 and small.block(4096, 32) == 1432  # 3 tiles of 1368 + halo


def test_auto_tiles_are_bounded_by_the_memory_a_tile_holds():
    from snakescope.methods.tiling import AUTO_TILE_MEMORY_MB, auto_tile_px, tile_request

    edge = auto_tile_px(669, minimum=8, step=8)
    assert edge % 8 == 0 and 669 * edge**2 <= AUTO_TILE_MEMORY_MB * 1e6 < 669 * (edge + 8) ** 2
    assert auto_tile_px(10**9, minimum=512, step=16) == 512  # never below the model's own tile
    assert [tile_request(v) for v in (None, "auto", "model", 1100)] == ["auto", "auto", "model", 1100]
    with pytest.raises(ValueError, match="model.tile_px"):
        tile_request("big")


def test_auto_is_the_default_and_takes_the_largest_validated_tile_memory_allows(tmp_path):
    """model.tile_px unset: the model check validates other tile sizes, measures what a tile holds in a fresh
    process and bounds the tile edge by it; inference then uses those tiles."""
    from snakescope.core.costs import tile_mb
    from snakescope.methods.tiling import AUTO_TILE_MEMORY_MB

    needs_shared(UNET)
    settings = ModelSettings(source=str(UNET), run_test=False)
    assert settings.tile_px == "auto"
    tiling = check_model(settings, tmp_path / "cache")["tiling"]
    assert tiling["status"] == "passed" and tiling["request"] == "auto" and tiling["bytes_measured"]
    assert 200 < tiling["bytes_per_tile_pixel"] < 5000  # the U-Net holds about 670 bytes per tile pixel
    edge = tiling["rule"]["tile_px"]
    assert edge >= 1088 and tiling["bytes_per_tile_pixel"] * edge**2 <= AUTO_TILE_MEMORY_MB * 1e6
    write_json(tmp_path / "check.json", {"tiling": tiling})
    per_pixel = tiling["bytes_per_tile_pixel"]  # a field and its halo in one tile, bounded by the largest tile
    assert tile_mb(tmp_path / "check.json", 1024 * 1024) == pytest.approx(per_pixel * min(edge**2, 2 * 1024**2) / 1e6)
    assert tile_mb(tmp_path / "check.json", 8192**2) == pytest.approx(per_pixel * edge**2 / 1e6)
    assert check_model(ModelSettings(source=str(UNET), run_test=False, tile_px="model"), tmp_path / "cache").get("tiling") is None


def fixed_size_model(folder, size=64):
    """A fixed-size model whose graph adds a constant of exactly its input size: no other size can work."""
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir()
    graph = helper.make_graph(
        [helper.make_node("Add", ["raw", "bias"], ["shifted"]), helper.make_node("Sigmoid", ["shifted"], ["probability"])],
        "fixed", [helper.make_tensor_value_info("raw", TensorProto.FLOAT, [1, 1, size, size])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [1, 1, size, size])],
        initializer=[numpy_helper.from_array(np.linspace(-1, 1, size * size, dtype=np.float32).reshape(1, 1, size, size), "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (folder / "weights.onnx").write_bytes(model.SerializeToString())
    test_input = np.random.default_rng(0).normal(size=(1, 1, size, size)).astype(np.float32)
    np.save(folder / "test_input.npy", test_input)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.save(folder / "test_output.npy", session.run(None, {"raw": test_input})[0])
    axes = lambda: [{"type": "batch"}, {"type": "channel", "channel_names": ["c"]}]  # noqa: E731
    rdf = {
        "format_version": "0.5.4", "type": "model", "name": "fixed-size test model", "description": "test",
        "authors": [{"name": "snakescope tests"}], "cite": [{"text": "t", "url": "https://bioimage.io"}], "license": "MIT",
        "documentation": "README.md",
        "inputs": [{"id": "raw", "axes": axes() + [{"type": "space", "id": a, "size": size} for a in "yx"],
                    "test_tensor": {"source": "test_input.npy"}}],
        "outputs": [{"id": "probability", "axes": axes() + [{"type": "space", "id": a, "size": {"tensor_id": "raw", "axis_id": a}}
                                                            for a in "yx"], "test_tensor": {"source": "test_output.npy"}}],
        "weights": {"onnx": {"source": "weights.onnx", "opset_version": 17}},
    }
    (folder / "README.md").write_text("fixed-size test model\n")
    (folder / "bioimageio.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    return folder / "bioimageio.yaml"


def test_a_model_that_needs_its_own_size_is_refused_naming_the_key(tmp_path):
    source = fixed_size_model(tmp_path / "fixed")
    Predictor(ModelSettings(source=str(source))).predict(np.ones((1, 100, 90), np.float32))  # its own tiles work
    with pytest.raises(ModelError, match=r"model\.tile_px=256: .*remove model\.tile_px") as info:
        check_model(ModelSettings(source=str(source), tile_px=256, run_test=False), tmp_path / "cache")
    assert "step 8" in str(info.value)
    assert not list((tmp_path / "cache").rglob("*tile*.json")), "a failed tile check must not be cached"
    # the default (auto) keeps the model's own tiles for it, and says why
    tiling = check_model(ModelSettings(source=str(source), run_test=False), tmp_path / "cache")["tiling"]
    assert tiling["status"] == "failed" and "its own tiles are used" in tiling["reason"]
    from snakescope.stages.inference import batch_predictor

    assert batch_predictor(ModelSettings(source=str(source)), {"tiling": tiling}).tile_rule is None


def test_free_size_copy_keeps_the_graph_and_frees_only_spatial_sizes(tmp_path):
    import onnx

    data = (fixed_size_model(tmp_path / "m").parent / "weights.onnx").read_bytes()
    model = onnx.load_from_string(free_size_onnx(data))
    (tensor,) = model.graph.input
    dims = [d.dim_value or d.dim_param for d in tensor.type.tensor_type.shape.dim]
    assert dims == [1, 1, "y", "x"]
    assert [n.op_type for n in model.graph.node] == ["Add", "Sigmoid"]


def test_predict_batch_records_the_tiles_it_used(checked, tmp_path):
    from snakescope.stages.acquisition import import_batch
    from snakescope.core.settings import ImportSettings
    from snakescope.core.inputs import Source

    settings, record, _ = checked
    path = sorted(BBBC039.glob("*.tif"))[0]
    doc = import_batch("b0000", [Source("f1", str(path), {})], ImportSettings(), tmp_path / "import")
    write_json(tmp_path / "check.json", record)
    result = predict_batch(tmp_path / "import" / "manifest.json", settings, tmp_path / "check.json", tmp_path / "inference")
    assert not result["failures"] and doc["units"]
    assert result["tiles"] == record["tiling"]["rule"]
    assert result["processing"].startswith("numpy")  # the U-Net's operators all have checked numpy twins
    checked_engine = record["tiling"]["engine"]
    assert result["engine"] == {k: checked_engine[k] for k in ("name", "version", "precision")}


def test_openvino_is_validated_against_the_models_own_tiles_and_segments_real_fields_alike(checked):
    """model.engine auto (the default): the check runs the validated tiles with OpenVINO too, at its precision for
    this CPU, and records the figures; batches then use it. On real BBBC039 fields its probabilities and the objects
    segmented from them match onnxruntime's."""
    from snakescope.core.settings import PostprocessSettings
    from snakescope.methods.measurements import object_f1, segment_unit
    from snakescope.stages.inference import batch_predictor

    settings, record, _ = checked
    assert settings.engine == "auto"
    engine = record["tiling"]["engine"]
    assert engine["name"] == "openvino" and engine["openvino"] == "passed" and engine["precision"] in ("bf16", "f32")
    assert engine["mean_abs_difference"] <= 0.005 and engine["foreground_agreement"] >= 0.995
    openvino = batch_predictor(settings, record, threads=2)
    onnxruntime = Predictor(settings, threads=2, tile_rule=TileRule(**record["tiling"]["rule"]))
    assert openvino.engine["name"] == "openvino" and onnxruntime.engine["name"] == "onnxruntime"
    try:
        for path in sorted(BBBC039.glob("*.tif"))[:3]:
            image = tifffile.imread(path)[None]
            ours, theirs = openvino.predict(image), onnxruntime.predict(image)
            assert np.abs(ours - theirs).mean() < 0.001 and np.mean((ours > 0.5) == (theirs > 0.5)) > 0.999
            labels = [segment_unit(p, image[0], (0.65, 0.65), PostprocessSettings())[0] for p in (ours, theirs)]
            assert labels[1].max() > 20 and object_f1(labels[0], labels[1])["f1"] > 0.98
    finally:
        openvino.close(), onnxruntime.close()


def test_engine_onnxruntime_keeps_onnxruntime_and_says_so(tmp_path):
    from snakescope.stages.inference import batch_predictor

    needs_shared(UNET)
    settings = ModelSettings(source=str(UNET), tile_px=1100, run_test=False, engine="onnxruntime")
    record = check_model(settings, tmp_path / "cache")
    assert record["tiling"]["engine"]["name"] == "onnxruntime" and "model.engine" in record["tiling"]["engine"]["reason"]
    predictor = batch_predictor(settings, record)
    assert predictor.engine == {"name": "onnxruntime", "version": record["tiling"]["engine"]["version"], "precision": "f32"}
    predictor.close()


def test_without_openvino_auto_uses_onnxruntime_and_openvino_is_refused_naming_the_key(tmp_path, monkeypatch):
    """OpenVINO not importable (a platform without its wheels): auto records why it is not used; asked for by name,
    the run stops naming model.engine. Asked for with the model's own tiles (no check to validate it): the same."""
    import snakescope.methods.engines as engines
    import snakescope.stages.inference as inference

    needs_shared(UNET)
    monkeypatch.setattr(engines, "openvino_version", lambda: None)
    monkeypatch.setattr(inference, "openvino_version", lambda: None)
    tiling = check_model(ModelSettings(source=str(UNET), tile_px=600, run_test=False), tmp_path / "cache")["tiling"]
    assert tiling["status"] == "passed" and tiling["engine"]["name"] == "onnxruntime"
    assert tiling["engine"]["reason"] == "OpenVINO is not installed here"
    with pytest.raises(ModelError, match=r"config key model\.engine=openvino: OpenVINO is not installed here"):
        check_model(ModelSettings(source=str(UNET), tile_px=600, run_test=False, engine="openvino"), tmp_path / "cache")
    with pytest.raises(ModelError, match=r"config key model\.engine=openvino: .*model\.tile_px: model"):
        check_model(ModelSettings(source=str(UNET), tile_px="model", run_test=False, engine="openvino"), tmp_path / "cache")


def test_openvino_predicts_a_batchs_fields_side_by_side_with_the_same_results(checked, tmp_path):
    """With OpenVINO an inference job's threads each take a field (streams): the probabilities equal one field at a
    time to the bit, a unit that fails fails alone, and the manifest says how many ran side by side. With a large
    field in the batch the fields go one at a time (its blocks hold the job's memory)."""
    from snakescope.core.inputs import Source
    from snakescope.core.records import read_json
    from snakescope.core.settings import ImportSettings
    from snakescope.stages.acquisition import import_batch

    settings, record, _ = checked
    paths = sorted(BBBC039.glob("*.tif"))[:4]
    odd = tmp_path / "odd.ome.tif"  # no channel of the name the model is told to read
    tifffile.imwrite(odd, np.ones((1, 64, 64), np.uint16), ome=True, metadata={"axes": "CYX", "Channel": {"Name": ["GFP"]}})
    doc = import_batch("b0000", [Source(p.stem, str(p), {}) for p in paths] + [Source("odd", str(odd), {})],
                       ImportSettings(), tmp_path / "import")
    write_json(tmp_path / "check.json", record)
    named = replace(settings, channels=(doc["units"][0]["channel_names"][0],))
    runs = {threads: predict_batch(tmp_path / "import" / "manifest.json", named, tmp_path / "check.json",
                                   tmp_path / f"inference-{threads}", threads=threads) for threads in (1, 2)}
    assert runs[1]["fields_side_by_side"] == 1 and runs[2]["fields_side_by_side"] == 2
    for run in runs.values():
        assert run["engine"]["name"] == "openvino" and list(run["predictions"]) == [p.stem for p in paths]
        assert [f["unit_id"] for f in run["failures"]] == ["odd"]
    for uid in runs[1]["predictions"]:
        np.testing.assert_array_equal(np.load(runs[2]["predictions"][uid]["path"]), np.load(runs[1]["predictions"][uid]["path"]))
    manifest = read_json(tmp_path / "import" / "manifest.json")
    manifest["units"][0]["shape"] = [1, 8192, 8192]  # as a large field's record reads (its file is not opened here)
    write_json(tmp_path / "import" / "manifest.json", manifest)
    large = predict_batch(tmp_path / "import" / "manifest.json", named, tmp_path / "check.json", tmp_path / "inference-large",
                          threads=2)
    assert large["fields_side_by_side"] == 1


def test_torchscript_weights_keep_torch_and_openvino_asked_for_them_is_refused(tmp_path):
    needs_shared(UNET)
    tiling = check_model(ModelSettings(source=str(UNET), weight_format="torchscript", tile_px=600, run_test=False),
                         tmp_path / "cache")["tiling"]
    assert tiling["status"] == "passed" and tiling["engine"]["name"] == "torchscript"
    with pytest.raises(ModelError, match=r"config key model\.engine=openvino: OpenVINO runs ONNX weights, not torchscript"):
        check_model(ModelSettings(source=str(UNET), weight_format="torchscript", tile_px=600, run_test=False, engine="openvino"),
                    tmp_path / "cache")

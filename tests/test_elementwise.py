"""A model's element-wise pre- and post-processing in numpy (methods.elementwise): bioimageio.core's result bit for
bit, operator by operator and through the real U-Net's whole prediction; anything else left to bioimageio.core."""

import numpy as np
import pytest
import xarray as xr
from bioimageio.core import Tensor, proc_ops
from bioimageio.core.stat_measures import DatasetMean, DatasetStd, SampleMean, SampleStd
from bioimageio.spec.model.v0_5 import AxisId, TensorId

from conftest import UNET, needs_shared
from snakescope.core.settings import ModelSettings
from snakescope.methods.elementwise import agrees, twin
from snakescope.methods.tiling import TileRule
from snakescope.stages.inference import Padding, Predictor, image_statistics, pad_image

RAW = TensorId("raw")
DIMS = ("batch", "channel", "y", "x")
XY = (AxisId("x"), AxisId("y"))
BXY = (AxisId("batch"), *XY)


def two_channels(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((1, 2, 37, 53)) * np.array([40.0, 4000.0])[None, :, None, None]).astype(np.float32)


def per_channel(values) -> Tensor:
    return Tensor(np.asarray(values, np.float32)[None], dims=("batch", "channel"))


def test_each_operator_s_twin_gives_bioimageio_core_s_result_exactly():
    image = two_channels()
    stat = {SampleMean(member_id=RAW, axes=XY): per_channel([20.0, 2000.5]),
            SampleStd(member_id=RAW, axes=XY): per_channel([11.5, 1150.25])}
    dataset = {DatasetMean(member_id=RAW, axes=BXY): per_channel([19.0, 1990.0]),
               DatasetStd(member_id=RAW, axes=BXY): per_channel([12.0, 1200.0])}
    chains = {
        "dtype": [proc_ops.EnsureDtype(input=RAW, output=RAW, dtype="float64")],
        "scale along the channel axis": [proc_ops.ScaleLinear(input=RAW, output=RAW, gain=xr.DataArray([2.0, 0.5], dims=("channel",)),
                                                              offset=xr.DataArray([1.0, -3.0], dims=("channel",)))],
        "sample zero mean unit variance": [proc_ops.EnsureDtype(input=RAW, output=RAW, dtype="float32"),
                                           proc_ops.ZeroMeanUnitVariance(input=RAW, output=RAW, mean=SampleMean(member_id=RAW, axes=XY),
                                                                         std=SampleStd(member_id=RAW, axes=XY)),
                                           proc_ops.EnsureDtype(input=RAW, output=RAW, dtype="float32")],
        "dataset measures added by the pipeline": [proc_ops.AddKnownDatasetStats(dataset_stats=dataset),
                                                   proc_ops.ZeroMeanUnitVariance(input=RAW, output=RAW,
                                                                                 mean=DatasetMean(member_id=RAW, axes=BXY),
                                                                                 std=DatasetStd(member_id=RAW, axes=BXY))],
        "fixed zero mean unit variance": [proc_ops.FixedZeroMeanUnitVariance(input=RAW, output=RAW, mean=xr.DataArray([3.0, 2000.0], dims=("channel",)),
                                                                             std=xr.DataArray([1.5, 900.0], dims=("channel",)))],
        "sigmoid": [proc_ops.ScaleLinear(input=RAW, output=RAW, gain=0.01, offset=-1.0), proc_ops.Sigmoid(input=RAW, output=RAW)],
    }
    for name, operators in chains.items():
        apply = twin(operators, member=str(RAW))
        assert apply is not None, name
        assert agrees(apply, operators, member=str(RAW), probe=image, dims=DIMS, stat=stat), name
    # the check can fail: a twin of other operators does not pass for these
    wrong = twin(chains["sigmoid"], member=str(RAW))
    assert not agrees(wrong, chains["dtype"], member=str(RAW), probe=image, dims=DIMS, stat=stat)
    assert not any(isinstance(k, DatasetMean) for k in stat)  # the caller's statistics: the dataset ones not added


def test_operators_without_a_twin_leave_the_processing_to_bioimageio_core():
    assert twin([proc_ops.EnsureDtype(input=RAW, output=RAW, dtype="float32"),
                 proc_ops.Binarize(input=RAW, output=RAW, threshold=0.5)], member=str(RAW)) is None
    # an operator on another tensor, or writing to one, is not element-wise on this one
    assert twin([proc_ops.Sigmoid(input=TensorId("other"), output=TensorId("other"))], member=str(RAW)) is None
    assert twin([proc_ops.Sigmoid(input=RAW, output=TensorId("other"))], member=str(RAW)) is None


@pytest.mark.parametrize("shape,padding", [((1, 256, 256), Padding(y=(128, 128), x=(128, 128))),
                                           ((2, 37, 53), Padding(y=(40, 41), x=(3, 0))),
                                           ((1, 20, 66), Padding(y=(246, 246), x=(223, 223))),
                                           ((1, 1, 40), Padding(y=(10, 11), x=(4, 4))),
                                           ((1, 50, 60), None)])
def test_image_statistics_weigh_pixels_as_the_mirrored_image_repeats_them(shape, padding):
    rng = np.random.default_rng(1)
    image = (rng.gamma(2.0, 300.0, size=shape)).astype(np.float32)
    measures = [SampleMean(member_id=RAW, axes=XY), SampleStd(member_id=RAW, axes=XY)]
    padded = pad_image(image, padding or Padding(y=(0, 0), x=(0, 0)))
    mean = padded.mean(axis=(1, 2), dtype=np.float64)
    std = np.sqrt([np.mean(np.square(c - np.float32(m), dtype=np.float64)) for c, m in zip(padded, mean)])
    got = image_statistics(image, measures, padding)
    assert np.array_equal(got[measures[0]].data.values[0], mean.astype(np.float32))
    assert np.array_equal(got[measures[1]].data.values[0], std.astype(np.float32))


@pytest.mark.parametrize("weight_format", ["onnx", "torchscript"])
def test_the_unet_predicts_the_same_bits_with_its_processing_in_numpy(weight_format):
    """Whole field in one tile, the model's own tiles, and tiles smaller than the field: the pipeline with the
    processing in numpy and bioimageio.core's own give identical probabilities."""
    needs_shared(UNET)
    settings = ModelSettings(source=str(UNET), weight_format=weight_format)
    image = np.load(UNET.parent / "test_input.npy")[0]
    fields = [image[:, :256, :256], image[:, 100:400, 37:297], np.tile(image, (1, 2, 2))[:, :1024, :1000]]
    pooled = image.reshape(1, -1)[:, ::7]  # dataset normalisation: the run's statistics given as fixed
    rules = {"one tile": (TileRule(tile_px=2272, minimum=8, step=8), None), "the model's own": (None, None),
             "384 px tiles": (TileRule(tile_px=384, minimum=8, step=8), None),
             "dataset normalisation": (TileRule(tile_px=2272, minimum=8, step=8), pooled)}
    for name, (rule, pixels) in rules.items():
        if rule is None and weight_format == "torchscript":
            continue  # the TorchScript U-Net's own 512 tiles on a 1024 field: slow on CPU, the ONNX case covers them
        fast = Predictor(settings, pixels, tile_rule=rule)
        slow = Predictor(settings, pixels, tile_rule=rule, numpy_processing=False)
        try:
            assert fast.twins is not None and slow.twins is None
            for field in fields:
                ours, theirs = fast.predict(field), slow.predict(field)
                assert ours.dtype == theirs.dtype == np.float32
                assert np.array_equal(ours, theirs), (name, field.shape)
        finally:
            fast.close()
            slow.close()

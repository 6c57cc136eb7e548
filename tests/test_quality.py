"""Quality metrics on arrays with known answers."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from snakescope.demo import DemoField, render_field
from snakescope.stages.quality import channel_metrics, power_log_log_slope, robust_background


@pytest.fixture(scope="module")
def sharp():
    return render_field(DemoField("q", 25, seed=11))[0]


def test_blur_lowers_the_focus_score(sharp):
    scores = [channel_metrics(ndi.gaussian_filter(sharp.astype(float), s))["focus_laplacian"] for s in (0, 2, 4, 6)]
    assert scores == sorted(scores, reverse=True) and scores[-1] < 0.6 * scores[0]
    blurred = ndi.gaussian_filter(sharp.astype(float), 4)
    assert channel_metrics(blurred)["focus_normalized_variance"] < channel_metrics(sharp)["focus_normalized_variance"]


def test_saturation_is_measured(sharp):
    clipped = np.clip(sharp.astype(np.int64) * 8, 0, 4095).astype(np.uint16)
    assert channel_metrics(clipped)["percent_saturated"] > 2.0
    assert channel_metrics(sharp)["percent_saturated"] < 0.1


def test_background_noise_and_snr_on_known_noise():
    rng = np.random.default_rng(1)
    image = 200 + rng.normal(0, 10, (256, 256))
    image[100:140, 100:140] += 300
    level, sigma = robust_background(image)
    assert level == pytest.approx(200, abs=1.5) and sigma == pytest.approx(10, rel=0.1)
    m = channel_metrics(image)
    assert m["foreground_fraction"] == pytest.approx(40 * 40 / 256**2, rel=0.25)  # smoothing widens the edge a little
    empty = channel_metrics(200 + rng.normal(0, 10, (256, 256)))
    assert empty["foreground_fraction"] < 0.001


def test_power_spectrum_slope_of_white_noise_is_flat():
    rng = np.random.default_rng(2)
    assert abs(power_log_log_slope(rng.normal(size=(128, 128)))) < 0.2
    smooth = ndi.gaussian_filter(rng.normal(size=(128, 128)), 3)
    assert power_log_log_slope(smooth) < -2


def test_a_few_nan_pixels_do_not_empty_a_real_field(tmp_path, unet_model):
    """A real BBBC039 field as float32 with 0.1 % NaN pixels: finite metrics, not 'empty', and the same nuclei as
    the clean field through the real U-Net and post-processing."""
    import tifffile

    from conftest import FORMATS, needs_shared
    from snakescope.stages.acquisition import import_batch
    from snakescope.core.settings import ImportSettings
    from snakescope.stages.inference import check_model, predict_batch
    from snakescope.core.settings import ModelSettings
    from snakescope.core.inputs import Source
    from snakescope.stages.quality import quality_batch
    from snakescope.core.records import read_json, write_json
    from snakescope.stages.segmentation import postprocess_batch
    from snakescope.core.settings import PostprocessSettings

    images = FORMATS.parent / "nuclei" / "bbbc039" / "images"
    needs_shared(images)
    clean = tifffile.imread(next(iter(sorted(images.glob("*.tif"))))).astype(np.float32)
    holed = clean.copy()
    holed.flat[np.random.default_rng(0).choice(holed.size, holed.size // 1000, replace=False)] = np.nan
    sources = []
    for name, image in (("clean", clean), ("holed", holed)):
        tifffile.imwrite(tmp_path / f"{name}.ome.tif", image[None], ome=True,
                         metadata={"axes": "CYX", "PhysicalSizeX": 0.645, "PhysicalSizeY": 0.645, "Channel": {"Name": ["DNA"]}})
        sources.append(Source(name, str(tmp_path / f"{name}.ome.tif")))
    import_batch("b0000", sources, ImportSettings(), tmp_path / "import")
    quality = quality_batch(tmp_path / "import" / "manifest.json", tmp_path / "quality.json")["metrics"]
    assert quality["holed"]["DNA"]["percent_non_finite"] == pytest.approx(0.1, abs=0.01)
    for metric in ("snr", "blur", "foreground_fraction"):
        assert np.isfinite(quality["holed"]["DNA"][metric])
        assert quality["holed"]["DNA"][metric] == pytest.approx(quality["clean"]["DNA"][metric], rel=0.05), metric
    settings = ModelSettings(source=str(unet_model), channels=("DNA",))
    write_json(tmp_path / "check.json", check_model(settings, tmp_path / "cache"))
    predict_batch(tmp_path / "import" / "manifest.json", settings, tmp_path / "check.json", tmp_path / "inference")
    postprocess_batch(tmp_path / "import" / "manifest.json", tmp_path / "inference" / "manifest.json", PostprocessSettings(),
                      ("DNA",), tmp_path / "segmentation")
    counts = {uid: s["object_count"] for uid, s in read_json(tmp_path / "segmentation" / "summary.json")["summaries"].items()}
    assert counts["clean"] > 50 and abs(counts["holed"] - counts["clean"]) <= 0.03 * counts["clean"], counts


def _reference_slope(image):
    """The full-plane radially averaged power spectrum slope (the definition the blockwise code must keep)."""
    img = image.astype(np.float64) - image.mean()
    h, w = img.shape
    power = np.abs(np.fft.fftshift(np.fft.fft2(img))) ** 2
    yy, xx = np.indices(power.shape)
    radius = np.hypot(yy - h // 2, xx - w // 2).astype(int)
    radial = np.bincount(radius.ravel(), power.ravel()) / np.maximum(np.bincount(radius.ravel()), 1)
    freqs = np.arange(1, min(h, w) // 2)
    keep = radial[freqs] > 0
    return float(np.polyfit(np.log(freqs[keep]), np.log(radial[freqs][keep]), 1)[0])


@pytest.mark.parametrize("shape", [(64, 64), (65, 80), (1100, 700), (700, 1101)])
def test_blockwise_metrics_equal_the_whole_image_definitions(shape):
    """Power spectrum slope, blur and focus made a block of rows at a time (bounded memory on large fields) give
    the whole-image values: the full-plane spectrum, skimage's blur_effect, the Laplacian over all foreground."""
    from scipy import ndimage as ndi
    from skimage.measure import blur_effect

    from snakescope.stages.quality import blur_score, channel_metrics, power_log_log_slope

    rng = np.random.default_rng(1)
    image = ndi.gaussian_filter(rng.poisson(50, shape).astype(float), 2) + rng.normal(0, 1, shape)
    image[shape[0] // 3: shape[0] // 3 + 20, 10:40] += 300  # a bright object across a block border
    assert power_log_log_slope(image) == pytest.approx(_reference_slope(image), rel=1e-9)
    size = int(min(11, min(shape) // 2))
    assert blur_score(image) == pytest.approx(blur_effect(image, h_size=size), rel=1e-9)
    from snakescope.stages.quality import pixel_noise, robust_background

    smooth = ndi.gaussian_filter(image, 1.0)
    background, smooth_noise = robust_background(smooth)
    foreground = smooth > background + 5.0 * max(smooth_noise, 0.28 * pixel_noise(image))
    contrast = max(float(np.percentile(smooth[foreground], 90)) - background, smooth_noise)
    expected = np.sqrt(np.mean(ndi.laplace(smooth)[foreground] ** 2)) / contrast
    assert channel_metrics(image)["focus_laplacian"] == pytest.approx(expected, rel=1e-9)


EXACT_BY_STRIPS = ("mean", "std", "min", "max", "median", "p01", "p99", "focus_normalized_variance", "blur",
                   "percent_saturated", "percent_minimal", "percent_non_finite", "noise")


@pytest.mark.parametrize("kind", ["uint16", "float32 with NaN"])
def test_large_planes_measured_by_strips_agree_with_the_whole_plane(tmp_path, monkeypatch, kind):
    """Real BBBC039 nuclei (2 x 2 fields), measured whole and in strips of 71 rows: integer images exact where
    histograms are exact, the rest within the histograms' precision; the slope from tiles close to the whole's."""
    import tifffile

    from snakescope.stages import quality
    from snakescope.core.images import write_ome_tiff
    from snakescope.core.blocks import PlaneReader

    from conftest import SHARED

    fields = [tifffile.imread(p) for p in sorted((SHARED / "data" / "nuclei" / "bbbc039" / "images").glob("*.tif"))[:4]]
    image = np.concatenate([np.concatenate(fields[:2], 1), np.concatenate(fields[2:], 1)], 0)
    if kind != "uint16":
        image = image.astype(np.float32) / 7
        image[100:103, 200:260] = np.nan
    write_ome_tiff(tmp_path / "plane.ome.tif", image[None], ["DAPI"], {})
    monkeypatch.setattr(quality, "STRIP_PIXELS", 71 * image.shape[1])
    whole = channel_metrics(image)
    with PlaneReader(tmp_path / "plane.ome.tif") as reader:
        strips = quality.channel_metrics_by_strips(reader, 0)
    assert whole.keys() == strips.keys()
    for key, value in whole.items():
        if key == "power_log_log_slope":
            assert strips[key] == pytest.approx(value, abs=0.1)
        elif key in EXACT_BY_STRIPS and kind == "uint16":
            assert strips[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
        else:
            assert strips[key] == pytest.approx(value, rel=3e-3, abs=1e-9), key
    assert whole["percent_non_finite"] > 0 or kind == "uint16"


def test_snr_does_not_depend_on_how_the_same_pixels_are_stored(tmp_path, monkeypatch):
    """A real 8-bit DSB2018 field whose noise is below one grey level (its noise is the floor) stored four ways
    users meet: as it is, as floats in 0..1, shifted into 16 bits (x16, as 12-bit cameras write) and with a camera
    offset. The floor is the data's own quantisation step, so SNR and the foreground are the same in all four,
    whole and measured by strips (it was 27 for the original and 290,000 for the floats, 250 for x16)."""
    import tifffile

    from snakescope.stages import quality
    from snakescope.core.images import write_ome_tiff
    from snakescope.core.blocks import PlaneReader

    from conftest import SHARED, needs_shared

    folder = SHARED / "data" / "nuclei" / "dsb2018" / "images"
    needs_shared(folder)
    original = tifffile.imread(next(folder.glob("29ea4f6eb4545f43*.tif")))
    assert original.dtype == np.uint8
    stored = {"uint8": original, "float 0..1": original.astype(np.float32) / 255,
              "uint16 x16": original.astype(np.uint16) * 16, "uint16 + 1000": original.astype(np.uint16) + 1000}
    metrics = {name: channel_metrics(image) for name, image in stored.items()}
    reference = metrics["uint8"]
    assert reference["noise"] == 1.0  # at the floor: the case this test is about
    for name, m in metrics.items():
        assert m["snr"] == pytest.approx(reference["snr"], rel=1e-6), name
        assert m["foreground_fraction"] == pytest.approx(reference["foreground_fraction"], abs=1e-9), name
    assert metrics["float 0..1"]["noise"] == pytest.approx(1 / 255)
    assert metrics["uint16 x16"]["noise"] == 16.0
    monkeypatch.setattr(quality, "STRIP_PIXELS", 50 * original.shape[1])
    for name in ("float 0..1", "uint16 x16"):
        path = tmp_path / f"{name.split()[0]}{name.split()[-1]}.ome.tif"
        write_ome_tiff(path, stored[name][None], ["nuclei"], {})
        with PlaneReader(path) as reader:
            strips = quality.channel_metrics_by_strips(reader, 0)
        assert strips["noise"] == pytest.approx(metrics[name]["noise"], rel=1e-6), name
        assert strips["snr"] == pytest.approx(reference["snr"], rel=3e-3), name

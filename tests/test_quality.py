"""Quality metrics on arrays with known answers."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from snakescope.demo import DemoField, render_field
from snakescope.quality import channel_metrics, power_log_log_slope, robust_background


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

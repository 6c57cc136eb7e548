"""Order statistics from one sort equal numpy's medians on the values themselves, to the last bit."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from snakescope.core.orderstats import SortedValues
from snakescope.stages.quality import robust_background


def clipped_by_partitions(image: np.ndarray, iterations: int = 5, clip: float = 3.0) -> tuple[float, float]:
    """The sigma clipping robust_background does, with a fresh np.median of the kept pixels at every step."""
    values = np.asarray(image, np.float64).ravel()
    level = float(np.median(values))
    sigma = 1.4826 * float(np.median(np.abs(values - level)))
    previous = values.size
    for _ in range(iterations):
        kept = values[values <= level + clip * max(sigma, 1e-12)]
        if kept.size < 16 or kept.size == previous:
            break
        previous = kept.size
        level = float(np.median(kept))
        sigma = 1.4826 * float(np.median(np.abs(kept - level)))
    return level, max(sigma, float(np.finfo(np.float32).eps))


@pytest.mark.parametrize("values", [
    np.random.default_rng(0).normal(100, 7, 10_001),
    np.random.default_rng(1).integers(0, 12, 4_000).astype(float),  # many ties
    np.array([3.0]),
    np.array([1.0, 2.0]),
    np.linspace(-1e6, 1e6, 257) ** 3,
])
def test_medians_and_deviations_of_every_prefix_equal_numpys(values):
    sorted_values = SortedValues(values)
    reference = np.sort(values)
    for n in sorted({1, 2, 3, values.size // 3, values.size // 2, values.size} - {0}):
        n = min(n, values.size)
        assert sorted_values.median(n) == np.median(reference[:n])
        for centre in (sorted_values.median(n), reference[0] - 5.5, reference[n - 1] + 0.25, float(reference[(n - 1) // 3]) + 0.5):
            assert sorted_values.median_abs_deviation(centre, n) == np.median(np.abs(reference[:n] - centre))


def test_count_at_most_is_the_prefix_of_values_at_or_below_a_cut():
    values = SortedValues(np.array([5.0, 1.0, 3.0, 3.0, 9.0]))
    assert [values.count_at_most(c) for c in (0.0, 1.0, 3.0, 4.0, 9.0)] == [0, 1, 3, 3, 5]


def test_robust_background_equals_clipping_by_partitions_on_real_fields():
    import tifffile

    from conftest import SHARED, needs_shared

    folder = SHARED / "data" / "nuclei"
    needs_shared(folder)
    paths = sorted(folder.glob("*/images/*.tif"))
    assert paths
    for path in paths[::3]:
        image = np.asarray(tifffile.imread(path), np.float64)
        image = image[..., 0] if image.ndim == 3 else image
        for values in (image, ndi.gaussian_filter(image, 1.0)):  # as pixels, and smoothed as channel_metrics gives it
            assert robust_background(values) == clipped_by_partitions(values), path.name


def test_background_noise_of_float_pixels_equals_numpys_median_and_mad():
    import tifffile

    from conftest import SHARED, needs_shared
    from snakescope.methods.instances import background_noise, grown_by_2, smoothed

    folder = SHARED / "data" / "nuclei" / "bbbc039"
    needs_shared(folder)
    for path in sorted((folder / "images").glob("*.tif"))[:3]:
        values = smoothed(tifffile.imread(path))
        foreground = grown_by_2(tifffile.imread(folder / "masks" / path.name) > 0)
        outside = values[~foreground]
        level = float(np.median(outside))
        assert background_noise(values, foreground) == (level, 1.4826 * float(np.median(np.abs(outside - level))))


def test_label_percentiles_equal_a_percentile_per_object_on_real_nuclei():
    from conftest import real_nuclei
    from snakescope.core.orderstats import label_percentiles
    from snakescope.methods.instances import smoothed

    for name, labels, image in real_nuclei(2):
        values = smoothed(image)
        n = int(labels.max()) + 3  # labels with no pixel take the default
        ids = np.arange(1, n + 1)
        for q in (90, 50, 0, 100, 37.5):
            theirs = np.asarray(ndi.labeled_comprehension(values, labels, ids, lambda v: np.percentile(v, q), float, -7.0))
            assert np.array_equal(label_percentiles(values, labels, n=n, q=q, default=-7.0), theirs), (name, q)
    tiny = np.array([[1, 0, 2, 2], [3, 3, 3, 0]])
    expected = [np.percentile([0.0], 90), np.percentile([2.0, 3.0], 90), np.percentile([4.0, 5.0, 6.0], 90), 0.5]
    assert np.array_equal(label_percentiles(np.arange(8.0), tiny, n=4, q=90, default=0.5), expected)


def test_pixel_noise_equals_the_mad_of_neighbour_differences_by_partitions():
    import tifffile

    from conftest import SHARED, needs_shared
    from snakescope.stages.quality import noise_floor, pixel_noise, smallest_step

    folder = SHARED / "data" / "nuclei"
    needs_shared(folder)
    for path in sorted(folder.glob("*/images/*.tif"))[::4]:
        image = tifffile.imread(path)
        image = image[..., 0] if image.ndim == 3 else image
        for pixels in (image, image.astype(np.float32) * 0.37):
            diffs = np.diff(pixels.astype(np.float64), axis=-1).ravel()
            centre = np.median(diffs)
            theirs = float(1.4826 * np.median(np.abs(diffs - centre)) / np.sqrt(2))
            floor = noise_floor(smallest_step(diffs), np.issubdtype(pixels.dtype, np.integer))
            assert pixel_noise(pixels) == max(theirs, floor), path.name

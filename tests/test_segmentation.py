"""Post-processing and measurements with known answers."""

import numpy as np
import pytest

from snakescope.demo import DemoField, render_field
from snakescope.methods.instances import instance_labels
from snakescope.methods.measurements import measure_objects, segment_unit, summarize_objects
from snakescope.core.settings import PostprocessSettings


def disk(shape, centre, radius):
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def nuclei_image(shape, centres, radius, contrast=100.0, noise=5.0, seed=0):
    """Touching bright disks on a noisy background, and their probability map (the disks)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, bool)
    for c in centres:
        mask |= disk(shape, c, radius)
    yy, xx = np.indices(shape)
    image = 100 + rng.normal(0, noise, shape)
    for c in centres:  # brighter in the middle, as stained nuclei are
        image += contrast * np.clip(1 - ((yy - c[0]) ** 2 + (xx - c[1]) ** 2) / radius**2, 0, None) ** 0.5
    return mask.astype(np.float32), image.astype(np.float32)


@pytest.mark.parametrize("radius", [5, 15, 40])
def test_touching_nuclei_split_at_any_scale_with_the_same_defaults(radius):
    """No absolute length: the same defaults split touching pairs of small and of large nuclei, calibrated or not."""
    step = int(1.7 * radius)
    centres = [(3 * radius, 3 * radius), (3 * radius, 3 * radius + step), (8 * radius, 4 * radius)]
    prob, image = nuclei_image((11 * radius, 8 * radius), centres, radius)
    for pixel in [(0.5, 0.5), None]:
        labels, info = instance_labels(prob, image, pixel, PostprocessSettings())
        assert labels.max() == 3, (radius, pixel, info)
        assert info["typical_diameter_px"] == pytest.approx(2 * radius, rel=0.15)
    merged, _ = instance_labels(prob, image, (0.5, 0.5), PostprocessSettings(split_touching=False))
    assert merged.max() == 2


def test_faint_cytoplasm_beside_bright_nuclei_is_not_a_nucleus():
    """The model outlines a faint cell body (2 noise SDs, large: its integrated SNR is high) beside bright nuclei."""
    centres = [(30, 30), (30, 90), (90, 30)]
    prob, image = nuclei_image((128, 128), centres, 10, contrast=200.0, noise=5.0)
    body = disk((128, 128), (95, 95), 18)
    image[body] += 10.0
    prob[body] = 1.0
    labels, info = instance_labels(prob, image, None, PostprocessSettings())
    assert labels.max() == 3 and labels[95, 95] == 0 and info["removed_low_contrast"] == 1
    labels, _ = instance_labels(prob, image, None, PostprocessSettings(min_relative_contrast=0))
    assert labels.max() == 4 and labels[95, 95] > 0


def test_a_fixed_nucleus_diameter_overrides_the_estimate():
    prob, image = nuclei_image((120, 120), [(40, 40), (40, 66)], 15)
    labels, info = instance_labels(prob, image, (0.5, 0.5), PostprocessSettings(nucleus_diameter_um=15.0))
    assert info["scale_source"].startswith("config") and info["typical_diameter_px"] == pytest.approx(30)
    assert labels.max() == 2


def test_noise_objects_are_removed_dim_nuclei_kept():
    rng = np.random.default_rng(3)
    noise = (100 + rng.normal(0, 5, (128, 128))).astype(np.float32)
    specks = np.zeros((128, 128), np.float32)
    specks[10:13, 10:13] = specks[50:54, 80:83] = specks[90:92, 30:33] = 1  # what a normalising model finds in noise
    labels, info = instance_labels(specks, noise, None, PostprocessSettings())
    assert labels.max() == 0 and info["removed_low_contrast"] + info["removed_small"] >= 1
    prob, dim = nuclei_image((128, 128), [(40, 40), (90, 90)], 12, contrast=8.0, noise=5.0)  # 1.6 noise SDs
    labels, _ = instance_labels(prob, dim, None, PostprocessSettings())
    assert labels.max() == 2


def test_known_count_recovered_from_truth_probability():
    image, truth = render_field(DemoField("s", 30, touching_pairs=4, seed=5))
    labels, _ = instance_labels((truth > 0).astype(np.float32), image.astype(np.float32), (0.65, 0.65), PostprocessSettings())
    assert abs(int(labels.max()) - int(truth.max())) <= 2


def test_uncalibrated_units_are_measured_in_pixels_only():
    labels = disk((60, 60), (30, 30), 10).astype(np.int32)
    (obj,) = measure_objects(labels, np.ones((60, 60)), None)
    assert obj["area_px"] == pytest.approx(np.pi * 100, rel=0.03) and obj["equivalent_diameter_px"] == pytest.approx(20, rel=0.02)
    assert obj["area_um2"] is None and obj["equivalent_diameter_um"] is None
    summary = summarize_objects([obj], (60, 60), None)
    assert summary["length_unit"] == "px" and summary["diameter_um_median"] is None and summary["density_per_mm2"] is None
    assert summary["diameter_px_median"] == pytest.approx(20, rel=0.02)


@pytest.mark.parametrize("pixel", [0.5, 1.0])
def test_physical_units_follow_pixel_size(pixel):
    radius_px = 10
    labels = disk((60, 60), (30, 30), radius_px).astype(np.int32)
    (obj,) = measure_objects(labels, np.ones((60, 60)), (pixel, pixel))
    assert obj["area_um2"] == pytest.approx(np.pi * (radius_px * pixel) ** 2, rel=0.03)
    assert obj["equivalent_diameter_um"] == pytest.approx(2 * radius_px * pixel, rel=0.02)
    summary = summarize_objects([obj], (60, 60), (pixel, pixel))
    assert summary["density_per_mm2"] == pytest.approx(1 / (3600 * pixel**2 / 1e6))


def test_small_objects_removed_and_empty_probability_gives_no_objects():
    prob = np.zeros((50, 50), np.float32)
    prob[5:7, 5:7] = 1  # 4 px = 1 µm² at 0.5 µm
    prob[20:40, 20:40] = 1
    labels, objects, summary = segment_unit(prob, prob * 1000, (0.5, 0.5), PostprocessSettings(min_object_area_um2=5))
    assert summary["object_count"] == 1 and objects[0]["area_um2"] == pytest.approx(100)
    labels, objects, summary = segment_unit(np.zeros((50, 50), np.float32), prob * 1000, (0.5, 0.5), PostprocessSettings())
    assert summary["object_count"] == 0 and summary["diameter_um_median"] is None


def test_object_f1_counts_matches_at_iou_half():
    from snakescope.methods.measurements import object_f1

    truth = np.zeros((40, 40), int)
    truth[0:10, 0:10], truth[20:30, 20:30] = 1, 2
    pred = np.zeros_like(truth)
    pred[0:10, 0:10] = 5            # exact
    pred[20:30, 20:24] = 6          # IoU 0.4: no match
    pred[35:38, 35:38] = 7          # false positive
    scores = object_f1(pred, truth)
    assert scores["tp"] == 1 and scores["predicted"] == 3 and scores["true"] == 2
    assert scores["f1"] == pytest.approx(2 / 5)
    assert object_f1(truth, truth)["f1"] == 1.0


def test_tissue_taken_for_one_nucleus_is_segmented_into_the_nuclei_brighter_than_it():
    """A model that calls a whole embryo foreground is still surest about some nuclei in it (real DSB2018 embryos);
    the nuclei are the blobs brighter than the tissue around them, also those the model is less sure of."""
    shape = (200, 300)
    tissue = disk(shape, (100, 150), 90)
    prob = np.where(tissue, 0.95, 0.0).astype(np.float32)
    centres = [(100 + dy, 150 + dx) for dy in range(-60, 61, 20) for dx in range(-60, 61, 20)]
    nuclei = np.zeros(shape, bool)
    for i, c in enumerate(centres):
        nuclei |= disk(shape, c, 5)
        prob[disk(shape, c, 5)] = 0.99995 if i % 2 else 0.97  # half of them dim in the model's eyes
    image = (10 + 50 * tissue + 100 * nuclei).astype(np.float32)
    labels, info = instance_labels(prob, image, None, PostprocessSettings())
    assert info.get("tissue") and labels.max() == len(centres), info
    assert info["typical_diameter_px"] == pytest.approx(10, rel=0.25) and "top-hat" in info["scale_source"]
    # without an intensity image: the cores the model is surest of
    labels, info = instance_labels(prob, None, None, PostprocessSettings())
    assert info.get("tissue") and labels.max() == len(centres) // 2 and "confident cores" in info["scale_source"]
    # separate nuclei whose cores are merely smaller than their outlines are not tissue
    prob, image = nuclei_image((120, 120), [(40, 40), (90, 90)], 15)
    labels, info = instance_labels(np.where(prob > 0, 0.995, 0).astype(np.float32), image, None, PostprocessSettings())
    assert not info.get("tissue") and labels.max() == 2


@pytest.mark.parametrize("settings", [PostprocessSettings(), PostprocessSettings(split_min_distance=0.2, split_smoothing=0.5)])
def test_large_fields_split_one_component_at_a_time_with_the_whole_field_result(demo_batch, monkeypatch, settings):
    """A field above WHOLE_FIELD_PIXELS is split component by component (memory bounded by the largest cluster):
    labels, objects and summary equal the whole-field path's, on a mosaic of predicted demo fields whose nuclei
    touch, cross tile seams and sit at the field's edges."""
    import json

    import snakescope.methods.instances as segmentation

    root = demo_batch["root"]
    predictions = json.loads((root / "inference" / "manifest.json").read_text())["predictions"]
    from snakescope.core.images import read_unit

    units = {u["unit_id"]: u for u in json.loads((root / "import" / "manifest.json").read_text())["units"]}
    ids = sorted(predictions)
    tiles = [(np.load(predictions[uid]["path"]).astype(np.float32), read_unit(units[uid]["image_path"])[0]) for uid in ids]
    rows = [np.hstack([tiles[(r * 3 + c) % len(tiles)][k][:, ::(-1) ** c] for c in range(3)]) for k in (0, 1) for r in range(3)]
    probability, intensity = np.vstack(rows[:3]), np.vstack(rows[3:])
    whole = segment_unit(probability, intensity, (0.65, 0.65), settings, "mosaic")
    monkeypatch.setattr(segmentation, "WHOLE_FIELD_PIXELS", 0)
    by_component = segment_unit(probability, intensity, (0.65, 0.65), settings, "mosaic")
    assert whole[0].max() > 50
    np.testing.assert_array_equal(by_component[0], whole[0])
    assert by_component[1] == whole[1] and by_component[2] == whole[2]


@pytest.mark.parametrize("rows_per_block", [None, 37])
def test_measurements_equal_regionprops_on_real_nuclei(monkeypatch, rows_per_block):
    """The all-objects-at-once measurements give skimage's regionprops values on real touching nuclei, also when
    the sums run over blocks of a few rows (objects cut by block edges)."""
    import tifffile
    from skimage.measure import regionprops

    from conftest import SHARED, needs_shared
    from snakescope.methods import measurements

    if rows_per_block:
        monkeypatch.setattr(measurements, "ROWS_PER_BLOCK", rows_per_block)

    folder = SHARED / "data" / "nuclei"
    needs_shared(folder)
    for name in ("bbbc039", "dsb2018"):
        mask_path = sorted((folder / name / "masks").glob("*.tif"))[1]
        labels = tifffile.imread(mask_path).astype(np.int32)
        image = tifffile.imread(folder / name / "images" / mask_path.name)
        rows = {o["label"]: o for o in measure_objects(labels, image, (0.5, 0.5))}
        regions = regionprops(labels, intensity_image=image)
        assert len(rows) == len(regions) > 10
        for region in regions:
            o = rows[region.label]
            assert o["area_px"] == region.area and o["solidity"] == pytest.approx(region.solidity, rel=1e-12)
            # centroids are rounded to 0.01 px: a sum in another order can round a ...5 the other way
            assert o["centroid_y_px"] == pytest.approx(region.centroid[0], abs=0.005 + 1e-9)
            assert o["centroid_x_px"] == pytest.approx(region.centroid[1], abs=0.005 + 1e-9)
            assert o["perimeter_um"] == pytest.approx(0.5 * region.perimeter, rel=1e-12)
            assert o["major_axis_um"] == pytest.approx(0.5 * region.axis_major_length, rel=1e-9)
            assert o["minor_axis_um"] == pytest.approx(0.5 * region.axis_minor_length, rel=1e-9, abs=1e-9)
            assert o["eccentricity"] == pytest.approx(region.eccentricity, rel=1e-9, abs=1e-9)
            assert o["mean_intensity"] == pytest.approx(region.intensity_mean, rel=1e-12)
            box = region.bbox
            assert o["touches_border"] == (box[0] == 0 or box[1] == 0 or box[2] == labels.shape[0] or box[3] == labels.shape[1])


def test_fill_holes_growing_and_distances_equal_scipys():
    from scipy import ndimage as ndi

    from snakescope.methods.instances import distance_to_background, fill_holes, grown_by_2

    rng = np.random.default_rng(0)
    masks = [ndi.gaussian_filter(rng.random((300, 277)), 2) > q for q in (0.45, 0.5, 0.55)]
    masks += [rng.random((300, 277)) < p for p in (0.05, 0.6, 0.95)]
    masks += [np.zeros((5, 5), bool), np.ones((5, 5), bool), np.ones((1, 7), bool), np.eye(6, dtype=bool)]
    for mask in masks:
        assert np.array_equal(fill_holes(mask), ndi.binary_fill_holes(mask))
        assert np.array_equal(grown_by_2(mask), ndi.binary_dilation(mask, iterations=2))
        distances = distance_to_background(mask)  # float64 holding float32 values
        assert distances.dtype == np.float64
        np.testing.assert_allclose(distances, ndi.distance_transform_edt(mask), rtol=2e-7, atol=0)


def test_label_peaks_equal_scikit_images_on_real_nuclei():
    """The markers' peak search gives peak_local_max's coordinates in its order: on the marker map of real
    nuclei fields (both sets), in one large object with thousands of candidates (the k-d tree path), and on flat
    objects and single pixels (its special cases)."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max

    from conftest import real_nuclei
    from snakescope.methods.instances import _marker_map, label_peaks

    def same(image, labels, min_distance):
        expected = peak_local_max(image, min_distance=min_distance, labels=labels, exclude_border=False)
        got = label_peaks(image, labels, min_distance)
        assert got.shape == expected.shape and np.array_equal(got, expected), (min_distance, len(expected))

    for _, truth, image in real_nuclei(3):
        image = image.astype(np.float32)
        mask = truth > 0
        components, _ = ndi.label(mask)
        norm = np.clip((image - image.min()) / np.ptp(image), 0, 1)
        for min_distance in (1, 2, 4, 7):
            same(_marker_map(mask, norm, 8.0, PostprocessSettings()), components, min_distance)
    rng = np.random.default_rng(0)
    image = ndi.gaussian_filter(rng.random((600, 600)), 2).astype(np.float32)
    labels = np.ones((600, 600), np.int32)
    labels[:, 300], labels[300:, 301:] = 0, 2
    for min_distance in (2, 5):
        same(image, labels, min_distance)
    flat, labels = np.zeros((20, 20), np.float32), np.zeros((20, 20), np.int32)
    labels[2:8, 2:8], labels[12, 12], labels[15:18, 3] = 1, 2, 3
    flat[labels > 0] = 1
    for min_distance in (1, 2):
        same(flat, labels, min_distance)
    same(image[:50, :50].astype(np.float64), np.zeros((50, 50), np.int32), 3)  # no objects


@pytest.mark.parametrize("rows_per_block", [None, 7])
def test_convex_hull_areas_equal_scikit_images_for_every_object_at_once(monkeypatch, rows_per_block):
    """Real ground-truth nuclei (both sets), and random label fields: objects in pieces, labels missing, single
    pixels, single rows and columns, objects on every edge; also with the rows read a few at a time (objects cut
    by block edges)."""
    import tifffile
    from scipy import ndimage as ndi
    from skimage.morphology import convex_hull_image

    from conftest import SHARED, needs_shared
    from snakescope.methods import hull
    from snakescope.methods.hull import convex_areas

    if rows_per_block:
        monkeypatch.setattr(hull, "ROWS_PER_BLOCK", rows_per_block)

    def theirs(labels):
        out = np.zeros(int(labels.max()) + 1, np.int64)
        for label, box in enumerate(ndi.find_objects(labels), start=1):
            if box is not None:
                out[label] = np.count_nonzero(convex_hull_image(labels[box] == label))
        return out

    folder = SHARED / "data" / "nuclei"
    needs_shared(folder)
    fields = [tifffile.imread(p).astype(np.int32) for name in ("bbbc039", "dsb2018")
              for p in sorted((folder / name / "masks").glob("*.tif"))[:3]]
    rng = np.random.default_rng(3)
    for _ in range(200):
        h, w = rng.integers(1, 30, 2)
        fields.append((rng.integers(0, rng.integers(2, 7), (h, w)) * (rng.random((h, w)) < rng.random())).astype(np.int32))
    fields.append(np.zeros((4, 4), np.int32))
    for labels in fields:
        n = int(labels.max())
        assert np.array_equal(convex_areas(labels, n), theirs(labels) if n else np.zeros(1, np.int64))


def test_background_of_integer_pixels_is_counted_to_numpys_median_and_mad():
    """Grey levels counted (no sort) give the level and noise np.median gives on the float copy, bit for bit, on real
    nuclei fields of both sets (8- and 16-bit), as signed pixels too, with and without objects masked out."""
    import tifffile

    from conftest import SHARED, needs_shared
    from snakescope.methods.instances import background_noise

    def sorted_median(values):
        values = values.astype(np.float64)
        level = float(np.median(values))
        return level, 1.4826 * float(np.median(np.abs(values - level)))

    folder = SHARED / "data" / "nuclei"
    needs_shared(folder)
    checked = 0
    for name in ("bbbc039", "dsb2018"):
        for path in sorted((folder / name / "images").glob("*.tif"))[:6]:
            image = tifffile.imread(path)
            image = image if image.ndim == 2 else image[..., 0]
            for pixels in (image, image.astype(np.int16)):
                for foreground in (None, pixels > np.percentile(pixels, 60)):
                    level, noise = sorted_median(pixels.ravel() if foreground is None else pixels[~foreground])
                    if noise > 0:  # (a flat background falls back to the SD, whose sum order differs in the last bit)
                        assert background_noise(pixels, foreground) == (level, noise)
                        checked += 1
    assert checked >= 30


def test_small_components_are_removed_as_labelling_what_is_left_numbers_the_rest():
    """split_objects' components: those of at least min_px pixels, numbered as ndi.label numbers the mask after
    scikit-image's remove_small_objects (real ground-truth nuclei, with pixels knocked out to make small pieces)."""
    import dataclasses

    import tifffile
    from scipy import ndimage as ndi
    from skimage.morphology import remove_small_objects

    from conftest import SHARED, needs_shared
    from snakescope.methods.instances import foreground, split_objects

    folder = SHARED / "data" / "nuclei"
    needs_shared(folder)
    settings = dataclasses.replace(PostprocessSettings(), split_touching=False)
    rng = np.random.default_rng(5)
    checked = 0
    for name in ("bbbc039", "dsb2018"):
        for path in sorted((folder / name / "masks").glob("*.tif"))[:4]:
            probability = ((tifffile.imread(path) > 0) & (rng.random(tifffile.imread(path).shape) > 0.2)).astype(np.float32)
            labels, components, min_px, info = split_objects(probability, None, (0.5, 0.5), settings)
            assert min_px > 1
            theirs, n = ndi.label(remove_small_objects(foreground(probability, settings), max_size=min_px - 1))
            assert np.array_equal(components, theirs) and info["removed_small"] > 0
            checked += 1
    assert checked == 8


def test_a_helper_thread_gives_the_same_labels_and_measurements_on_real_nuclei(monkeypatch):
    """Watch mode's post-processing hands the outline smoothing, the flood of the lower half of the
    objects, the outlines' background level, the channel means and the intensity sums to a second thread; what
    comes out is what one thread makes (both sets, two split settings)."""
    from concurrent.futures import ThreadPoolExecutor

    from scipy import ndimage as ndi

    from conftest import real_nuclei
    from snakescope.methods import instances

    one_flood = instances._flood
    whole_floods = []
    monkeypatch.setattr(instances, "_flood", lambda *a, **k: whole_floods.append(1) or one_flood(*a, **k))
    checked = 0
    with ThreadPoolExecutor(max_workers=1) as helper:
        for name, truth, image in real_nuclei(3):
            probability = ndi.gaussian_filter((truth > 0).astype(np.float32), 2.0)
            for settings in (PostprocessSettings(), PostprocessSettings(split_min_distance=0.2, split_smoothing=0.5)):
                channels = (np.stack([image, image[::-1]]), ["DNA", "flipped"])
                alone = segment_unit(probability, image, (0.5, 0.5), settings, name, channels=channels)
                floods = len(whole_floods)
                helped = segment_unit(probability, image, (0.5, 0.5), settings, name, channels=channels, helper=helper)
                assert len(whole_floods) == floods  # the halves, not the fallback to one flood
                np.testing.assert_array_equal(helped[0], alone[0])
                assert helped[1] == alone[1] and helped[2] == alone[2]
                checked += len(alone[1]) > 10 and alone[1][0]["mean_intensity_flipped"] is not None
    assert checked == 12


def test_halves_fall_back_to_one_flood_when_two_markers_of_an_object_tie():
    """Two peaks of one object at exactly the same value: their order in the flood would rest on the queue's
    layout, so the helper's halves are not used and the labels are one flood's."""
    from concurrent.futures import ThreadPoolExecutor

    from snakescope.methods.instances import _flood, _flood_in_halves

    yy, xx = np.indices((40, 60))

    def cone(y, x, top):
        return top - np.hypot(yy - y, xx - x) / 100

    components = np.zeros((40, 60), np.int32)
    components[5:15, 5:55], components[25:35, 10:30] = 1, 2

    def marker_map(second_peak):  # object 1 with two peaks, object 2 with one
        values = np.where(components == 1, np.maximum(cone(10, 15, 1.0), cone(10, 45, second_peak)), cone(30, 20, 0.9))
        return np.where(components > 0, values, 0)

    with ThreadPoolExecutor(max_workers=1) as helper:
        assert _flood_in_halves(marker_map(1.0), components, 3, helper) is None
        halves = _flood_in_halves(marker_map(0.95), components, 3, helper)
    assert halves is not None and halves.max() == 3
    np.testing.assert_array_equal(halves, _flood(marker_map(0.95), components, components > 0, 3, 0)[0])


def test_numbering_and_object_contrast_equal_scikit_image_and_scipy_on_real_nuclei():
    """Objects numbered 1..n by a lookup table as relabel_sequential numbers them (gaps, one object, none), and each
    object's contrast from ndi.mean's own sums without its search for the labels present."""
    from scipy import ndimage as ndi
    from skimage.segmentation import relabel_sequential

    from conftest import real_nuclei
    from snakescope.methods.instances import background_noise, grown_by_2, numbered, object_contrast

    for _, truth, image in real_nuclei(3):
        gaps = np.where(truth % 3 == 0, 0, truth * 5)
        for labels in (truth, gaps, (truth == truth.max()).astype(np.int32), np.zeros_like(truth)):
            expected = relabel_sequential(labels)[0]
            assert numbered(labels).dtype == expected.dtype and np.array_equal(numbered(labels), expected)
        for pixels in (image, image.astype(np.float64) / 7):
            level, noise = background_noise(pixels, grown_by_2(gaps > 0))
            ids = np.unique(gaps[gaps > 0])
            theirs = {int(i): (float(m) - level) / noise for i, m in zip(ids, ndi.mean(pixels, gaps, ids))}
            assert object_contrast(gaps, pixels) == theirs and len(theirs) > 10

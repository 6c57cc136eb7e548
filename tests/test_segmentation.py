"""Post-processing and measurements with known answers."""

import numpy as np
import pytest

from snakescope.demo import DemoField, render_field
from snakescope.segmentation import PostprocessSettings, instance_labels, measure_objects, segment_unit, summarize_objects


def disk(shape, centre, radius):
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_touching_disks_are_split_only_when_asked():
    mask = disk((80, 120), (40, 40), 15) | disk((80, 120), (40, 66), 15)
    prob = mask.astype(np.float32)
    split = instance_labels(prob, (0.5, 0.5), PostprocessSettings(split_prominence_um=1.0))
    merged = instance_labels(prob, (0.5, 0.5), PostprocessSettings(split_touching=False))
    assert split.max() == 2 and merged.max() == 1


def test_known_count_recovered_from_truth_probability():
    _, truth = render_field(DemoField("s", 30, touching_pairs=4, seed=5))
    labels = instance_labels((truth > 0).astype(np.float32), (0.65, 0.65), PostprocessSettings())
    assert abs(int(labels.max()) - int(truth.max())) <= 1


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
    labels, objects, summary = segment_unit(prob, prob, (0.5, 0.5), PostprocessSettings(min_object_area_um2=5))
    assert summary["object_count"] == 1 and objects[0]["area_um2"] == pytest.approx(100)
    labels, objects, summary = segment_unit(np.zeros((50, 50), np.float32), prob, (0.5, 0.5), PostprocessSettings())
    assert summary["object_count"] == 0 and summary["diameter_um_median"] is None


def test_object_f1_counts_matches_at_iou_half():
    from snakescope.segmentation import object_f1

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

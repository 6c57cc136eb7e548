"""Per-object measurements in physical units, and one unit's segmentation (labels, rows, summary): what the
segmentation stage, the critique-driven refinement and watch mode record for every object."""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..core.settings import PostprocessSettings
from .instances import calibrated, instance_labels, label_means, object_contrast

ROWS_PER_BLOCK = 512  # rows summed at a time: the full-size temporaries are a block's, not the field's


OBJECT_COLUMNS = [
    "unit_id", "label", "centroid_y_px", "centroid_x_px", "area_px", "equivalent_diameter_px",
    "centroid_y_um", "centroid_x_um", "area_um2", "equivalent_diameter_um",
    "perimeter_um", "circularity", "eccentricity", "solidity", "major_axis_um", "minor_axis_um",
    "mean_intensity", "contrast_snr", "touches_border",
]


# skimage.measure.perimeter's weights (4-connected border), indexed by 1 + 2 x (border 4-neighbours) + 10 x (border
# diagonal neighbours) of a border pixel: the code its convolution gives that pixel
PERIMETER_WEIGHTS = np.zeros(50)
PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1
PERIMETER_WEIGHTS[[21, 33]] = np.sqrt(2)
PERIMETER_WEIGHTS[[13, 23]] = (1 + np.sqrt(2)) / 2
STRAIGHT = ((-1, 0), (1, 0), (0, -1), (0, 1))
DIAGONAL = ((-1, -1), (-1, 1), (1, -1), (1, 1))


def _shifted(array: np.ndarray, dy: int, dx: int, fill: Any) -> np.ndarray:
    """``array`` moved so that out[y, x] = array[y + dy, x + dx]; ``fill`` beyond the edge."""
    out = np.full_like(array, fill)
    h, w = array.shape
    out[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)] = array[max(0, dy):h - max(0, -dy) or None, max(0, dx):w - max(0, -dx) or None]
    return out


def perimeters(labels: np.ndarray, n: int) -> np.ndarray:
    """Every object's perimeter as ``skimage.measure.perimeter`` gives it on the object alone (4-connected
    border, weighted by how border pixels continue), for all objects in a few passes over blocks of rows.

    A pixel is on an object's border when one of its 4 neighbours is not the object (outside the image counts as
    not); skimage then codes each border pixel by how many of its 4 and diagonal neighbours are border pixels
    of the same object (only those: it works on the object's own mask). A border pixel's code depends on pixels
    at most 2 rows away, so each block is read with 2 rows either side. Equal to skimage's (tested)."""
    total = np.zeros(n + 1)
    h = labels.shape[0]
    for start in range(0, h, ROWS_PER_BLOCK):
        top, stop = max(0, start - 2), min(h, start + ROWS_PER_BLOCK + 2)
        block = labels[top:stop]
        interior = block > 0
        for dy, dx in STRAIGHT:
            interior &= _shifted(block, dy, dx, 0) == block
        border = (block > 0) & ~interior
        own_border = np.where(border, block, 0)
        code = np.ones(block.shape, np.uint8)
        for weight, steps in ((2, STRAIGHT), (10, DIAGONAL)):
            for dy, dx in steps:
                code += np.uint8(weight) * ((_shifted(own_border, dy, dx, 0) == own_border) & border)
        kept = slice(start - top, start - top + min(ROWS_PER_BLOCK, h - start))  # the block's own rows
        border, own_border, code = border[kept], own_border[kept], code[kept]
        total += np.bincount(own_border[border], PERIMETER_WEIGHTS[code[border]], minlength=n + 1)
    return total


def _label_sums(labels: np.ndarray, n: int, intensity: np.ndarray,
                centre: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Per-label sums over blocks of rows (memory follows the block): area, row and column sums and intensity,
    or, given the centroids, the central second moments."""
    w = labels.shape[1]
    keys = ("rr", "cc", "rc") if centre is not None else ("area", "r", "c", "intensity")
    sums = {k: np.zeros(n + 1) for k in keys}
    for start in range(0, labels.shape[0], ROWS_PER_BLOCK):
        block = labels[start:start + ROWS_PER_BLOCK].ravel()
        present = block > 0
        ids = block[present]
        rows, cols = np.divmod(np.flatnonzero(present), w)
        rows += start
        if centre is None:
            values = np.nan_to_num(np.asarray(intensity[start:start + ROWS_PER_BLOCK], np.float64), nan=0.0).ravel()[present]
            for key, weights in (("area", None), ("r", rows), ("c", cols), ("intensity", values)):
                sums[key] += np.bincount(ids, weights, minlength=n + 1)
        else:
            dy, dx = rows - centre[0][ids], cols - centre[1][ids]
            for key, weights in (("rr", dy * dy), ("cc", dx * dx), ("rc", dy * dx)):
                sums[key] += np.bincount(ids, weights, minlength=n + 1)
    return sums


def measure_objects(labels: np.ndarray, intensity: np.ndarray, pixel_size_um: tuple[float, float] | None,
                    unit_id: str = "", offset: tuple[int, int] = (0, 0), field_shape: tuple[int, int] | None = None,
                    occupied: np.ndarray | None = None, *, helper: Executor | None = None) -> list[dict[str, Any]]:
    """Per-object measurements in pixels, and in µm / µm² when the unit is calibrated (else left empty).

    What ``skimage.measure.regionprops`` gives, made for all objects at once (area, centroid, second moments ->
    axes and eccentricity, perimeter, mean intensity: sums per label over blocks of rows, so the extra memory
    follows the block, not the field; the convex hull's area for solidity from :mod:`.hull`). Equal to
    regionprops' values (tested). ``helper``: a thread that makes the intensity and moment sums while this one
    makes the outlines' perimeters and hulls."""
    from .hull import convex_areas

    pixel = calibrated(pixel_size_um)
    py, px = pixel or (np.nan, np.nan)
    scale = float(np.sqrt(py * px))
    h, w = field_shape or labels.shape
    oy, ox = offset
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return []

    def sums() -> tuple[dict[int, float], dict[str, np.ndarray], dict[str, np.ndarray]]:
        first = _label_sums(labels, n, intensity)
        safe = np.maximum(first["area"], 1)
        return object_contrast(labels, intensity, occupied), first, _label_sums(labels, n, intensity,
                                                                                (first["r"] / safe, first["c"] / safe))

    pending = helper.submit(sums) if helper is not None else None
    perimeter = perimeters(labels, n)
    hulls = convex_areas(labels, n)
    contrast, first, second = pending.result() if pending is not None else sums()
    area = first["area"]
    safe = np.maximum(area, 1)
    cy, cx = first["r"] / safe, first["c"] / safe
    mean_intensity = first["intensity"] / safe
    mu_rr, mu_cc, mu_rc = (second[k] / safe for k in ("rr", "cc", "rc"))
    half_sum, root = (mu_rr + mu_cc) / 2, np.sqrt(((mu_rr - mu_cc) / 2) ** 2 + mu_rc**2)
    major, minor = np.clip(half_sum + root, 0, None), np.clip(half_sum - root, 0, None)  # inertia eigenvalues
    rows = []
    for label, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        area_px = float(area[label])
        perimeter_px = float(perimeter[label])
        hull = float(hulls[label])
        minr, minc, maxr, maxc = box[0].start + oy, box[1].start + ox, box[0].stop + oy, box[1].stop + ox
        centroid = (float(cy[label]) + oy, float(cx[label]) + ox)
        axes = (4 * float(np.sqrt(major[label])), 4 * float(np.sqrt(minor[label])))
        um = {
            "centroid_y_um": centroid[0] * py, "centroid_x_um": centroid[1] * px,
            "area_um2": area_px * py * px, "equivalent_diameter_um": float(np.sqrt(4 * area_px / np.pi)) * scale,
            "perimeter_um": perimeter_px * scale, "major_axis_um": axes[0] * scale, "minor_axis_um": axes[1] * scale,
        }
        rows.append({
            "unit_id": unit_id,
            "label": label,
            "centroid_y_px": round(centroid[0], 2),
            "centroid_x_px": round(centroid[1], 2),
            "area_px": area_px,
            "equivalent_diameter_px": float(np.sqrt(4 * area_px / np.pi)),
            **{k: (v if pixel else None) for k, v in um.items()},
            "circularity": float(min(1.0, 4 * np.pi * area_px / perimeter_px**2)) if perimeter_px > 0 else 0.0,
            "eccentricity": float(np.sqrt(1 - minor[label] / major[label])) if major[label] > 0 else 0.0,
            "solidity": area_px / hull if hull else 0.0,
            "mean_intensity": float(mean_intensity[label]),
            "contrast_snr": round(contrast.get(label, float("nan")), 3),
            "touches_border": bool(minr == 0 or minc == 0 or maxr == h or maxc == w),
        })
    return rows


def summarize_objects(objects: list[dict[str, Any]], shape: tuple[int, int], pixel_size_um: tuple[float, float] | None,
                      info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per-image summary: count, density, size distribution (µm when calibrated, always in pixels)."""
    pixel = calibrated(pixel_size_um)
    diam_px = np.array([o["equivalent_diameter_px"] for o in objects], float)
    area_px = np.array([o["area_px"] for o in objects], float)
    solidity = np.array([o["solidity"] for o in objects], float)
    scale = float(np.sqrt(pixel[0] * pixel[1])) if pixel else None
    field_mm2 = shape[0] * shape[1] * pixel[0] * pixel[1] / 1e6 if pixel else None

    def stat(values: np.ndarray, q: float, factor: float | None = 1.0) -> float | None:
        return float(np.percentile(values, q)) * factor if values.size and factor is not None else None

    # a merged object is at least about twice the area of a typical nucleus of this field
    # the lower median: with two objects, one of them a whole-tissue blob, the typical one is the small one
    typical = float(np.percentile(area_px, 50, method="lower")) if area_px.size else 0.0
    return {
        "object_count": len(objects),
        "length_unit": "µm" if pixel else "px",
        "field_area_mm2": field_mm2,
        "density_per_mm2": len(objects) / field_mm2 if field_mm2 else None,
        "diameter_um_median": stat(diam_px, 50, scale),
        "diameter_um_p10": stat(diam_px, 10, scale),
        "diameter_um_p90": stat(diam_px, 90, scale),
        "area_um2_median": stat(area_px, 50, scale**2 if scale else None),
        "area_um2_mean": float(area_px.mean()) * scale**2 if area_px.size and scale else None,
        "diameter_px_median": stat(diam_px, 50),
        "area_px_median": stat(area_px, 50),
        "typical_diameter_px": (info or {}).get("typical_diameter_px"),
        "scale_source": (info or {}).get("scale_source"),
        "solidity_median": stat(solidity, 50),
        "fraction_low_solidity": float(np.mean(solidity < 0.85)) if solidity.size else None,
        "fraction_large": float(np.mean(area_px > 2.0 * typical)) if area_px.size else None,
        "fraction_touching_border": float(np.mean([o["touches_border"] for o in objects])) if objects else None,
        "removed_low_contrast": (info or {}).get("removed_low_contrast", 0),
        **{key: info[key] for key in ("blocks", "left_out_large") if info and key in info},  # large fields
    }


def segment_unit(probability: np.ndarray, intensity: np.ndarray, pixel_size_um: tuple[float, float] | None,
                 settings: PostprocessSettings, unit_id: str = "", measured: np.ndarray | None = None, *,
                 channels: tuple[np.ndarray, list[str]] | None = None, helper: Executor | None = None):
    """Labels, object rows and summary of one unit: segmented on ``intensity`` (the model channel, its background
    flattened), measured on ``measured`` (the channel as imported; ``intensity`` when not given). ``channels``:
    (every channel of the unit, their names), whose means per object are added (:func:`channel_means`).
    ``helper``: a thread for the steps that do not wait for each other, where one field's latency counts (watch
    mode); the same results."""
    labels, info = instance_labels(probability, intensity, pixel_size_um, settings, helper=helper)
    means = helper.submit(channel_means, labels, *channels) if helper is not None and channels is not None else None
    objects = measure_objects(labels, intensity if measured is None else measured, pixel_size_um, unit_id, helper=helper)
    if channels is not None:
        for column, values in (means.result() if means is not None else channel_means(labels, *channels)).items():
            for obj in objects:
                obj[column] = values[obj["label"] - 1]
    return labels, objects, summarize_objects(objects, labels.shape, pixel_size_um, info)


def channel_means(labels: np.ndarray, image: np.ndarray, channel_names: list[str]) -> dict[str, list[float]]:
    """Every channel's mean intensity per object 1..n, all present (column ``mean_intensity_<channel>``, rounded to
    0.001), not only the model's channel."""
    if not labels.any():
        return {}
    return {channel_column(c, name): [round(float(v), 3) for v in label_means(image[c].astype(np.float64), labels)[1]]
            for c, name in enumerate(channel_names)}


def channel_column(index: int, name: str) -> str:
    """The objects table's column of a channel's mean intensity: ``mean_intensity_<channel name as a word>``."""
    import re

    return "mean_intensity_" + (re.sub(r"[^A-Za-z0-9]+", "_", str(name)).strip("_") or f"C{index}")


def object_f1(predicted: np.ndarray, truth: np.ndarray, iou_threshold: float = 0.5) -> dict[str, float]:
    """Object-level precision, recall and F1: a predicted object matches a true one when IoU > threshold.

    With a threshold of 0.5 or more each object can match at most one other, so no assignment step is needed.
    """
    pred, true = predicted.ravel().astype(np.int64), truth.ravel().astype(np.int64)
    n_pred, n_true = len(np.unique(pred[pred > 0])), len(np.unique(true[true > 0]))
    both = (pred > 0) & (true > 0)
    pairs, overlap = np.unique(np.stack([pred[both], true[both]]), axis=1, return_counts=True)
    area_pred = np.bincount(pred)
    area_true = np.bincount(true)
    union = area_pred[pairs[0]] + area_true[pairs[1]] - overlap
    tp = int(np.sum(overlap / union > iou_threshold))
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * tp / (n_pred + n_true) if n_pred + n_true else 1.0
    return {"tp": tp, "predicted": n_pred, "true": n_true, "precision": precision, "recall": recall, "f1": f1}

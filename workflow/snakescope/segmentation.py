"""Stage 4, post-processing: probabilities -> instance labels -> per-object measurements in physical units."""

from __future__ import annotations

import csv
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .configuration import settings_from_section
from .records import Failure, read_json, write_json


@dataclass(frozen=True)
class PostprocessSettings:
    """Config section ``postprocess``; lengths in µm so settings carry across pixel sizes."""

    probability_threshold: float = 0.5
    min_object_area_um2: float = 15.0
    split_touching: bool = True
    split_prominence_um: float = 0.5
    smoothing_sigma_um: float = 0.5
    fill_holes: bool = True
    exclude_border_objects: bool = False

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> "PostprocessSettings":
        return settings_from_section(cls, section)


OBJECT_COLUMNS = [
    "unit_id", "label", "centroid_y_um", "centroid_x_um", "area_um2", "equivalent_diameter_um",
    "perimeter_um", "circularity", "eccentricity", "solidity", "major_axis_um", "minor_axis_um",
    "mean_intensity", "touches_border",
]


def instance_labels(probability: np.ndarray, pixel_size_um: tuple[float, float], settings: PostprocessSettings) -> np.ndarray:
    """Threshold a probability map and split touching objects (distance transform + h-maxima + watershed)."""
    from skimage.morphology import h_maxima, remove_small_objects
    from skimage.segmentation import clear_border, watershed

    py, px = pixel_size_um
    mask = probability >= settings.probability_threshold
    if settings.fill_holes:
        mask = ndi.binary_fill_holes(mask)
    min_px = max(1, int(round(settings.min_object_area_um2 / (py * px))))
    mask = remove_small_objects(mask, max_size=min_px - 1) if min_px > 1 else mask
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    if settings.split_touching:
        distance = ndi.distance_transform_edt(mask, sampling=(py, px))
        if settings.smoothing_sigma_um > 0:
            distance = ndi.gaussian_filter(distance, (settings.smoothing_sigma_um / py, settings.smoothing_sigma_um / px))
        markers, _ = ndi.label(h_maxima(distance, settings.split_prominence_um) & mask)
        labels = watershed(-distance, markers, mask=mask)
        # a component whose maxima were all lost to smoothing keeps one label of its own
        orphans, n_orphans = ndi.label(mask & (labels == 0))
        labels = np.where(orphans > 0, orphans + labels.max(), labels)
    else:
        labels, _ = ndi.label(mask)
    labels = remove_small_objects(labels, max_size=min_px - 1) if min_px > 1 else labels
    if settings.exclude_border_objects:
        labels = clear_border(labels)
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(labels.astype(np.int32))[0]


def measure_objects(labels: np.ndarray, intensity: np.ndarray, pixel_size_um: tuple[float, float], unit_id: str = "") -> list[dict[str, Any]]:
    """Per-object measurements in µm / µm² (perimeter uses the geometric mean pixel size)."""
    from skimage.measure import regionprops

    py, px = pixel_size_um
    scale = float(np.sqrt(py * px))
    h, w = labels.shape
    rows = []
    for region in regionprops(labels, intensity_image=intensity):
        area = float(region.area) * py * px
        perimeter = float(region.perimeter) * scale
        minr, minc, maxr, maxc = region.bbox
        rows.append({
            "unit_id": unit_id,
            "label": int(region.label),
            "centroid_y_um": float(region.centroid[0]) * py,
            "centroid_x_um": float(region.centroid[1]) * px,
            "area_um2": area,
            "equivalent_diameter_um": float(np.sqrt(4 * area / np.pi)),
            "perimeter_um": perimeter,
            "circularity": float(min(1.0, 4 * np.pi * area / perimeter**2)) if perimeter > 0 else 0.0,
            "eccentricity": float(region.eccentricity),
            "solidity": float(region.solidity),
            "major_axis_um": float(region.axis_major_length) * scale,
            "minor_axis_um": float(region.axis_minor_length) * scale,
            "mean_intensity": float(region.intensity_mean),
            "touches_border": bool(minr == 0 or minc == 0 or maxr == h or maxc == w),
        })
    return rows


def summarize_objects(objects: list[dict[str, Any]], shape: tuple[int, int], pixel_size_um: tuple[float, float]) -> dict[str, Any]:
    """Per-image summary: count, density per mm², size distribution."""
    field_mm2 = shape[0] * shape[1] * pixel_size_um[0] * pixel_size_um[1] / 1e6
    diam = np.array([o["equivalent_diameter_um"] for o in objects], float)
    area = np.array([o["area_um2"] for o in objects], float)
    solidity = np.array([o["solidity"] for o in objects], float)

    def stat(values: np.ndarray, q: float) -> float | None:
        return float(np.percentile(values, q)) if values.size else None

    return {
        "object_count": len(objects),
        "field_area_mm2": field_mm2,
        "density_per_mm2": len(objects) / field_mm2 if field_mm2 else None,
        "diameter_um_median": stat(diam, 50),
        "diameter_um_p10": stat(diam, 10),
        "diameter_um_p90": stat(diam, 90),
        "area_um2_median": stat(area, 50),
        "area_um2_mean": float(area.mean()) if area.size else None,
        "solidity_median": stat(solidity, 50),
        "fraction_low_solidity": float(np.mean(solidity < 0.85)) if solidity.size else None,
        "fraction_touching_border": float(np.mean([o["touches_border"] for o in objects])) if objects else None,
    }


def segment_unit(probability: np.ndarray, intensity: np.ndarray, pixel_size_um: tuple[float, float], settings: PostprocessSettings, unit_id: str = ""):
    """Labels, object rows and summary of one unit."""
    labels = instance_labels(probability, pixel_size_um, settings)
    objects = measure_objects(labels, intensity, pixel_size_um, unit_id)
    return labels, objects, summarize_objects(objects, labels.shape, pixel_size_um)


def postprocess_batch(import_manifest: str | Path, inference_manifest: str | Path, settings: PostprocessSettings,
                      channels: tuple[str | int, ...], out_dir: str | Path) -> dict[str, Any]:
    """Segment and measure every predicted unit of a batch; writes labels, overlays, objects.csv, summary."""
    import tifffile

    from .acquisition import read_unit
    from .inference import select_channels
    from .rendering import overlay_png

    imported = read_json(import_manifest)
    predicted = read_json(inference_manifest)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, Any] = {}
    failures: list[dict[str, Any]] = []
    all_objects: list[dict[str, Any]] = []
    for unit in imported["units"]:
        uid = unit["unit_id"]
        if uid not in predicted["predictions"]:
            continue  # its inference failure is already recorded
        try:
            pixel = (float(unit["pixel_size_um"]["y"]), float(unit["pixel_size_um"]["x"]))
            image = select_channels(read_unit(unit["image_path"]), unit["channel_names"], channels)
            probability = np.load(predicted["predictions"][uid]["path"]).astype(np.float32)
            labels, objects, summary = segment_unit(probability, image[0], pixel, settings, uid)
            tifffile.imwrite(out / f"{uid}.labels.tif", labels.astype(np.uint32 if labels.max() > 65535 else np.uint16), compression="zlib")
            (out / f"{uid}.overlay.png").write_bytes(overlay_png(image[0], labels, pixel[1]))
            summaries[uid] = summary
            all_objects.extend(objects)
        except Exception as exc:  # noqa: BLE001
            failure = Failure.from_exception("postprocess", unit["source_path"], exc, unit_id=uid)
            failures.append(failure.__dict__)
            print(f"[postprocess {imported['batch']}] FAILED {uid}: {failure.reason}", file=sys.stderr)
    with open(out / "objects.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=OBJECT_COLUMNS)
        writer.writeheader()
        writer.writerows(all_objects)
    doc = {"batch": imported["batch"], "settings": asdict(settings), "summaries": summaries, "failures": failures}
    write_json(out / "summary.json", doc)
    print(f"[postprocess {imported['batch']}] {len(summaries)} unit(s), {len(all_objects)} object(s)", file=sys.stderr)
    return doc


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

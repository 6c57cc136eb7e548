"""Stage 4, segmentation (rule ``postprocess``): probabilities -> instance labels, overlays and per-object measurements
of every unit of a batch (the method itself is :mod:`.instances`; fields larger than a block go through :mod:`.largefield`)."""

from __future__ import annotations

import csv
import sys
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.images import write_labels
from ..methods.instances import calibrated
from ..methods.measurements import OBJECT_COLUMNS, segment_unit
from ..core.settings import PostprocessSettings
from ..core.records import LABELS_SUFFIX, Failure, read_json, write_json

def is_blocked(unit: dict[str, Any], settings: PostprocessSettings) -> bool:
    """Whether a unit is post-processed block by block (a side longer than ``block_px``)."""
    shape = tuple(unit.get("shape") or ())
    return bool(shape) and max(shape[-2:]) > settings.block_px


def postprocess_one(unit: dict[str, Any], probability_path: str | Path, settings: PostprocessSettings,
                    channels: tuple[str | int, ...], out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Labels (TIFF), overlay (PNG), summary and objects of one predicted unit; raises on failure."""
    if is_blocked(unit, settings):
        from ..methods.largefield import postprocess_large

        uid = unit["unit_id"]
        pixel = calibrated((unit["pixel_size_um"]["y"], unit["pixel_size_um"]["x"]))
        return postprocess_large(unit, probability_path, settings, channels, pixel, out, out / f"{uid}{LABELS_SUFFIX}")
    segmented = segment_one(unit, probability_path, settings, channels)
    segmented.write(out)
    return segmented.summary, segmented.objects


@dataclass
class Segmented:
    """One field's labels and measurements in memory, before its files are written (watch mode writes them
    after the field's action record)."""

    unit: dict[str, Any]
    labels: np.ndarray
    image: np.ndarray  # the model channel
    pixel: tuple[float, float] | None
    summary: dict[str, Any]
    objects: list[dict[str, Any]]

    def write(self, out: Path) -> None:
        """The labels (TIFF) and the overlay (PNG)."""
        from ..core.rendering import overlay_png

        uid = self.unit["unit_id"]
        write_labels(out / f"{uid}{LABELS_SUFFIX}", self.labels, self.unit)
        (out / f"{uid}.overlay.png").write_bytes(overlay_png(self.image, self.labels, self.pixel[1] if self.pixel else None))


def segment_one(unit: dict[str, Any], probability_path: str | Path, settings: PostprocessSettings,
                channels: tuple[str | int, ...], *, helper: Executor | None = None) -> Segmented:
    """:func:`postprocess_one` of a field that fits in memory, without writing its files (``helper``: see
    :func:`..methods.measurements.segment_unit`)."""
    from ..core.images import read_unit
    from ..core.channels import model_channels, select_channels

    pixel = calibrated((unit["pixel_size_um"]["y"], unit["pixel_size_um"]["x"]))
    full = read_unit(unit["image_path"])
    image = select_channels(full, unit["channel_names"], channels)
    probability = np.load(probability_path).astype(np.float32)
    labels, objects, summary = segment_unit(probability, model_channels(full, unit, channels)[0], pixel, settings,
                                            unit["unit_id"], measured=image[0], channels=(full, unit["channel_names"]),
                                            helper=helper)
    return Segmented(unit, labels, image[0], pixel, summary, objects)


class Rows:
    """Rows held in parts (lists or :class:`records.ObjectTable`), iterated as one, as often as needed."""

    def __init__(self) -> None:
        self.parts: list[Any] = []

    def __iter__(self):
        for part in self.parts:
            yield from part

    def __len__(self) -> int:
        return sum(len(part) for part in self.parts)


def write_postprocess_outputs(out: Path, batch: str, settings: PostprocessSettings, summaries: dict[str, Any],
                              failures: list[dict[str, Any]], objects: Any) -> dict[str, Any]:
    """A batch's objects.csv and summary.json."""
    with open(out / "objects.csv", "w", newline="", encoding="utf-8") as handle:
        extra = dict.fromkeys(k for o in objects for k in o if k not in OBJECT_COLUMNS)
        writer = csv.DictWriter(handle, fieldnames=OBJECT_COLUMNS + list(extra), restval="")
        writer.writeheader()
        writer.writerows(objects)
    doc = {"batch": batch, "settings": asdict(settings), "summaries": summaries, "failures": failures}
    write_json(out / "summary.json", doc)
    return doc


def postprocess_batch(import_manifest: str | Path, inference_manifest: str | Path, settings: PostprocessSettings,
                      channels: tuple[str | int, ...], out_dir: str | Path, workers: int = 1) -> dict[str, Any]:
    """Segment and measure every predicted unit of a batch, ``workers`` fields at a time (a large field, which
    works block by block, in this process); writes labels, overlays, objects.csv, summary."""
    from ..core.blocks import is_large
    from ..core.fields import map_fields

    imported = read_json(import_manifest)
    predicted = read_json(inference_manifest)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, Any] = {}
    failures: list[dict[str, Any]] = []
    all_objects = Rows()  # each unit's rows as they came (a large field's as an ObjectTable)
    units = [u for u in imported["units"] if u["unit_id"] in predicted["predictions"]]  # else its inference failed

    def one(unit: dict[str, Any]) -> tuple[Any, Any, dict[str, Any] | None]:
        uid = unit["unit_id"]
        try:
            summary, objects = postprocess_one(unit, predicted["predictions"][uid]["path"], settings, channels, out)
            return summary, objects, None
        except Exception as exc:  # noqa: BLE001
            failure = Failure.from_exception("postprocess", unit["source_path"], exc, unit_id=uid)
            print(f"[postprocess {imported['batch']}] FAILED {uid}: {failure.reason}", file=sys.stderr)
            return None, None, failure.__dict__

    small = [u for u in units if not is_large(u.get("shape"))]
    done = dict(zip([u["unit_id"] for u in small], map_fields(one, small, workers=workers,
                                                              label=f"postprocess {imported['batch']}")))
    for unit in units:  # in the batch's order, whatever the workers
        summary, objects, failure = done[unit["unit_id"]] if unit["unit_id"] in done else one(unit)
        if failure:
            failures.append(failure)
        else:
            summaries[unit["unit_id"]] = summary
            all_objects.parts.append(objects)
    doc = write_postprocess_outputs(out, imported["batch"], settings, summaries, failures, all_objects)
    print(f"[postprocess {imported['batch']}] {len(summaries)} unit(s), {len(all_objects)} object(s)", file=sys.stderr)
    return doc


def run_segmentation(*, imported: str, inference: str, segmentation: str, settings: PostprocessSettings,
                     channels: tuple[str | int, ...], threads: int = 1) -> None:
    """Rule ``postprocess``: labels, overlays and measurements of a batch -> ``segmentation/<batch>/``."""
    from ..core.layout import manifest
    from ..core.progress import stage_progress

    doc = postprocess_batch(manifest(imported), manifest(inference), settings, channels, segmentation, workers=threads)
    stage_progress("segmentation", doc, len(doc["summaries"]))

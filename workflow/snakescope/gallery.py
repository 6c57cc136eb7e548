"""Report gallery images of one batch: a small outlined thumbnail and a two-panel detail view per unit.

Images are WebP (lossy, about a tenth of a PNG's size) as data URIs, so the HTML report stays one
self-contained file. They are rendered from the imported image and the *final* labels (refined by the
review when its critique re-ran post-processing), one job per batch, so the report job only assembles.
"""

from __future__ import annotations

import base64
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .configuration import settings_from_section
from .records import LABELS_SUFFIX, read_json, write_json


@dataclass(frozen=True)
class GallerySettings:
    """Config section ``report`` (the image part): sizes in pixels of the longest side, WebP quality."""

    thumbnail_px: int = 160
    detail_px: int = 384
    image_quality: int = 75

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> "GallerySettings":
        return settings_from_section(cls, section)


def webp_data_uri(rgb: np.ndarray, quality: int) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="WEBP", quality=quality, method=4)
    return "data:image/webp;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def unit_gallery_images(image: np.ndarray, labels: np.ndarray | None, pixel_size_um: float | None,
                        settings: GallerySettings) -> dict[str, str]:
    """Thumbnail (outlines if labels) and detail (raw | outlines) of one 2D image, as WebP data URIs."""
    from .rendering import rgb_panel

    thumb = rgb_panel(image, labels, pixel_size_um, settings.thumbnail_px)
    left = rgb_panel(image, None, pixel_size_um, settings.detail_px)
    right = rgb_panel(image, labels, pixel_size_um, settings.detail_px) if labels is not None else left
    gap = np.full((left.shape[0], 4, 3), 40, np.uint8)
    detail = np.concatenate([left, gap, right], axis=1)
    return {"thumbnail": webp_data_uri(thumb, settings.image_quality), "detail": webp_data_uri(detail, settings.image_quality)}


def final_labels_path(uid: str, segmentation_dir: Path, review_dir: Path) -> Path | None:
    """The review's refined labels when its critique re-ran post-processing, else post-processing's labels."""
    for folder in (review_dir, segmentation_dir):
        path = folder / f"{uid}{LABELS_SUFFIX}"
        if path.is_file():
            return path
    return None


def gallery_batch(import_manifest: str | Path, segmentation_dir: str | Path, review_dir: str | Path,
                  channels: tuple[str | int, ...], settings: GallerySettings, out_json: str | Path) -> dict[str, Any]:
    """Thumbnails and detail views of every imported unit of a batch (units without labels get no outlines)."""
    import tifffile

    from .acquisition import read_unit
    from .inference import select_channels

    imported = read_json(import_manifest)
    segmentation, review = Path(segmentation_dir), Path(review_dir)
    images: dict[str, Any] = {}
    failures: list[dict[str, str]] = []
    for unit in imported["units"]:
        uid = unit["unit_id"]
        try:
            image = select_channels(read_unit(unit["image_path"]), unit["channel_names"], channels)[0]
            from .rendering import scale_bar_um

            labels_path = final_labels_path(uid, segmentation, review)
            labels = tifffile.imread(labels_path) if labels_path else None
            pixel = unit["pixel_size_um"].get("x") or None
            images[uid] = {**unit_gallery_images(image, labels, pixel, settings), "outlines": labels is not None,
                           "scale_bar_um": scale_bar_um(image.shape, pixel, settings.detail_px) if pixel else None}
        except Exception as exc:  # noqa: BLE001 - one unit's rendering must not lose the others
            failures.append({"stage": "gallery", "source_path": unit["source_path"], "sample_id": unit["sample_id"],
                             "unit_id": uid, "reason": f"{type(exc).__name__}: {exc}"})
            print(f"[gallery {imported['batch']}] FAILED {uid}: {exc}", file=sys.stderr)
    doc = {"batch": imported["batch"], "images": images, "failures": failures}
    write_json(out_json, doc)
    size = sum(len(v["thumbnail"]) + len(v["detail"]) for v in images.values())
    print(f"[gallery {imported['batch']}] {len(images)} unit(s), {size / 1024:.0f} KiB of images", file=sys.stderr)
    return doc

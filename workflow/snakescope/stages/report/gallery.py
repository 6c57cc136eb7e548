"""Report gallery images of one batch: a small outlined thumbnail and a two-panel detail view per unit.

Images are WebP (lossy, about a tenth of a PNG's size) as data URIs, so the HTML report stays one
self-contained file. They are rendered from the imported image and the *final* labels (refined by the
review when its critique re-ran post-processing), one job per batch, so the report job only assembles.
"""

from __future__ import annotations

import base64
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ...core.settings import GallerySettings
from ...core.records import read_json, write_json
from ...core.rendering import large_view


def webp_data_uri(rgb: np.ndarray, quality: int) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="WEBP", quality=quality, method=2)
    return "data:image/webp;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def unit_gallery_images(image: np.ndarray, labels: np.ndarray | None, pixel_size_um: float | None,
                        settings: GallerySettings, limits: tuple[float, float] | None = None,
                        edges: np.ndarray | None = None) -> dict[str, str]:
    """Thumbnails (outlines if labels) in the run's shared contrast (``limits``) and in the field's own, and the
    detail view: the raw channel in the shared contrast | the outlines on the field's own contrast; WebP data URIs.
    Without ``limits`` both use the field's own contrast. ``edges``: the outline pixels instead of ``labels``
    (a large field's reduced view)."""
    from skimage.segmentation import find_boundaries

    from ...core.rendering import rgb_panel, stretch_limits

    own_limits = stretch_limits(image)  # the field's own contrast, and its outlines, computed once for all panels
    if edges is None and labels is not None:
        edges = find_boundaries(labels, mode="inner")
    labels = labels if labels is not None else edges
    shared = rgb_panel(image, labels, pixel_size_um, settings.thumbnail_px, limits if limits is not None else own_limits, edges)
    own = rgb_panel(image, labels, pixel_size_um, settings.thumbnail_px, own_limits, edges) if limits is not None else shared
    left = rgb_panel(image, None, pixel_size_um, settings.detail_px, limits if limits is not None else own_limits)
    right = rgb_panel(image, labels, pixel_size_um, settings.detail_px, own_limits, edges)
    gap = np.full((left.shape[0], 4, 3), 40, np.uint8)
    detail = np.concatenate([left, gap, right], axis=1)
    images = {"thumbnail": webp_data_uri(shared, settings.image_quality), "detail": webp_data_uri(detail, settings.image_quality)}
    if limits is not None:
        images["thumbnail_own"] = webp_data_uri(own, settings.image_quality)
    return images


def display_limits(reference: dict[str, Any] | None, channel: str) -> tuple[float, float] | None:
    """The run's shared contrast of a channel (``quality/reference.json``, ``display``), or None."""
    display = ((reference or {}).get("display") or {}).get(channel)
    return (display["low"], display["high"]) if display and display["high"] > display["low"] else None


def gallery_batch(import_manifest: str | Path, final_segmentation: dict[str, Any], channels: tuple[str | int, ...],
                  settings: GallerySettings, out_json: str | Path, reference: str | Path | None = None,
                  workers: int = 1) -> dict[str, Any]:
    """Thumbnails and detail views of every imported unit of a batch, outlined with its final labels
    (``final_segmentation``: the refinement stage's ``segmentation`` of ``final.json``; units without labels get no
    outlines), in the run's shared contrast per channel (``reference``: quality/reference.json) and in each field's own;
    ``workers`` fields at a time."""
    import tifffile

    from ...core.images import read_unit
    from ...core.blocks import is_large
    from ...core.channels import select_channels
    from ...core.fields import by_unit, map_fields
    from ...core.rendering import scale_bar_um
    from ...core.channels import model_channel_name

    imported = read_json(import_manifest)
    run = read_json(reference) if reference else None

    def one(unit: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, str] | None]:
        uid = unit["unit_id"]
        try:
            labels_path = (final_segmentation.get(uid) or {}).get("labels")
            pixel = unit["pixel_size_um"].get("x") or None
            limits = display_limits(run, model_channel_name(unit, channels))
            if is_large(unit.get("shape")):  # a reduced view, read a block at a time
                image, edges, factor = large_view(unit, channels, labels_path, settings.detail_px)
                shape = tuple(unit["shape"][-2:])
                panels = unit_gallery_images(image, None, pixel * factor if pixel else None, settings, limits, edges)
            else:
                image = select_channels(read_unit(unit["image_path"]), unit["channel_names"], channels)[0]
                shape = image.shape
                panels = unit_gallery_images(image, tifffile.imread(labels_path) if labels_path else None, pixel, settings, limits)
            return {**panels, "outlines": labels_path is not None, "contrast": "shared" if limits else "own",
                    "scale_bar_um": scale_bar_um(shape, pixel, settings.detail_px) if pixel else None}, None
        except Exception as exc:  # noqa: BLE001 - one unit's rendering must not lose the others
            print(f"[gallery {imported['batch']}] FAILED {uid}: {exc}", file=sys.stderr)
            return None, {"stage": "gallery", "source_path": unit["source_path"], "sample_id": unit["sample_id"],
                          "unit_id": uid, "reason": f"{type(exc).__name__}: {exc}"}

    images, failures = by_unit(imported["units"], map_fields(one, imported["units"], workers=workers,
                                                             label=f"gallery {imported['batch']}"))
    doc = {"batch": imported["batch"], "images": images, "failures": failures}
    write_json(out_json, doc)
    size = sum(len(v["thumbnail"]) + len(v["detail"]) for v in images.values())
    print(f"[gallery {imported['batch']}] {len(images)} unit(s), {size / 1024:.0f} KiB of images", file=sys.stderr)
    return doc


def run_gallery(*, imported: str, refinement: str, reference: str, gallery: str, settings: GallerySettings,
                channels: tuple[str | int, ...], threads: int = 1) -> None:
    """Rule ``gallery``: a batch's thumbnails and detail views, from the final labels -> ``report/gallery/<batch>.json``."""
    from ...core.layout import manifest

    final = read_json(Path(refinement) / "final.json")["segmentation"]
    gallery_batch(manifest(imported), final, channels, settings, gallery, reference, workers=threads)

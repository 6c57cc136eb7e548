"""First uses paid once, before the work: by the stage host before it forks, by watch mode before the first field.

The first file read through bioio finds and imports its reader plugins (~0.75 s CPU), dask builds its compute
machinery on the first read (~0.7 s), ome-types its binding context, and the image libraries import on their first
call; a process that serves many jobs or fields pays them here once. :func:`freeze_heap` then takes everything the
process holds out of Python's garbage collector: a full collection walks every tracked object (~0.3 s after these
imports, measured), and in a fork it also writes to the inherited pages, which copies them.
"""

from __future__ import annotations

import gc
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


def freeze_heap() -> int:
    """Collect once, then move every object tracked so far out of later collections (``gc.freeze``); returns how
    many. New objects are collected as usual."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def first_reads(folder: Path, settings: Any = None) -> list[dict[str, Any]]:
    """A tiny OME-TIFF and a tiny ImageJ TIFF (the two TIFF readers) through import and quality metrics, written to
    and imported in ``folder``; returns the units (as the stages pass them, dicts)."""
    import numpy as np
    import tifffile

    from .acquisition import ImportSettings, import_one, write_ome_tiff
    from .inputs import Source
    from .quality import quality_one

    field = np.zeros((1, 32, 32), np.uint16)
    field[0, 8:20, 8:20] = 100
    write_ome_tiff(folder / "warm-up.ome.tif", field, ["warm-up"], {"x": 1.0, "y": 1.0})
    tifffile.imwrite(folder / "warm-up.tif", field[0], imagej=True)
    units = []
    for name in ("warm-up.ome.tif", "warm-up.tif"):
        imported, _ = import_one(Source(name, str(folder / name)), settings or ImportSettings(), folder / "import", "[warm-up]")
        units += [asdict(unit) for unit in imported]
    for unit in units:
        quality_one(unit, "warm-up")
    return units


def first_segmentation(image: np.ndarray, settings: Any = None, folder: Path | None = None, gallery: bool = False) -> None:
    """Post-processing of a YX ``image`` (its bright part as the probability), then the overlay renderer, and with
    ``folder`` the labels and overlay writers, with ``gallery`` the report's gallery images."""
    import numpy as np

    from .rendering import overlay_png
    from .segmentation import PostprocessSettings, Segmented, segment_unit

    probability = (image > image.mean()).astype(np.float32)
    with warnings.catch_warnings():  # e.g. scikit-image's about a single object: true of this image, not news
        warnings.simplefilter("ignore")
        labels, objects, summary = segment_unit(probability, image, (1.0, 1.0), settings or PostprocessSettings())
    if folder is not None:  # the writers render the overlay themselves
        unit = {"unit_id": "warm-up", "pixel_size_um": {"y": 1.0, "x": 1.0}, "channel_names": ["warm-up"]}
        Segmented(unit, labels, image, (1.0, 1.0), summary, objects).write(folder)
    else:
        overlay_png(image, labels, 1.0)
    if gallery:
        from .gallery import GallerySettings, unit_gallery_images

        unit_gallery_images(image, labels, 1.0, GallerySettings(), (0.0, float(image.max()) or 1.0))

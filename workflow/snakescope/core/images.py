"""A unit's image files: the OME-TIFF every stage reads and writes (imported units, label images)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

def write_ome_tiff(path: Path, array: np.ndarray | Iterator[np.ndarray], channel_names: list[str],
                   pixel_size_um: dict[str, float | None], shape: tuple[int, ...] | None = None, dtype: Any = None) -> None:
    """Write a CYX array as OME-TIFF with channel names and physical pixel sizes; planes larger than a block
    are tiled (``blocks.TIFF_TILE``) so later stages can read them a block at a time. ``array`` may also be an
    iterator of such tiles (plane by plane, rows of tiles), given the ``shape`` and ``dtype``."""
    import tifffile

    from .blocks import TIFF_TILE

    meta: dict[str, Any] = {"axes": "CYX", "Channel": {"Name": channel_names}}
    for axis in ("x", "y"):
        if pixel_size_um.get(axis):
            meta[f"PhysicalSize{axis.upper()}"] = float(pixel_size_um[axis])
            meta[f"PhysicalSize{axis.upper()}Unit"] = "µm"
    shape = tuple(array.shape) if isinstance(array, np.ndarray) else shape
    tiled = {"tile": (TIFF_TILE, TIFF_TILE)} if not isinstance(array, np.ndarray) or max(shape[-2:]) > TILED_ABOVE_PX else {}
    extra = {} if isinstance(array, np.ndarray) else {"shape": shape, "dtype": dtype}
    tmp = path.with_name(f".{path.name}.tmp")
    # zlib level 1: 3x faster to write than the default level 6 on a real 520x696 field, 2.5 % larger (measured)
    tifffile.imwrite(tmp, array, ome=True, metadata=meta, compression="zlib", compressionargs={"level": 1}, **tiled, **extra)
    tmp.replace(path)


TILED_ABOVE_PX = 2048  # planes with a side longer than this are written as tiled TIFF


def finite(image: np.ndarray) -> np.ndarray:
    """The image with NaN/inf pixels replaced by the median of the finite ones, per 2D plane (a few bad
    pixels of a float image must not turn the field into NaN probabilities, an 'empty' field or NaN metrics)."""
    if not np.issubdtype(image.dtype, np.floating) or np.isfinite(image).all():
        return image
    if image.ndim > 2:
        return np.stack([finite(plane) for plane in image])
    good = np.isfinite(image)
    fill = float(np.median(image[good])) if good.any() else 0.0
    return np.where(good, image, fill).astype(image.dtype)


def read_unit(path: str | Path, raw: bool = False) -> np.ndarray:
    """Read a unit written by :func:`write_ome_tiff` as a CYX array; NaN/inf pixels filled (see :func:`finite`)
    unless ``raw`` (the quality stage counts them first)."""
    import tifffile

    array = tifffile.imread(path)
    array = array[None] if array.ndim == 2 else array
    return array if raw else finite(array)


def write_labels(path: Path, labels: np.ndarray, unit: dict[str, Any]) -> None:
    """Instance labels as OME-TIFF (uint16, uint32 beyond 65535 objects) with the unit's pixel size."""
    dtype = np.uint32 if labels.max() > 65535 else np.uint16
    write_ome_tiff(path, labels.astype(dtype)[None], [f"labels of {unit['unit_id']}"], unit.get("pixel_size_um") or {})

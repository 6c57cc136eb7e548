"""PNG renderings of units: contrast-stretched intensity, segmentation outlines, a scale bar."""

from __future__ import annotations

import io
from typing import Any

from pathlib import Path

import numpy as np


def stretch_limits(image: np.ndarray, low: float = 1.0, high: float = 99.8) -> tuple[float, float]:
    """The [low, high] percentiles of an image: the field's own contrast."""
    lo, hi = np.percentile(image.astype(np.float32), [low, high])
    return lo, hi


def contrast_stretch(image: np.ndarray, low: float = 1.0, high: float = 99.8,
                     limits: tuple[float, float] | None = None) -> np.ndarray:
    """Map the [low, high] percentile range of this image, or fixed intensity ``limits`` (a contrast shared
    by every field of a run), to 0..255 (uint8)."""
    values = image.astype(np.float32)
    lo, hi = limits if limits is not None else stretch_limits(values, low, high)
    if hi <= lo:
        hi = lo + 1.0
    return (np.clip((values - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def _nice_length(target_um: float) -> float:
    for value in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000):
        if value >= target_um:
            return float(value)
    return float(round(target_um, -3))


def downscale_factor(shape: tuple[int, ...], max_size: int) -> int:
    return max(1, int(np.ceil(max(shape) / max_size)))


def rgb_panel(image: np.ndarray, labels: np.ndarray | None, pixel_size_um: float | None, max_size: int = 256,
              limits: tuple[float, float] | None = None, edges: np.ndarray | None = None) -> np.ndarray:
    """An RGB uint8 panel: grey intensity, yellow outlines (if labels), white scale bar bottom right.

    ``limits``: the intensity range shown black to white (shared by a run's fields); None: this field's own
    1-99.8 percentiles. An uncalibrated image (``pixel_size_um`` None) gets no scale bar: a bar of unknown
    length would mislead. Only the pixels shown are stretched (a large field is not copied at full size);
    ``edges``: the labels' inner boundaries when the caller already has them (several panels of one field).
    """
    from skimage.segmentation import find_boundaries

    factor = downscale_factor(image.shape, max_size)
    grey = contrast_stretch(image[::factor, ::factor], limits=limits if limits is not None else stretch_limits(image))
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if labels is not None or edges is not None:
        if edges is None:
            edges = find_boundaries(labels, mode="inner")
        if factor > 1:
            from skimage.measure import block_reduce

            edges = block_reduce(edges, (factor, factor), np.max)
        rgb[edges[: rgb.shape[0], : rgb.shape[1]]] = (255, 210, 0)
    h, w = rgb.shape[:2]
    if not pixel_size_um:
        return rgb
    um_per_px = pixel_size_um * factor
    bar_um = _nice_length(w * um_per_px / 5)
    bar_px = max(2, int(round(bar_um / um_per_px)))
    if bar_px < w - 8:
        y0 = h - max(6, h // 40) - 2
        rgb[y0 : y0 + max(3, h // 80), w - 6 - bar_px : w - 6] = 255
    return rgb


def reduced_view(read_image: Any, read_labels: Any, shape: tuple[int, int], factor: int,
                 block_px: int = 2048) -> tuple[np.ndarray, np.ndarray | None]:
    """A large field seen every ``factor``-th pixel, read a block at a time: (intensity, outline pixels or None).
    ``read_image(box)`` / ``read_labels(box)`` give a rectangle of the field (``read_labels`` may be None); a
    reduced pixel is an outline when any outline pixel of the labels falls in its factor x factor cell."""
    from skimage.segmentation import find_boundaries

    from .blocks import layout

    small = (-(-shape[0] // factor), -(-shape[1] // factor))
    grey, edges = None, np.zeros(small, bool) if read_labels is not None else None
    for block in layout(shape, block_px, 1):  # an outline needs one pixel of context
        if edges is not None:
            ys, xs = np.nonzero(find_boundaries(read_labels(block.outer), mode="inner")[block.inner])
            edges[(ys + block.core[0].start) // factor, (xs + block.core[1].start) // factor] = True
        first = [-(-c.start // factor) * factor for c in block.core]
        view = read_image(tuple(slice(f, c.stop, factor) for f, c in zip(first, block.core)))
        if grey is None:
            grey = np.zeros(small, view.dtype)
        grey[first[0] // factor: first[0] // factor + view.shape[0], first[1] // factor: first[1] // factor + view.shape[1]] = view
    return grey, edges


def png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=3)  # optimize=True took 0.1 s per overlay
    return buffer.getvalue()


def overlay_png(image: np.ndarray, labels: np.ndarray | None, pixel_size_um: float | None, max_size: int = 512,
                edges: np.ndarray | None = None) -> bytes:
    """Two panels side by side: the raw channel, and the same with segmentation outlines (from ``labels``, or
    the outline pixels ``edges`` of a large field's reduced view)."""
    limits = stretch_limits(image)
    left = rgb_panel(image, None, pixel_size_um, max_size, limits)
    right = rgb_panel(image, labels, pixel_size_um, max_size, limits, edges)
    gap = np.full((left.shape[0], 4, 3), 40, np.uint8)
    return png_bytes(np.concatenate([left, gap, right], axis=1))


def scale_bar_um(shape: tuple[int, int], pixel_size_um: float, max_size: int = 512) -> float:
    """The length in µm the scale bar of :func:`rgb_panel` represents (for captions and prompts)."""
    factor = downscale_factor(shape, max_size)
    return _nice_length(shape[1] // factor * pixel_size_um * factor / 5)


def large_view(unit: dict[str, Any], channels: tuple[str | int, ...], labels_path: str | Path | None,
               size: int) -> tuple[np.ndarray, np.ndarray | None, int]:
    """A large unit's model channel every n-th pixel (n: what a ``size``-px panel shows), its outline pixels, n."""
    from .blocks import PlaneReader
    from .channels import channel_indices
    from .rendering import downscale_factor, reduced_view

    channel = channel_indices(unit["channel_names"], channels, len(unit["channel_names"]))[0]
    with PlaneReader(unit["image_path"]) as reader:
        factor = downscale_factor(reader.shape, size)
        if not labels_path:
            return (*reduced_view(lambda box: reader.read(channel, box), None, reader.shape, factor), factor)
        with PlaneReader(labels_path) as labels:
            return (*reduced_view(lambda box: reader.read(channel, box), lambda box: labels.read(0, box), reader.shape, factor),
                    factor)

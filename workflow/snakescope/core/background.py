"""A field's smooth background: uneven illumination or a background ramp, fitted once at import and taken out of
what the model, the segmentation and the quality metrics look at (the unit's pixels stay as they were read).

Without it, a background that rises by 40 % of the nuclei's contrast across a real field (widefield without
flat-field correction) made the U-Net take the bright side's background for nuclei (object F1 0.90 -> 0.34 on a
DSB2018 field, 0.63 -> 0.24 on BBBC039's fibre field) and the quality metrics call fields with 20-300 nuclei
empty: one global background level and noise cannot describe a ramp.

The fit: the field is cut into a GRID x GRID grid of boxes; in each, the QUANTILE-th percentile of the pixels is a
background sample (a box of a dense field still holds some background between its nuclei); a quadratic surface
(order 2: a ramp, a tilt and a vignette) is fitted to the samples by least squares, repeatedly dropping samples more
than CLIP robust SDs above it (boxes inside a cluster of nuclei or a bright tissue). The surface minus its median
over the field is what is subtracted, so the flattened field keeps its own background level and units. On the 32
real BBBC039 and DSB2018 fields, which are nearly flat, flattening moved object F1 by +0.004 and +0.003 (pooled);
on the same fields with a ramp it restored F1 to within 0.01 of the untouched fields (``bench/accuracy.py --sets
ramp``, and tests/test_background.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

ORDER = 2
GRID = 8
QUANTILE = 10.0
CLIP = 2.0
ITERATIONS = 10
ROWS_PER_BLOCK = 512
SAMPLES_PER_BOX = 4096


@dataclass(frozen=True)
class BackgroundSurface:
    """A polynomial of ``order`` in coordinates scaled to -1..1 over a field of ``shape``; ``median`` is its median
    over the field (what stays after flattening), ``range`` its maximum minus minimum (how uneven the field is)."""

    order: int
    coefficients: tuple[float, ...]
    shape: tuple[int, int]
    median: float
    range: float

    def rows(self, start: int, stop: int) -> np.ndarray:
        """The surface over rows ``start:stop`` (float64)."""
        h, w = self.shape
        y = (np.arange(start, stop) + 0.5) / h * 2 - 1
        x = (np.arange(w) + 0.5) / w * 2 - 1
        along_x = np.zeros((self.order + 1, w))  # per power of y: the polynomial in x that multiplies it
        for coefficient, (py, px) in zip(self.coefficients, powers(self.order)):
            along_x[py] += coefficient * x**px
        out = np.zeros((stop - start, w))
        for py in range(self.order + 1):  # one outer product per power of y
            out += np.multiply.outer(y**py, along_x[py])
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "BackgroundSurface":
        return cls(int(doc["order"]), tuple(float(c) for c in doc["coefficients"]), (int(doc["shape"][0]), int(doc["shape"][1])),
                   float(doc["median"]), float(doc["range"]))


def powers(order: int) -> list[tuple[int, int]]:
    """The (power of y, power of x) of each term: 1, x, y, x², xy, y², ..."""
    return [(i, degree - i) for degree in range(order + 1) for i in range(degree + 1)]


def _design(y: np.ndarray, x: np.ndarray, order: int) -> np.ndarray:
    return np.stack([y**py * x**px for py, px in powers(order)], axis=-1)


def fit_background(image: np.ndarray, order: int = ORDER, grid: int = GRID, quantile: float = QUANTILE,
                   clip: float = CLIP) -> BackgroundSurface:
    """The smooth background of one 2D channel (see the module's docstring). Non-finite pixels are ignored."""
    h, w = image.shape
    edges_y = np.linspace(0, h, min(grid, h) + 1).astype(int)
    edges_x = np.linspace(0, w, min(grid, w) + 1).astype(int)
    samples, where = [], []
    for top, bottom in zip(edges_y[:-1], edges_y[1:]):
        for left, right in zip(edges_x[:-1], edges_x[1:]):
            box = image[top:bottom, left:right]
            step = max(1, int(np.sqrt(box.size / SAMPLES_PER_BOX)))  # every step-th pixel: a percentile needs no more
            box = np.asarray(box[::step, ::step], np.float64).ravel()
            box = box[np.isfinite(box)]
            if box.size:
                samples.append(float(np.percentile(box, quantile)))
                where.append(((top + bottom) / h - 1, (left + right) / w - 1))
    values = np.asarray(samples)
    n_terms = len(powers(order))
    if values.size < 2 * n_terms:  # too few boxes for the surface (a thin strip): a constant
        level = float(np.median(values)) if values.size else 0.0
        return BackgroundSurface(0, (level,), (h, w), level, 0.0)
    at = np.asarray(where)
    design = _design(at[:, 0], at[:, 1], order)
    keep = np.ones(values.size, bool)
    coefficients = np.zeros(n_terms)
    for _ in range(ITERATIONS):
        coefficients = np.linalg.lstsq(design[keep], values[keep], rcond=None)[0]
        residual = values - design @ coefficients
        spread = 1.4826 * float(np.median(np.abs(residual[keep] - np.median(residual[keep]))))
        now = residual <= clip * max(spread, 1e-12)
        if now.sum() < 2 * n_terms or np.array_equal(now, keep):
            break
        keep = now
    coarse = _coarse(order, coefficients)
    return BackgroundSurface(order, tuple(float(c) for c in coefficients), (h, w), float(np.median(coarse)),
                             float(coarse.max() - coarse.min()))


def _coarse(order: int, coefficients: np.ndarray, n: int = 64) -> np.ndarray:
    """The surface on an n x n lattice spanning the field (its median and range)."""
    y = np.linspace(-1, 1, n)
    grid_y, grid_x = np.meshgrid(y, y, indexing="ij")
    return _design(grid_y.ravel(), grid_x.ravel(), order) @ coefficients


def flattened(image: np.ndarray, surface: BackgroundSurface | None) -> np.ndarray:
    """``image`` (one 2D channel) minus (surface - its median), as float32, a block of rows at a time; ``image``
    itself when there is no surface or it is flat."""
    if surface is None or surface.order == 0 or surface.range == 0:
        return image
    out = np.empty(image.shape, np.float32)
    for start in range(0, image.shape[0], ROWS_PER_BLOCK):
        stop = min(image.shape[0], start + ROWS_PER_BLOCK)
        out[start:stop] = image[start:stop] - (surface.rows(start, stop) - surface.median)
    return out


def unit_surface(unit: dict[str, Any], channel: str) -> BackgroundSurface | None:
    """The surface fitted at import for one channel of a unit (None: not fitted, e.g. large fields or
    ``import.background: none``)."""
    doc = (unit.get("background") or {}).get(channel)
    return BackgroundSurface.from_dict(doc) if doc else None


def flattened_channels(array: np.ndarray, unit: dict[str, Any], indices: list[int]) -> np.ndarray:
    """The channels ``indices`` of a unit's CYX ``array``, each flattened with its own surface."""
    names = unit["channel_names"]
    return np.stack([flattened(array[i], unit_surface(unit, names[i])) for i in indices]) if indices else array[:0]

"""Large fields block by block: overlapping blocks, which block owns an object, exact quantiles from histograms,
and chunked reading and writing of planes, so that a stage's memory follows the block, not the field.

A field is cut into blocks of ``block_px`` (the *core*); each is processed with ``overlap_px`` of its
neighbours around it (the *outer* region). An object belongs to the one block whose core holds its bounding
box's first corner, and only when it is *complete* there: its box plus a margin (the reach of what its result
depends on) stays inside the outer region, or meets the field's own edge. An object that is complete in its
owner comes out as it would from the whole field; one larger than the overlap is complete nowhere and is
counted, not guessed (raise the overlap).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

TIFF_TILE = 512  # tile edge of the tiled TIFFs written for large fields (a multiple of 16, as TIFF requires)
# Quality, inference and gallery read fields with a side longer than this a block or strip at a time (memory
# follows the block); post-processing has its own setting (postprocess.block_px).
LARGE_SIDE = 4096


def is_large(shape: Any) -> bool:
    """Whether a unit's (..., Y, X) shape is read block by block by the stages that look at whole planes: a side
    longer than LARGE_SIDE, and none too thin to cut."""
    if not shape or len(shape) < 2:
        return False
    sides = [int(v) for v in shape[-2:]]
    return max(sides) > LARGE_SIDE and min(sides) >= 64


@dataclass(frozen=True)
class Block:
    outer: tuple[slice, slice]  # field coordinates of the block and its overlap, clipped to the field
    core: tuple[slice, slice]  # field coordinates of the block itself

    @property
    def offset(self) -> tuple[int, int]:
        return self.outer[0].start, self.outer[1].start

    @property
    def inner(self) -> tuple[slice, slice]:
        """The core in the outer region's coordinates."""
        return tuple(slice(c.start - o.start, c.stop - o.start) for c, o in zip(self.core, self.outer))  # type: ignore[return-value]


def layout(shape: tuple[int, int], block_px: int, overlap_px: int) -> list[Block]:
    """Blocks covering a (Y, X) field in row-major order."""
    blocks = []
    for y in range(0, shape[0], block_px):
        for x in range(0, shape[1], block_px):
            core = (slice(y, min(shape[0], y + block_px)), slice(x, min(shape[1], x + block_px)))
            outer = tuple(slice(max(0, c.start - overlap_px), min(n, c.stop + overlap_px)) for c, n in zip(core, shape))
            blocks.append(Block(outer, core))  # type: ignore[arg-type]
    return blocks


def complete_and_owned(labels: np.ndarray, block: Block, shape: tuple[int, int], margin: int) -> tuple[np.ndarray, np.ndarray]:
    """Per label of an outer region's ``labels`` (index 0 unused): (complete: its box plus ``margin`` stays in
    the outer region or meets the field's edge; starts here: its box's first corner is in the block's core).
    The block owns the labels that are both; one that starts here but is not complete is larger than the overlap."""
    from scipy import ndimage as ndi  # here, not at the top: the workflow's memory estimate (costs.py) imports this module

    n = int(labels.max()) if labels.size else 0
    complete, starts = np.zeros(n + 1, bool), np.zeros(n + 1, bool)
    oy, ox = block.offset
    height, width = labels.shape
    at_top, at_left = oy == 0, ox == 0
    at_bottom, at_right = oy + height == shape[0], ox + width == shape[1]
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        rows, cols = box
        complete[index] = ((at_top or rows.start >= margin) and (at_left or cols.start >= margin)
                           and (at_bottom or rows.stop + margin <= height) and (at_right or cols.stop + margin <= width))
        y0, x0 = rows.start + oy, cols.start + ox
        starts[index] = block.core[0].start <= y0 < block.core[0].stop and block.core[1].start <= x0 < block.core[1].stop
    return complete, starts


class Histogram:
    """Counts of values in fixed bins, added block by block; quantiles as numpy computes them on the values.

    Integer images get one bin per grey level between ``lo`` and ``hi``, so medians and percentiles are exact;
    float images get ``bins`` equal bins (a value is its bin's centre: exact to (hi - lo) / bins)."""

    def __init__(self, lo: float, hi: float, integer: bool, bins: int = 1 << 16) -> None:
        self.integer = integer
        self.lo = float(np.floor(lo)) if integer else float(lo)
        n = int(np.floor(hi) - self.lo) + 1 if integer else bins
        self.width = 1.0 if integer else max(float(hi) - self.lo, 1e-12) / bins
        self.counts = np.zeros(max(n, 1), np.int64)

    @classmethod
    def of_integers(cls, values: np.ndarray) -> "Histogram":
        """The histogram of integer ``values`` of at most 16 bits, one bin per grey level of their dtype, counted
        without a float copy."""
        limits = np.iinfo(values.dtype)
        histogram = cls(float(limits.min), float(limits.max), True)
        flat = values.ravel()
        index = flat if limits.min == 0 else flat.astype(np.int32) - limits.min
        histogram.counts = np.bincount(index, minlength=histogram.counts.size).astype(np.int64)
        return histogram

    def add(self, values: np.ndarray) -> None:
        index = np.asarray(values, np.float64) - self.lo
        index = np.floor(index / self.width).astype(np.int64) if not self.integer else index.astype(np.int64)
        np.clip(index, 0, self.counts.size - 1, out=index)
        self.counts += np.bincount(index.ravel(), minlength=self.counts.size)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def values(self) -> np.ndarray:
        return self.lo + (np.arange(self.counts.size) + (0.0 if self.integer else 0.5)) * self.width

    def order_statistic(self, k: int, values: np.ndarray | None = None, counts: np.ndarray | None = None) -> float:
        """The k-th smallest value (from 0)."""
        values = self.values() if values is None else values
        cumulative = np.cumsum(self.counts if counts is None else counts)
        return float(values[int(np.searchsorted(cumulative, k, side="right"))])

    def percentile(self, q: float, dtype: Any = np.float64) -> float:
        """np.percentile(values.astype(dtype), q): numpy's interpolation between the two order statistics around
        the position, done by numpy on them in ``dtype`` (so the result is numpy's to the last bit)."""
        position = q / 100 * (self.total - 1)
        below = int(np.floor(position))
        pair = np.array([self.order_statistic(below), self.order_statistic(min(below + 1, self.total - 1))], dtype)
        return float(np.quantile(pair, position - below))

    def median(self) -> float:
        """np.median(values) of float64 values: the mean of the middle one or two."""
        n = self.total
        return (self.order_statistic((n - 1) // 2) + self.order_statistic(n // 2)) / 2

    def where(self, keep: np.ndarray) -> "Histogram":
        """The same bins with only the counts where ``keep`` (per bin) is true."""
        out = Histogram.__new__(Histogram)
        out.__dict__.update(self.__dict__)
        out.counts = np.where(keep, self.counts, 0)
        return out

    def median_abs_deviation(self, centre: float) -> float:
        """np.median(np.abs(values - centre))."""
        filled = self.counts > 0  # empty bins change no order statistic
        distance = np.abs(self.values()[filled] - centre)
        order = np.argsort(distance, kind="stable")
        counts, distance = self.counts[filled][order], distance[order]
        n = self.total
        low = self.order_statistic((n - 1) // 2, distance, counts)
        high = self.order_statistic(n // 2, distance, counts)
        return (low + high) / 2

    def robust_noise(self, level: float) -> float:
        """The noise SD of a background at ``level``: 1.4826 x the median absolute deviation from it, or where that
        is 0 (a flat background of integers) the values' SD; at least 1e-6."""
        noise = 1.4826 * self.median_abs_deviation(level)
        if noise <= 0:
            values = self.values()
            mean = float(np.sum(values * self.counts) / self.total)
            noise = float(np.sqrt(np.sum(self.counts * (values - mean) ** 2) / self.total))
        return max(noise, 1e-6)


def value_range(reader: "PlaneReader", channel: int, blocks: list[Block]) -> tuple[float, float]:
    """Bounds for a :class:`Histogram` of a plane read block by block: the dtype's limits for integers of up to
    16 bits (no pass over the pixels), else the range of the finite values and 0 (where NaN pixels count as 0)."""
    if np.issubdtype(reader.dtype, np.integer) and np.dtype(reader.dtype).itemsize <= 2:
        limits = np.iinfo(reader.dtype)
        return float(limits.min), float(limits.max)
    lo, hi = 0.0, 0.0
    for block in blocks:
        values = reader.read(channel, block.core)
        values = values[np.isfinite(values)]
        if values.size:
            lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
    return lo, hi


def refined_median(values_of: Any, blocks: list[Any], histogram: Histogram) -> float:
    """np.median of the values ``values_of(block)`` gives over all blocks, exactly, given their ``histogram``:
    one more pass keeps only the values in the bins of the middle order statistics and sorts them."""
    if histogram.integer:
        return histogram.median()
    n = histogram.total
    cumulative = np.cumsum(histogram.counts)
    wanted = {k: int(np.searchsorted(cumulative, k, side="right")) for k in ((n - 1) // 2, n // 2)}
    kept: dict[int, list[np.ndarray]] = {b: [] for b in set(wanted.values())}
    for block in blocks:
        values = np.asarray(values_of(block), np.float64).ravel()
        index = np.clip(np.floor((values - histogram.lo) / histogram.width).astype(np.int64), 0, histogram.counts.size - 1)
        for b in kept:
            kept[b].append(values[index == b])
    middle = []
    for k in ((n - 1) // 2, n // 2):
        b = wanted[k]
        before = int(cumulative[b - 1]) if b > 0 else 0
        middle.append(float(np.sort(np.concatenate(kept[b]))[k - before]))
    return (middle[0] + middle[1]) / 2


class PlaneReader:
    """Rectangles of a unit's planes read from its TIFF through zarr: only the strips or tiles they cover are
    decoded, so reading a block costs the block's memory."""

    def __init__(self, path: str | Path) -> None:
        import tifffile
        import zarr

        self._file = tifffile.TiffFile(path)
        self._array = zarr.open(self._file.series[0].aszarr(), mode="r")
        self.shape = tuple(self._array.shape[-2:])
        self.dtype = self._array.dtype

    def read(self, channel: int, box: tuple[slice, slice]) -> np.ndarray:
        return np.asarray(self._array[box] if self._array.ndim == 2 else self._array[(channel, *box)])

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "PlaneReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_npy(path: str | Path, box: tuple[slice, slice]) -> np.ndarray:
    """A rectangle of a 2D ``.npy`` array, copied out of a mapping that is closed again (its pages leave memory)."""
    mapped = np.load(path, mmap_mode="r")
    try:
        return np.array(mapped[box])
    finally:
        del mapped


def npy_shape(path: str | Path) -> tuple[int, ...]:
    mapped = np.load(path, mmap_mode="r")
    shape = mapped.shape
    del mapped
    return shape


def write_npy(path: str | Path, box: tuple[slice, slice], values: np.ndarray, where: np.ndarray | None = None) -> None:
    """Write ``values`` into a rectangle of an existing ``.npy`` file (only the pixels in ``where``, if given)."""
    mapped = np.load(path, mmap_mode="r+")
    try:
        if where is None:
            mapped[box] = values
        else:
            mapped[box][where] = values[where]
        mapped.flush()
    finally:
        del mapped


def npy_tiles(path: str | Path, dtype: Any, tile: int = TIFF_TILE) -> Iterator[np.ndarray]:
    """The tiles of a 2D ``.npy`` array in TIFF order (rows of tiles), padded to full tiles."""
    height, width = npy_shape(path)[-2:]
    for y in range(0, height, tile):
        strip = read_npy(path, (slice(y, min(height, y + tile)), slice(0, width))).astype(dtype)
        for x in range(0, width, tile):
            out = np.zeros((tile, tile), dtype)
            part = strip[:, x : x + tile]
            out[: part.shape[0], : part.shape[1]] = part
            yield out

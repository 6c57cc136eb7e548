"""The pixel area of every object's convex hull (solidity's denominator), as ``skimage.morphology.convex_hull_image``
counts it, for all objects of a label image at once, without drawing a hull.

scikit-image takes the hull of the four edge midpoints of every pixel of one object and tests each pixel centre of the
object's box against it, one object at a time: on a field of nuclei a large share of the post-processing (bench/README,
"Acquisition latency"). The same count, made for all objects together:

1. Each object's row ends: the first and last pixel of each of its rows (from the runs of equal labels along rows).
   Their edge midpoints span the object's hull, as all its pixels' midpoints do.
2. In doubled coordinates every midpoint is a pair of integers. The hull's right side is the concave majorant of the
   rightmost midpoint per doubled row; points strictly left of the chord between their neighbours are dropped, for
   all objects at once, until none is (each dropped point lies inside the hull, so the majorant is kept). The left
   side is the same on mirrored columns.
3. On each pixel row between an object's first and last, the pixel centres between the two sides are counted;
   where a side crosses the row is a fraction of integers, rounded exactly. This is the number of pixel centres
   inside the closed hull, which is what scikit-image's vertex/edge/inside test counts (equal, tested).
"""

from __future__ import annotations

import numpy as np


ROWS_PER_BLOCK = 512  # rows compared at a time: the full-size temporaries are a block's, not the field's


def row_ends(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(label, row, first column, last column) of every row of every object (labels > 0), sorted by label and row."""
    height = labels.shape[0]
    parts = []
    for top in range(0, height, ROWS_PER_BLOCK):  # rows are independent: a block of them at a time
        block = labels[top:top + ROWS_PER_BLOCK]
        inside = block > 0
        starts = inside.copy()
        starts[:, 1:] &= block[:, 1:] != block[:, :-1]
        ends = inside  # (inside is not needed after this)
        ends[:, :-1] &= block[:, :-1] != block[:, 1:]
        rows, first = np.nonzero(starts)  # runs of one label along a row: starts and ends pair up in order
        parts.append((block[rows, first].astype(np.int64), rows + top, first, np.nonzero(ends)[1]))
    label, rows, first, last = (np.concatenate(column) for column in zip(*parts))
    if label.size == 0:
        return label, rows, first, last
    key = label * height + rows
    order = np.argsort(key, kind="stable")
    key, first, last = key[order], first[order], last[order]
    groups = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    key = key[groups]
    return key // height, key % height, np.minimum.reduceat(first, groups), np.maximum.reduceat(last, groups)


def majorant(label: np.ndarray, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per label, the vertices (label, y, x) of the concave majorant of the integer points (y, x): the largest x per
    y, then points strictly below the chord of their neighbours dropped until none is; sorted by label and y."""
    span = int(y.max()) - int(y.min()) + 1
    key = label * span + (y - y.min())
    order = np.lexsort((-x, key))  # per (label, y): the largest x first
    key, x = key[order], x[order]
    keep = np.r_[True, key[1:] != key[:-1]]
    label, y, x = label[order][keep], y[order][keep], x[keep]
    while len(label) > 2:
        inner = (label[1:-1] == label[:-2]) & (label[1:-1] == label[2:])
        y0, y1, y2, x0, x1, x2 = y[:-2], y[1:-1], y[2:], x[:-2], x[1:-1], x[2:]
        below = inner & ((x1 - x0) * (y2 - y0) < (x2 - x0) * (y1 - y0))
        if not below.any():
            break
        kept = np.r_[True, ~below, True]
        label, y, x = label[kept], y[kept], x[kept]
    return label, y, x


def _floor_at(chain: tuple[np.ndarray, np.ndarray, np.ndarray], label: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """floor(x / 2) where each label's chain crosses doubled row ``rows`` (within the chain's span)."""
    chain_label, y, x = chain
    span = int(max(y.max(), rows.max())) + 2  # doubled rows from -1
    keys, wanted = chain_label * span + y + 1, label * span + rows + 1
    at = np.searchsorted(keys, wanted)  # the vertex at the row, or the one after it
    exact = keys[np.minimum(at, len(keys) - 1)] == wanted
    after = np.minimum(at, len(keys) - 1)
    before = np.maximum(at - 1, 0)
    y0, x0, y1, x1 = y[before], x[before], y[after], x[after]
    dy = np.where(exact, 1, y1 - y0)
    numerator = np.where(exact, x[after], x0 * dy + (rows - y0) * (x1 - x0))
    return numerator // (2 * dy)


def convex_areas(labels: np.ndarray, n: int) -> np.ndarray:
    """Pixels in the convex hull of each object 1..n of a 2-D label image (index 0 unused; 0 for absent labels), as
    ``np.count_nonzero(convex_hull_image(labels[box] == label))`` gives them."""
    areas = np.zeros(n + 1, np.int64)
    label, row, first, last = row_ends(labels)
    if label.size == 0:
        return areas
    # edge midpoints in doubled coordinates: top, bottom and outer side of each row's first and last pixel
    y = np.concatenate([2 * row - 1, 2 * row + 1, 2 * row])
    right = majorant(np.tile(label, 3), y, np.concatenate([2 * last, 2 * last, 2 * last + 1]))
    left = majorant(np.tile(label, 3), y, -np.concatenate([2 * first, 2 * first, 2 * first - 1]))  # mirrored
    # every pixel row from each object's first to its last (an object in pieces has rows without pixels)
    objects = np.flatnonzero(np.r_[True, label[1:] != label[:-1]])
    top, bottom = row[objects], np.maximum.reduceat(row, objects)
    heights = bottom - top + 1
    query_label = np.repeat(label[objects], heights)
    query_row = 2 * (np.repeat(top, heights) + np.arange(heights.sum()) - np.repeat(np.cumsum(heights) - heights, heights))
    widths = _floor_at(right, query_label, query_row) + _floor_at(left, query_label, query_row) + 1  # floor(-a) = -ceil(a)
    np.add.at(areas, query_label, widths)
    return areas

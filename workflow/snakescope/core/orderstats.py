"""Order statistics equal to numpy's on the values themselves, to the last bit, for less work: medians and median
absolute deviations of the values up to any cut, read from values sorted once (:class:`SortedValues`); a percentile
of every labelled object from one grouping of its pixels (:func:`label_percentiles`).

Robust statistics that clip and repeat (a median, the MAD around it, the values below a cut, their median...)
otherwise partition the whole array again for every step; a sort costs about one partition."""

from __future__ import annotations

import numpy as np


def _kth_of_two(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """The k-th smallest (from 0) of the values of two ascending arrays together, by bisection (no merge)."""
    best = np.inf
    for own, other in ((a, b), (b, a)):
        lo, hi = 0, own.size  # the first index whose value has more than k values at or below it
        while lo < hi:
            mid = (lo + hi) // 2
            value = own[mid]
            if int(np.searchsorted(own, value, "right")) + int(np.searchsorted(other, value, "right")) > k:
                hi = mid
            else:
                lo = mid + 1
        if lo < own.size:
            best = min(best, float(own[lo]))
    return best


class SortedValues:
    """float64 values sorted once; the statistics of the ``n`` smallest of them read without another pass."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = np.sort(np.asarray(values, np.float64).ravel())

    @property
    def size(self) -> int:
        return int(self.values.size)

    def count_at_most(self, cut: float) -> int:
        """How many values are <= ``cut`` (the prefix they make)."""
        return int(np.searchsorted(self.values, cut, "right"))

    def median(self, n: int | None = None) -> float:
        """``np.median`` of the ``n`` smallest values (all by default)."""
        n = self.size if n is None else n
        return float((self.values[(n - 1) // 2] + self.values[n // 2]) / 2)

    def median_abs_deviation(self, centre: float, n: int | None = None) -> float:
        """``np.median(np.abs(v - centre))`` over the ``n`` smallest values v. Below the centre the distances run
        in reverse order, above it in order (subtraction rounds monotonically), so the two middle distances come
        from two sorted runs by bisection."""
        n = self.size if n is None else n
        prefix = self.values[:n]
        split = int(np.searchsorted(prefix, centre, "left"))
        below = np.abs(prefix[:split][::-1] - centre)
        above = np.abs(prefix[split:] - centre)
        return (_kth_of_two(below, above, (n - 1) // 2) + _kth_of_two(below, above, n // 2)) / 2


def label_percentiles(values: np.ndarray, labels: np.ndarray, *, n: int, q: float, default: float) -> np.ndarray:
    """``np.percentile(values[labels == i], q)`` for the labels i = 1..n (``default`` where a label has no pixel),
    as ``ndi.labeled_comprehension`` with ``np.percentile`` gives them: the labelled pixels grouped by label once,
    then the two order statistics around the position selected in each group and interpolated as numpy's
    linear method does (its ``_lerp``), without a call of ``np.percentile`` per object."""
    flat = labels.ravel()
    inside = np.flatnonzero(flat)
    own = flat[inside]
    grouped = np.asarray(values).ravel()[inside[np.argsort(own, kind="stable")]]
    counts = np.bincount(own, minlength=n + 1)[1:n + 1]
    out = np.full(n, float(default))
    start = 0
    for index, count in enumerate(counts.tolist()):
        if count:
            part = grouped[start:start + count]
            position = (count - 1) * (q / 100)
            below = int(position)
            if below + 1 < count:
                part = np.partition(part, (below, below + 1))
                low, high, fraction = part[below], part[below + 1], position - below
                step = high - low
                out[index] = high - step * (1 - fraction) if fraction >= 0.5 else low + step * fraction
            else:  # the position is the last value (numpy takes the largest)
                out[index] = part.max()
        start += count
    return out

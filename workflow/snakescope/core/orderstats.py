"""Order statistics read from values sorted once: medians and median absolute deviations of the values up to any
cut, each equal to ``np.median``'s on the values themselves, to the last bit.

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

"""Stage 2, classical image-quality metrics per unit and channel (after CellProfiler's MeasureImageQuality)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .acquisition import finite
from .records import Failure, read_json, write_json


def robust_background(image: np.ndarray, iterations: int = 5, clip: float = 3.0) -> tuple[float, float]:
    """Background level and noise (sigma) by iterative sigma clipping of the bright tail."""
    values = np.asarray(image, np.float64).ravel()  # no copy for a float64 image; the medians below work on copies

    def mad(data: np.ndarray, centre: float) -> float:
        deviation = data - centre
        np.abs(deviation, out=deviation)
        return float(1.4826 * np.median(deviation, overwrite_input=True))

    level = float(np.median(values))
    sigma = mad(values, level)
    previous = values.size
    for _ in range(iterations):
        kept = values[values <= level + clip * max(sigma, 1e-12)]
        if kept.size < 16 or kept.size == previous:  # the same pixels as before: level and sigma would not change
            break
        previous = kept.size
        level = float(np.median(kept, overwrite_input=True))  # kept is a copy: sorting it in place is fine
        sigma = mad(kept, level)
    return level, max(sigma, float(np.finfo(np.float32).eps))


ROWS_PER_BLOCK = 512  # rows processed at a time where a metric can be summed block by block (memory bounded by the block)


def power_log_log_slope(image: np.ndarray, overwrite: bool = False) -> float:
    """Slope of the radially averaged power spectrum in log-log space; more negative means blurrier.

    The spectrum of a real image is symmetric, so the half plane of ``rfft2`` holds it all: every column but
    the zero and (even widths) Nyquist ones stands for itself and its mirror, and counts twice. Power and the
    radial sums are made a block of rows at a time, so beyond the half spectrum (8 bytes per pixel) memory
    does not grow with the image; the result is the full-plane radial average's. ``overwrite``: the image is a
    float64 array the caller no longer needs (it is centred in place instead of copied).
    """
    img = np.asarray(image, np.float64)
    if overwrite and img is image:  # the caller's float64 copy, no longer needed: centre it in place
        img -= img.mean()
    else:
        img = img - img.mean()
    h, w = img.shape
    spectrum = np.fft.rfft2(img)
    del img
    fy = np.fft.fftfreq(h, 1.0 / h)  # signed row frequencies, as fftshift centres them
    fx = np.arange(spectrum.shape[1], dtype=np.float64)
    weight = np.full(fx.size, 2.0)
    weight[0] = 1.0
    if w % 2 == 0:
        weight[-1] = 1.0
    n_bins = int(np.hypot(h // 2 + 1, w // 2 + 1)) + 2
    power_sum, counts = np.zeros(n_bins), np.zeros(n_bins)
    for start in range(0, h, ROWS_PER_BLOCK):
        rows = slice(start, min(h, start + ROWS_PER_BLOCK))
        radius = np.hypot(fy[rows, None], fx[None, :]).astype(int)
        power = np.abs(spectrum[rows]) ** 2
        power_sum += np.bincount(radius.ravel(), (power * weight).ravel(), minlength=n_bins)
        counts += np.bincount(radius.ravel(), np.broadcast_to(weight, radius.shape).ravel(), minlength=n_bins)
    radial = power_sum / np.maximum(counts, 1)
    freqs = np.arange(1, min(h, w) // 2)
    keep = radial[freqs] > 0
    if keep.sum() < 3:
        return 0.0
    slope, _ = np.polyfit(np.log(freqs[keep]), np.log(radial[freqs][keep]), 1)
    return float(slope)


def pixel_noise(image: np.ndarray) -> float:
    """Noise SD of single pixels from differences of horizontal neighbours (robust: 1.4826 MAD / sqrt 2).

    Differences cancel the content that varies slowly (nuclei, background gradients); the median
    ignores the edges. Integer images get a floor of one grey level: a flat, clipped background
    (8-bit exports) has no measurable noise, and dividing by zero would call any field perfect.
    """
    axis = -1 if image.shape[-1] > 1 else 0  # a 1-pixel-wide image: vertical neighbours
    shape = (image.shape[0], image.shape[1] - 1) if axis else (image.shape[0] - 1, image.shape[1])
    diffs = np.empty(shape, np.float64)
    if axis:  # by blocks of rows: no full-size float copy of the image beside the differences
        for start in range(0, image.shape[0], ROWS_PER_BLOCK):
            rows = slice(start, start + ROWS_PER_BLOCK)
            diffs[rows] = np.diff(image[rows].astype(np.float64), axis=-1)
    else:
        diffs[:] = np.diff(image.astype(np.float64), axis=0)
    diffs = diffs.ravel()
    noise = 0.0
    if diffs.size:
        centre = np.median(diffs)
        diffs -= centre  # in place: the differences are ours
        np.abs(diffs, out=diffs)
        noise = float(1.4826 * np.median(diffs, overwrite_input=True) / np.sqrt(2))
    floor = 1.0 if np.issubdtype(image.dtype, np.integer) else float(np.finfo(np.float32).eps)
    return max(noise, floor)


def blur_score(image: np.ndarray) -> float:
    """Perceptual blur from 0 (sharp) to 1 (blurred): how much a re-blur changes neighbour differences.

    The no-reference metric of Crete et al. (2007), as ``skimage.measure.blur_effect`` computes it (the same
    filters and sums, tested equal), made a block of rows at a time with a halo wide enough that every kept
    row sees what it would in the whole image. It compares the image with itself, so it does not depend on
    brightness, and noise only makes an image look sharper (it can hide blur, never invent it).
    """
    from skimage.filters import sobel

    if min(image.shape) < 4:
        return float("nan")
    size = int(min(11, min(image.shape) // 2))
    values = np.asarray(image, np.float64)
    h, w = values.shape
    halo = size // 2 + 2
    eps = 1e-10  # skimage's guard against numerical instabilities
    sums = np.zeros((2, 2))  # per axis: sum of sharp edges, sum of what re-blurring removed
    for start in range(2, h - 1, ROWS_PER_BLOCK):
        stop = min(h - 1, start + ROWS_PER_BLOCK)  # rows kept: skimage sums rows 2 .. h-2 and columns 2 .. w-2
        top, bottom = max(0, start - halo), min(h, stop + halo)
        block = values[top:bottom]
        keep = (slice(start - top, stop - top), slice(2, w - 1))
        for axis in (0, 1):
            sharp = np.maximum(eps, np.abs(sobel(block, axis=axis)))
            blurred = np.maximum(eps, np.abs(sobel(ndi.uniform_filter1d(block, size, axis=axis), axis=axis)))
            sums[axis, 0] += sharp[keep].sum()
            sums[axis, 1] += np.maximum(0, sharp - blurred)[keep].sum()
    return float(max(abs(m1 - m2) / m1 for m1, m2 in sums))


def channel_metrics(image: np.ndarray) -> dict[str, float]:
    """Quality metrics of one 2D channel; see config/README.md for one line on each."""
    img = np.asarray(image)
    non_finite = float(100.0 * np.mean(~np.isfinite(img))) if np.issubdtype(img.dtype, np.floating) else 0.0
    img = finite(img)
    values = img.astype(np.float64)
    mean = float(values.mean())
    lo, hi = float(values.min()), float(values.max())
    noise = pixel_noise(img)  # before the smoothed copy exists (peak memory)
    smooth = ndi.gaussian_filter(values, 1.0)
    background, smooth_noise = robust_background(smooth)
    # sigma=1 smoothing lowers white noise about 3.5x; the floor keeps flat 8-bit backgrounds from counting as signal
    foreground = smooth > background + 5.0 * max(smooth_noise, 0.28 * noise)
    fg_fraction = float(foreground.mean())
    # the bright cores of the objects: a dim halo or a few specks above the threshold must not decide it
    signal = float(np.percentile(smooth[foreground], 90)) if foreground.any() else background
    contrast = max(signal - background, smooth_noise)
    p01, median, p99 = (float(v) for v in np.percentile(values, [1, 50, 99]))
    laplace_sq, counted = 0.0, 0  # the Laplacian's energy on the foreground, a block of rows at a time
    for start in range(0, smooth.shape[0], ROWS_PER_BLOCK):
        top, stop = max(0, start - 1), min(smooth.shape[0], start + ROWS_PER_BLOCK + 1)
        inner = slice(start - top, start - top + min(ROWS_PER_BLOCK, smooth.shape[0] - start))
        laplace = ndi.laplace(smooth[top:stop])[inner]
        mask = foreground[start : start + ROWS_PER_BLOCK]
        laplace_sq += float(np.sum(laplace[mask] ** 2))
        counted += int(mask.sum())
    del smooth, foreground  # what follows needs the image only: one full-size float array fewer at its peak
    std, variance = float(values.std()), float(values.var())
    saturated = float(100.0 * np.mean(values >= hi)) if hi > lo else 100.0
    minimal = float(100.0 * np.mean(values <= lo)) if hi > lo else 100.0
    blur = blur_score(values)
    slope = power_log_log_slope(values, overwrite=values is not img)  # last: it may reuse the copy
    return {
        "mean": mean,
        "std": std,
        "min": lo,
        "max": hi,
        "median": median,
        "p01": p01,
        "p99": p99,
        "focus_normalized_variance": variance / mean if mean > 0 else 0.0,
        "focus_laplacian": float(np.sqrt(laplace_sq / counted) / contrast) if counted else 0.0,
        "blur": blur,
        "power_log_log_slope": slope,
        "percent_saturated": saturated,
        "percent_minimal": minimal,
        "percent_non_finite": non_finite,
        "background": background,
        "noise": noise,
        "signal": signal,
        "snr": float((signal - background) / noise),
        "foreground_fraction": fg_fraction,
    }


def unit_metrics(array: np.ndarray, channel_names: list[str]) -> dict[str, dict[str, float]]:
    """Metrics for every channel of a CYX unit, keyed by channel name."""
    return {name: channel_metrics(array[i]) for i, name in enumerate(channel_names)}


def quality_one(unit: dict[str, Any], label: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(metrics, None) for one imported unit, or (None, failure record)."""
    from .acquisition import read_unit

    try:
        return unit_metrics(read_unit(unit["image_path"], raw=True), unit["channel_names"]), None
    except Exception as exc:  # noqa: BLE001
        failure = Failure.from_exception("quality", unit["source_path"], exc, unit_id=unit["unit_id"])
        print(f"[quality {label}] FAILED {unit['unit_id']}: {failure.reason}", file=sys.stderr)
        return None, failure.__dict__


def quality_batch(import_manifest: str | Path, out_path: str | Path) -> dict[str, Any]:
    """Metrics for every unit of an imported batch; a unit that fails is recorded, the rest continue."""
    doc = read_json(import_manifest)
    results: dict[str, Any] = {}
    failures: list[dict[str, Any]] = []
    for unit in doc["units"]:
        metrics, failure = quality_one(unit, doc["batch"])
        if failure:
            failures.append(failure)
        else:
            results[unit["unit_id"]] = metrics
    out = {"batch": doc["batch"], "metrics": results, "failures": failures}
    write_json(out_path, out)
    return out

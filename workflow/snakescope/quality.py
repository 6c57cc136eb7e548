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
    values = image.ravel().astype(np.float64)
    level, sigma = float(np.median(values)), float(1.4826 * np.median(np.abs(values - np.median(values))))
    for _ in range(iterations):
        kept = values[values <= level + clip * max(sigma, 1e-12)]
        if kept.size < 16:
            break
        level = float(np.median(kept))
        sigma = float(1.4826 * np.median(np.abs(kept - level)))
    return level, max(sigma, float(np.finfo(np.float32).eps))


def power_log_log_slope(image: np.ndarray) -> float:
    """Slope of the radially averaged power spectrum in log-log space; more negative means blurrier."""
    img = image.astype(np.float64)
    img = img - img.mean()
    h, w = img.shape
    power = np.abs(np.fft.fftshift(np.fft.fft2(img))) ** 2
    yy, xx = np.indices(power.shape)
    radius = np.hypot(yy - h // 2, xx - w // 2).astype(int)
    counts = np.bincount(radius.ravel())
    radial = np.bincount(radius.ravel(), power.ravel()) / np.maximum(counts, 1)
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
    values = image.astype(np.float64)
    diffs = np.diff(values, axis=-1 if values.shape[-1] > 1 else 0).ravel()  # a 1-pixel-wide image: vertical neighbours
    noise = float(1.4826 * np.median(np.abs(diffs - np.median(diffs))) / np.sqrt(2)) if diffs.size else 0.0
    floor = 1.0 if np.issubdtype(image.dtype, np.integer) else float(np.finfo(np.float32).eps)
    return max(noise, floor)


def blur_score(image: np.ndarray) -> float:
    """Perceptual blur from 0 (sharp) to 1 (blurred): how much a re-blur changes neighbour differences.

    The no-reference metric of Crete et al. (2007), ``skimage.measure.blur_effect``; it compares the
    image with itself, so it does not depend on brightness, and noise only makes an image look sharper
    (it can hide blur, never invent it).
    """
    from skimage.measure import blur_effect

    if min(image.shape) < 4:
        return float("nan")
    size = int(min(11, min(image.shape) // 2))
    return float(blur_effect(image.astype(np.float64), h_size=size))


def channel_metrics(image: np.ndarray) -> dict[str, float]:
    """Quality metrics of one 2D channel; see config/README.md for one line on each."""
    img = np.asarray(image)
    non_finite = float(100.0 * np.mean(~np.isfinite(img))) if np.issubdtype(img.dtype, np.floating) else 0.0
    img = finite(img)
    values = img.astype(np.float64)
    mean = float(values.mean())
    lo, hi = float(values.min()), float(values.max())
    smooth = ndi.gaussian_filter(values, 1.0)
    background, smooth_noise = robust_background(smooth)
    noise = pixel_noise(img)
    # sigma=1 smoothing lowers white noise about 3.5x; the floor keeps flat 8-bit backgrounds from counting as signal
    foreground = smooth > background + 5.0 * max(smooth_noise, 0.28 * noise)
    fg_fraction = float(foreground.mean())
    # the bright cores of the objects: a dim halo or a few specks above the threshold must not decide it
    signal = float(np.percentile(smooth[foreground], 90)) if foreground.any() else background
    laplace = ndi.laplace(smooth)
    contrast = max(signal - background, smooth_noise)
    return {
        "mean": mean,
        "std": float(values.std()),
        "min": lo,
        "max": hi,
        "median": float(np.median(values)),
        "p01": float(np.percentile(values, 1)),
        "p99": float(np.percentile(values, 99)),
        "focus_normalized_variance": float(values.var() / mean) if mean > 0 else 0.0,
        "focus_laplacian": float(np.sqrt(np.mean(laplace[foreground] ** 2)) / contrast) if foreground.any() else 0.0,
        "blur": blur_score(values),
        "power_log_log_slope": power_log_log_slope(values),
        "percent_saturated": float(100.0 * np.mean(values >= hi)) if hi > lo else 100.0,
        "percent_minimal": float(100.0 * np.mean(values <= lo)) if hi > lo else 100.0,
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


def quality_batch(import_manifest: str | Path, out_path: str | Path) -> dict[str, Any]:
    """Metrics for every unit of an imported batch; a unit that fails is recorded, the rest continue."""
    from .acquisition import read_unit

    doc = read_json(import_manifest)
    results: dict[str, Any] = {}
    failures: list[dict[str, Any]] = []
    for unit in doc["units"]:
        try:
            results[unit["unit_id"]] = unit_metrics(read_unit(unit["image_path"], raw=True), unit["channel_names"])
        except Exception as exc:  # noqa: BLE001
            failure = Failure.from_exception("quality", unit["source_path"], exc, unit_id=unit["unit_id"])
            failures.append(failure.__dict__)
            print(f"[quality {doc['batch']}] FAILED {unit['unit_id']}: {failure.reason}", file=sys.stderr)
    out = {"batch": doc["batch"], "metrics": results, "failures": failures}
    write_json(out_path, out)
    return out

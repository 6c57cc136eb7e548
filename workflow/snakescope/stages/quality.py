"""Stage 2, classical image-quality metrics per unit and channel (after CellProfiler's MeasureImageQuality)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..core.images import finite
from ..core.background import flattened, unit_surface
from ..core.records import Failure, read_json, write_json
from ..core.settings import RELATIVE_CHECKS


def robust_background(image: np.ndarray, iterations: int = 5, clip: float = 3.0) -> tuple[float, float]:
    """Background level and noise (sigma) by iterative sigma clipping of the bright tail: median and 1.4826 MAD of
    the pixels at most ``clip`` sigmas above the level, repeated. The pixels kept are always the darkest ones, so
    every step reads its medians from one sort (:class:`..core.orderstats.SortedValues`) instead of partitioning
    the pixels again."""
    from ..core.orderstats import SortedValues

    values = SortedValues(image)
    level = values.median()
    sigma = 1.4826 * values.median_abs_deviation(level)
    previous = values.size
    for _ in range(iterations):
        kept = values.count_at_most(level + clip * max(sigma, 1e-12))
        if kept < 16 or kept == previous:  # the same pixels as before: level and sigma would not change
            break
        previous = kept
        level = values.median(kept)
        sigma = 1.4826 * values.median_abs_deviation(level, kept)
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
    power_sum, counts = radial_power(image, overwrite)
    return slope_of(power_sum / np.maximum(counts, 1), min(image.shape))


def radial_power(image: np.ndarray, overwrite: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The power spectrum of the (mean-centred) image summed by integer radius: (power sums, pixel counts)."""
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
    return power_sum, counts


def slope_of(radial: np.ndarray, side: int) -> float:
    """The log-log slope of a radial power average over frequencies 1 .. side / 2."""
    freqs = np.arange(1, side // 2)
    keep = radial[freqs] > 0
    if keep.sum() < 3:
        return 0.0
    slope, _ = np.polyfit(np.log(freqs[keep]), np.log(radial[freqs][keep]), 1)
    return float(slope)


def smallest_step(differences: np.ndarray) -> float:
    """The smallest non-zero absolute value of ``differences`` (neighbour differences): the data's quantisation
    step (one grey level of 8-bit data, also when it is stored as floats in 0..1 or shifted into 16 bits), or 0
    when all are zero. Looked at a million values at a time (no full-size temporary)."""
    step = np.inf
    flat = differences.ravel()
    for start in range(0, flat.size, 1 << 20):
        part = np.abs(flat[start:start + (1 << 20)])
        part = part[part > 0]
        if part.size:
            step = min(step, float(part.min()))
    return step if np.isfinite(step) else 0.0


def noise_floor(step: float, integer: bool) -> float:
    """The smallest noise SD a channel is given: one quantisation step (one grey level, at least, for integers).
    Below it noise is not measurable (a flat, clipped 8-bit background), and dividing by zero would call any field
    perfect; a floor in the data's own step keeps SNR the same however the same data are stored (tested)."""
    return max(step, 1.0 if integer else float(np.finfo(np.float32).eps))


def pixel_noise(image: np.ndarray) -> float:
    """Noise SD of single pixels from differences of horizontal neighbours (robust: 1.4826 MAD / sqrt 2).

    Differences cancel the content that varies slowly (nuclei, background gradients); the median
    ignores the edges. The floor is one quantisation step of the data (:func:`noise_floor`).
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
    noise, step = 0.0, smallest_step(diffs)
    if diffs.size:
        from ..core.orderstats import SortedValues

        ordered = SortedValues(diffs)  # one sort for the median and the MAD around it
        del diffs
        noise = float(1.4826 * ordered.median_abs_deviation(ordered.median()) / np.sqrt(2))
    return max(noise, noise_floor(step, np.issubdtype(image.dtype, np.integer)))


def blur_score(image: np.ndarray) -> float:
    """Perceptual blur from 0 (sharp) to 1 (blurred): how much a re-blur changes neighbour differences.

    The no-reference metric of Crete et al. (2007), as ``skimage.measure.blur_effect`` computes it (the same
    filters and sums, tested equal), made a block of rows at a time with a halo wide enough that every kept
    row sees what it would in the whole image. It compares the image with itself, so it does not depend on
    brightness, and noise only makes an image look sharper (it can hide blur, never invent it).
    """
    if min(image.shape) < 4:
        return float("nan")
    size = blur_size(image.shape)
    values = np.asarray(image, np.float64)
    h = values.shape[0]
    halo = size // 2 + 2
    sums = np.zeros((2, 2))  # per axis: sum of sharp edges, sum of what re-blurring removed
    for start in range(2, h - 1, ROWS_PER_BLOCK):
        stop = min(h - 1, start + ROWS_PER_BLOCK)  # rows kept: skimage sums rows 2 .. h-2 and columns 2 .. w-2
        top, bottom = max(0, start - halo), min(h, stop + halo)
        sums += blur_sums(values[top:bottom], slice(start - top, stop - top), size)
    return blur_from(sums)


def blur_size(shape: tuple[int, ...]) -> int:
    return int(min(11, min(shape) // 2))


def blur_sums(block: np.ndarray, kept_rows: slice, size: int) -> np.ndarray:
    """A block of rows' share of :func:`blur_score`'s sums (``kept_rows``: its rows that count)."""
    from skimage.filters import sobel

    eps = 1e-10  # skimage's guard against numerical instabilities
    sums = np.zeros((2, 2))
    keep = (kept_rows, slice(2, block.shape[1] - 1))
    for axis in (0, 1):
        sharp = np.maximum(eps, np.abs(sobel(block, axis=axis)))
        blurred = np.maximum(eps, np.abs(sobel(ndi.uniform_filter1d(block, size, axis=axis), axis=axis)))
        sums[axis, 0] += sharp[keep].sum()
        sums[axis, 1] += np.maximum(0, sharp - blurred)[keep].sum()
    return sums


def blur_from(sums: np.ndarray) -> float:
    return float(max(abs(m1 - m2) / m1 for m1, m2 in sums))


def channel_metrics(image: np.ndarray, surface: Any = None) -> dict[str, float]:
    """Quality metrics of one 2D channel; see config/README.md for one line on each. ``surface``: the channel's
    smooth background fitted at import (:mod:`.background`): background, foreground, signal and focus are measured
    on the channel with it flattened (a ramp is not signal, and does not widen the background's spread);
    intensities, saturation, noise, blur and the spectrum on the pixels as they are."""
    img = np.asarray(image)
    non_finite = float(100.0 * np.mean(~np.isfinite(img))) if np.issubdtype(img.dtype, np.floating) else 0.0
    img = finite(img)
    values = img.astype(np.float64)
    mean = float(values.mean())
    lo, hi = float(values.min()), float(values.max())
    noise = pixel_noise(img)  # before the smoothed copy exists (peak memory)
    smooth = ndi.gaussian_filter(np.asarray(flattened(values, surface), np.float64), 1.0)
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
        "background_unevenness": float(surface.range / contrast) if surface is not None else 0.0,
    }


# Large planes (blocks.is_large) are measured a strip of rows at a time (memory follows the strip): medians and
# percentiles from histograms (exact for integer images, to 1/65536 of the range for float ones), the power
# spectrum's slope from the average spectrum of SPECTRUM_TILE-square tiles (Welch's method) instead of one.
STRIP_PIXELS = 1 << 22
SPECTRUM_TILE = 2048
STRIP_HALO = 8  # rows either side: the σ=1 smoothing (4), the blur filters (7) and the Laplacian (1) see whole rows


def channel_metrics_by_strips(reader: Any, channel: int) -> dict[str, float]:
    """:func:`channel_metrics` of one channel of a large plane read a strip at a time (``reader``: a
    :class:`blocks.PlaneReader`); the same definitions, within the precision said at WHOLE_PLANE_PIXELS."""
    from ..core.blocks import Histogram

    h, w = reader.shape
    integer = np.issubdtype(reader.dtype, np.integer)
    rows = max(16, STRIP_PIXELS // w)
    starts = range(0, h, rows)

    def raw(top: int, bottom: int) -> np.ndarray:
        return reader.read(channel, (slice(top, bottom), slice(0, w))).astype(np.float64)

    bad, lo, hi, total = 0, np.inf, -np.inf, 0.0
    for start in starts:
        values = raw(start, min(h, start + rows))
        good = np.isfinite(values)
        bad += int(values.size - good.sum())
        values = values[good]
        if values.size:
            lo, hi, total = min(lo, float(values.min())), max(hi, float(values.max())), total + float(values.sum())
    if not np.isfinite(lo):
        lo = hi = 0.0
    fill = 0.0
    if bad:  # NaN/inf pixels take the median of the finite ones, as acquisition.finite does
        finite_values = Histogram(lo, hi, integer)
        for start in starts:
            values = raw(start, min(h, start + rows))
            finite_values.add(values[np.isfinite(values)])
        fill = finite_values.median() if finite_values.total else 0.0
    mean = (total + bad * fill) / (h * w)

    def strip(start: int, halo: int) -> tuple[np.ndarray, slice]:
        top, bottom = max(0, start - halo), min(h, start + rows + halo)
        values = raw(top, bottom)
        if bad:
            values[~np.isfinite(values)] = fill
        return values, slice(start - top, min(h, start + rows) - top)

    every, differences, smooth_values = Histogram(lo, hi, integer), Histogram(lo - hi, hi - lo, integer), Histogram(lo, hi, False)
    squares, saturated, minimal, blur, step = 0.0, 0, 0, np.zeros((2, 2)), np.inf
    size = blur_size((h, w))
    for start in starts:
        values, kept = strip(start, STRIP_HALO)
        core = values[kept]
        every.add(core)
        squares += float(np.sum((core - mean) ** 2))
        saturated += int(np.sum(core >= hi))
        minimal += int(np.sum(core <= lo))
        core_differences = np.diff(core, axis=-1)
        differences.add(core_differences)
        step = min(step, smallest_step(core_differences) or np.inf)
        smooth_values.add(ndi.gaussian_filter(values, 1.0)[kept])
        first, last = max(2, start), min(h - 1, start + rows)  # blur_score's rows 2 .. h-2
        if first < last:
            blur += blur_sums(values, slice(first - start + kept.start, last - start + kept.start), size)
    centre = differences.median()
    noise = max(float(1.4826 * differences.median_abs_deviation(centre) / np.sqrt(2)),
                noise_floor(step if np.isfinite(step) else 0.0, integer))
    background, smooth_noise = robust_background_of(smooth_values)
    threshold = background + 5.0 * max(smooth_noise, 0.28 * noise)
    signal_values = smooth_values.where(smooth_values.values() > threshold)
    laplace_sq, counted = 0.0, 0
    for start in starts:
        values, kept = strip(start, STRIP_HALO)
        smooth = ndi.gaussian_filter(values, 1.0)
        mask = smooth[kept] > threshold
        laplace_sq += float(np.sum(ndi.laplace(smooth)[kept][mask] ** 2))
        counted += int(mask.sum())
    signal = signal_values.percentile(90) if counted else background
    contrast = max(signal - background, smooth_noise)
    variance = squares / (h * w)
    tile = min(SPECTRUM_TILE, h, w)
    power, counts = 0.0, 0.0
    for y in range(0, h - tile + 1, tile):
        for x in range(0, w - tile + 1, tile):
            values = reader.read(channel, (slice(y, y + tile), slice(x, x + tile))).astype(np.float64)
            if bad:
                values[~np.isfinite(values)] = fill
            tile_power, tile_counts = radial_power(values, overwrite=True)
            power, counts = power + tile_power, counts + tile_counts
    return {
        "mean": mean,
        "std": float(np.sqrt(variance)),
        "min": lo,
        "max": hi,
        "median": every.percentile(50),
        "p01": every.percentile(1),
        "p99": every.percentile(99),
        "focus_normalized_variance": variance / mean if mean > 0 else 0.0,
        "focus_laplacian": float(np.sqrt(laplace_sq / counted) / contrast) if counted else 0.0,
        "blur": blur_from(blur),
        "power_log_log_slope": slope_of(power / np.maximum(counts, 1), tile),
        "percent_saturated": float(100.0 * saturated / (h * w)) if hi > lo else 100.0,
        "percent_minimal": float(100.0 * minimal / (h * w)) if hi > lo else 100.0,
        "percent_non_finite": float(100.0 * bad / (h * w)),
        "background": background,
        "noise": noise,
        "signal": signal,
        "snr": float((signal - background) / noise),
        "foreground_fraction": float(counted / (h * w)),
        "background_unevenness": 0.0,  # large planes are not flattened (config/README.md, import.background)
    }


def robust_background_of(histogram: Any, iterations: int = 5, clip: float = 3.0) -> tuple[float, float]:
    """:func:`robust_background` on a histogram of the values."""
    level = histogram.median()
    sigma = 1.4826 * histogram.median_abs_deviation(level)
    previous = histogram.total
    values = histogram.values()
    for _ in range(iterations):
        kept = histogram.where(values <= level + clip * max(sigma, 1e-12))
        if kept.total < 16 or kept.total == previous:
            break
        previous = kept.total
        level = kept.median()
        sigma = 1.4826 * kept.median_abs_deviation(level)
    return level, max(sigma, float(np.finfo(np.float32).eps))


def unit_metrics(array: np.ndarray, channel_names: list[str], unit: dict[str, Any] | None = None) -> dict[str, dict[str, float]]:
    """Metrics for every channel of a CYX unit, keyed by channel name (``unit``: its record, for the backgrounds fitted
    at import)."""
    return {name: channel_metrics(array[i], unit_surface(unit, name) if unit else None) for i, name in enumerate(channel_names)}


def quality_one(unit: dict[str, Any], label: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(metrics, None) for one imported unit, or (None, failure record)."""
    from ..core.images import read_unit

    try:
        from ..core.blocks import PlaneReader, is_large

        if is_large(unit.get("shape")):
            with PlaneReader(unit["image_path"]) as reader:
                return {name: channel_metrics_by_strips(reader, c) for c, name in enumerate(unit["channel_names"])}, None
        return unit_metrics(read_unit(unit["image_path"], raw=True), unit["channel_names"], unit), None
    except Exception as exc:  # noqa: BLE001
        failure = Failure.from_exception("quality", unit["source_path"], exc, unit_id=unit["unit_id"])
        print(f"[quality {label}] FAILED {unit['unit_id']}: {failure.reason}", file=sys.stderr)
        return None, failure.__dict__


def quality_batch(import_manifest: str | Path, out_path: str | Path, workers: int = 1) -> dict[str, Any]:
    """Metrics for every unit of an imported batch, ``workers`` fields at a time; a unit that fails is recorded,
    the rest continue."""
    from ..core.fields import by_unit, map_fields

    doc = read_json(import_manifest)
    results, failures = by_unit(doc["units"], map_fields(lambda unit: quality_one(unit, doc["batch"]), doc["units"],
                                                         workers=workers, label=f"quality {doc['batch']}"))
    out = {"batch": doc["batch"], "metrics": results, "failures": failures}
    write_json(out_path, out)
    return out


def display_range(metrics: list[dict[str, float]]) -> dict[str, float] | None:
    """The contrast every field of a channel is shown in: black at the run's median background, white a quarter
    above the run's median nuclear signal (p90 of the foreground), so a dim field looks dim and a clipped one
    white, next to their neighbours."""
    background = [float(m["background"]) for m in metrics if m.get("background") is not None and np.isfinite(float(m["background"]))]
    signal = [float(m["signal"]) for m in metrics if m.get("signal") is not None and np.isfinite(float(m["signal"]))]
    if not background or not signal:
        return None
    low, top = float(np.median(background)), float(np.median(signal))
    return {"low": low, "high": top + 0.25 * max(top - low, 0.0), "fields": len(signal)} if top > low else None


def write_run_reference(quality_jsons: list[str | Path], out_path: str | Path, import_manifests: list[str | Path] = (),
                        plate_column: str = "plate") -> dict[str, Any]:
    """The run's reference for relative quality checks: per channel name, and per plate and channel when the
    sample sheet names plates (plates differ in staining and focus; a field is compared with its own plate)."""
    plates = {}
    for manifest in import_manifests:
        for unit in read_json(manifest)["units"]:
            plate = (unit.get("metadata") or {}).get(plate_column)
            if plate:
                plates[unit["unit_id"]] = plate
    per_channel: dict[str, list[dict[str, float]]] = {}
    per_plate: dict[str, dict[str, list[dict[str, float]]]] = {}
    for path in quality_jsons:
        for uid, channels in read_json(path)["metrics"].items():
            for name, metrics in channels.items():
                per_channel.setdefault(name, []).append(metrics)
                if uid in plates:
                    per_plate.setdefault(plates[uid], {}).setdefault(name, []).append(metrics)
    doc = {"channels": {name: run_reference(values) for name, values in per_channel.items()},
           "display": {name: display_range(values) for name, values in per_channel.items()},
           "plates": {plate: {name: run_reference(values) for name, values in channels.items()} for plate, channels in per_plate.items()},
           "plate_column": plate_column,
           "fields": {name: len(values) for name, values in per_channel.items()}}
    write_json(out_path, doc)
    return doc


def run_reference(metrics: list[dict[str, float]]) -> dict[str, Any]:
    """Median and MAD of the relative-check metrics over a run's fields (log scale for ratios)."""
    out: dict[str, Any] = {}
    for metric, (transform, _, _) in RELATIVE_CHECKS.items():
        values = np.array([float(m[metric]) for m in metrics if m.get(metric) is not None and np.isfinite(float(m[metric]))])
        if transform == "log":
            values = np.log(values[values > 0])
        if values.size >= 8:  # fewer fields say little about a run
            median = float(np.median(values))
            out[metric] = {"median": median, "mad": float(1.4826 * np.median(np.abs(values - median))), "n": int(values.size),
                           "scale": transform}
    return out


def run_quality(*, imported: str, quality: str, threads: int = 1) -> None:
    """Rule ``quality_metrics``: every channel's metrics of a batch's units -> ``quality/<batch>.json``."""
    from ..core.layout import manifest
    from ..core.progress import stage_progress

    doc = quality_batch(manifest(imported), quality, workers=threads)
    stage_progress("quality", doc, len(doc["metrics"]))


def run_quality_reference(*, quality: list[str], imported: list[str], reference: str, plate_column: str) -> None:
    """Rule ``quality_reference``: the run's median and MAD of the metrics, per channel and plate (relative checks)."""
    from ..core.layout import manifest

    doc = write_run_reference(quality, reference, [manifest(folder) for folder in imported], plate_column)
    print(f"quality reference: {doc['fields']} field(s) per channel", file=sys.stderr)

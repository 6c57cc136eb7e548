"""Inference tiles larger (and smaller) than the model declares (config key ``model.tile_px``), validated per model.

Many bioimage.io models declare one fixed input size (the shared nuclei U-Net: 512 × 512 with a
32-pixel halo), so a 1024² field costs nine overlapping tiles, 2.25 times its pixels, and a 256² field
one 512² tile, four times its pixels. A fully convolutional network usually accepts any size that is a
multiple of its downsampling factor, but only the model's architecture decides that, so snakescope
never assumes it:

1. ONNX weights get a copy whose spatial input and output sizes are free (:func:`.engines.free_size_onnx`; the rest of the graph is
   untouched); TorchScript weights are used as they are.
2. The model's own test input, mirrored out to a field that needs several of the model's tiles, is
   predicted twice: with the model's tiles and with one larger tile; a crop smaller than the model's
   tile likewise, with its own small tile. The smallest size step at which the larger tile runs and
   agrees (mean probability difference and foreground agreement within :data:`TOLERANCE`) is kept; the
   small tile, when it agrees too, lets small fields run at their own size. If nothing agrees, a
   ``model.tile_px`` the user set fails naming the key; the default (``auto``) keeps the model's tiles.
3. The memory the runtime holds per tile pixel is measured on the larger tile; ``auto`` takes tiles up
   to the edge that keeps it within :data:`AUTO_TILE_MEMORY_MB`, each field in one tile when it fits,
   else in equal tiles that cover it with the least padding.
4. The figures are recorded in ``models/model_check.json`` and cached per model digest and tile request.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

STEP_CANDIDATES = (8, 16, 32, 64)
# The model's own tiles do not agree with themselves exactly: moving the shared U-Net's 512-px tile grid by
# 37-224 px over its test input changed probabilities by 0.001-0.004 on average (up to 0.65 at single pixels
# near tile seams) and the foreground (p > 0.5) at 0.09-0.35 % of pixels. Larger tiles must stay within that
# (measured: mean 0.0012, 0.10 % of pixels); an architecture that cannot take other sizes misses by far more.
TOLERANCE = {"mean_abs_difference": 0.005, "foreground_agreement": 0.995}


# What the runtime may hold for one tile with ``model.tile_px: auto`` (activations; the field and the model come on
# top, see core.costs): within the inference rule's usual 6 GB. The shared U-Net holds about 670 bytes per tile
# pixel, so auto tiles reach 2280 px: a 2048² field runs as one tile, a 4096² one as four (bench/README).
AUTO_TILE_MEMORY_MB = 3500
DEFAULT_BYTES_PER_PIXEL = 1000  # where the runtime's peak memory cannot be read (no /proc)
TILE_CHECK_VERSION = 5  # part of the cache key: a check recorded by an older rule is run again


@dataclass(frozen=True)
class TileRule:
    """Sizes the model runs at: ``minimum + n * step`` (halo excluded) and tiles up to ``tile_px`` (halo included)."""

    tile_px: int
    minimum: int
    step: int

    @property
    def largest(self) -> int:
        return self.minimum + max(0, (self.tile_px - self.minimum) // self.step) * self.step

    def fits(self, length: int) -> bool:
        """Whether an axis of ``length`` (halo included) runs as one tile."""
        return length <= self.largest

    def block(self, length: int, halo: int = 0) -> int:
        """Tile edge (halo included) for an axis of ``length`` (halo excluded) that does not fit in one tile: the
        fewest tiles of at most :attr:`largest`, made equal, so the last one is not mostly padding."""
        inner_max = self.largest - 2 * halo
        if inner_max < self.step:
            return self.largest
        count = -(-length // inner_max)
        inner = -(-(-(-length // count)) // self.step) * self.step
        edge = max(self.minimum, inner + 2 * halo)
        return min(self.largest, self.minimum + -(-(edge - self.minimum) // self.step) * self.step)

    def as_record(self) -> dict[str, int]:
        return asdict(self)


def tile_request(value: Any) -> int | str:
    """``model.tile_px`` as asked: ``"auto"`` (also when unset), ``"model"`` (the model's own tiles) or an edge."""
    if value is None or value == "auto":
        return "auto"
    if value == "model":
        return "model"
    if isinstance(value, bool) or not isinstance(value, int) or value < 16:
        raise ValueError(f"config key model.tile_px: {value!r} is not auto, model or a tile edge of at least 16 px")
    return value


def auto_tile_px(bytes_per_pixel: float, minimum: int, step: int, budget_mb: int = AUTO_TILE_MEMORY_MB) -> int:
    """The largest tile edge (halo included) whose runtime memory stays within ``budget_mb``."""
    edge = int((budget_mb * 1e6 / max(bytes_per_pixel, 1.0)) ** 0.5)
    return max(minimum, minimum + (edge - minimum) // step * step)


def _proc_status_kb(field: str) -> int | None:
    try:
        for line in open("/proc/self/status", encoding="ascii"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def peak_growth_bytes(run: Callable[[], Any]) -> tuple[Any, int | None]:
    """``run()`` and how far this process's resident memory rose above where it was (Linux: freed memory handed
    back and the peak reset through /proc/self/clear_refs first); None where that cannot be read."""
    try:  # freed memory the allocator still holds would be reused unseen: hand it back first (glibc)
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        before = _proc_status_kb("VmRSS")
    except OSError:
        before = None
    result = run()
    peak = _proc_status_kb("VmHWM")
    if before is None or peak is None:
        return result, None
    return result, max(0, peak - before) * 1024


def validation_image(test_input: np.ndarray, fixed: int, halo: int, tile_px: int) -> np.ndarray:
    """The model's test input (CYX) mirrored out to a field the model's own tiles cover in several blocks
    and the larger tile in one: odd-sized, so padding and cropping are exercised too."""
    side = max(fixed + 2 * halo + 1, min(tile_px, 2 * fixed) - 4 * halo - 5)
    pad_y, pad_x = max(0, side - test_input.shape[-2]), max(0, side - test_input.shape[-1])
    image = np.pad(test_input, ((0, 0), (0, pad_y), (0, pad_x)), mode="reflect" if min(test_input.shape[-2:]) > 1 else "edge")
    return image[:, :side, :side]


def agreement(reference: np.ndarray, candidate: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """How closely two probability maps agree: the largest and mean absolute difference, foreground agreement."""
    difference = np.abs(reference.astype(np.float32) - candidate.astype(np.float32))
    return {
        "max_abs_difference": round(float(difference.max()), 5),
        "mean_abs_difference": round(float(difference.mean()), 6),
        "foreground_agreement": round(float(np.mean((reference > threshold) == (candidate > threshold))), 6),
    }


def agrees(figures: dict[str, float]) -> bool:
    return (figures["mean_abs_difference"] <= TOLERANCE["mean_abs_difference"]
            and figures["foreground_agreement"] >= TOLERANCE["foreground_agreement"])


def validate_tiles(settings: Any, test_input: np.ndarray, predictor: Callable[..., Any],
                   tile_px: int | None, engine: str = "onnxruntime") -> dict[str, Any]:
    """Find the step at which tiles up to ``tile_px`` (and small fields' own tiles) reproduce the model's own tiles
    on its test input. ``tile_px`` None (automatic tiles): sizes up to twice the model's tile are validated.
    ``engine`` (``model.engine``): with ``auto`` or ``openvino``, the larger tiles are then run by OpenVINO too and
    compared with the model's own tiles in the same way (:func:`validate_engine`).

    ``predictor(settings, tile_rule=None, engine=...)`` loads the model (inference's ``Predictor``): passed in, so
    this check stays below the inference stage that calls it.

    Returns the record for model_check.json: ``status`` passed (with ``rule`` and ``engine``) or failed (with the
    figures).
    """
    from dataclasses import replace

    own = predictor(replace(settings, tile_px="model"))
    fixed = own.size_rules.get("y", (1, 1))[0]
    halo = own.halo.get("y", 0)
    tile_px = tile_px or 2 * max(fixed, 64) + 2 * halo
    whole = validation_image(test_input, fixed, halo, tile_px)
    tried: list[dict[str, Any]] = []
    for step in (s for s in STEP_CANDIDATES if (2 * halo) % s == 0):  # the field plus its halo stays a valid size
        # sides just under an odd multiple of the step (padded to it, so a step the architecture cannot take shows):
        # a field larger than the model's tile, and one smaller when the step allows it
        side = odd_multiple_below(whole.shape[-1], step)
        side = side if side > fixed else (odd_multiple_below(fixed, step) + 2 * step)
        image = mirrored(whole, side - 3)
        small_side = odd_multiple_below(max(2 * halo + 8, fixed // 2), step)
        small = mirrored(whole, small_side - 3) if small_side < fixed else None
        reference = own.predict(image, "tile-check")
        reference_small = own.predict(small, "tile-check-small") if small is not None else None
        rule = TileRule(tile_px=tile_px, minimum=step, step=step)
        try:
            larger = predictor(settings, tile_rule=rule)
            figures = agreement(reference, larger.predict(image, "tile-check"))
            small_figures = agreement(reference_small, larger.predict(small, "tile-check-small")) if small is not None else None
            larger.close()
        except Exception as exc:  # noqa: BLE001 - onnxruntime/torch reject a size the architecture cannot take
            tried.append({"step": step, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}"})
            continue
        tried.append({"step": step, **figures, "small_field": small_figures})
        if agrees(figures):
            own.close()
            minimum = step if small_figures and agrees(small_figures) else fixed
            checked = validate_engine(settings, predictor, rule, engine, (image, reference),
                                      (small, reference_small) if minimum == step else None)
            return {"status": "passed", "rule": TileRule(tile_px=tile_px, minimum=minimum, step=step).as_record(),
                    "engine": checked,
                    "image_shape": list(image.shape[-2:]), **figures,
                    "small_field": {"image_shape": list(small.shape[-2:]) if small is not None else None,
                                    **(small_figures or {}), "own_size": minimum == step},
                    "halo": halo, "tolerance": TOLERANCE, "tried": tried}
    own.close()
    return {"status": "failed", "image_shape": list(whole.shape[-2:]), "halo": halo, "tolerance": TOLERANCE, "tried": tried}


def validate_engine(settings: Any, predictor: Callable[..., Any], rule: TileRule, engine: str,
                    field: tuple[np.ndarray, np.ndarray], small: tuple[np.ndarray, np.ndarray] | None) -> dict[str, Any]:
    """Which runtime runs the validated tiles: OpenVINO (``engine`` auto or openvino) when it is installed and its
    probabilities on the check's field (and small crop, when small fields run at their own size) agree with the
    model's own tiles (``field``, ``small``: image and reference) within :data:`TOLERANCE`; else onnxruntime. The
    record names the engine, its version and precision, the figures and, when OpenVINO is not used, why."""
    from .engines import Engine, onnxruntime_engine, openvino_version

    if settings.weight_format != "onnx":
        return {**Engine(settings.weight_format).as_record(), "reason": "OpenVINO and onnxruntime run ONNX weights"}
    if engine == "onnxruntime":
        return {**onnxruntime_engine().as_record(), "reason": "model.engine: onnxruntime"}
    if openvino_version() is None:
        return {**onnxruntime_engine().as_record(), "openvino": "failed", "reason": "OpenVINO is not installed here"}
    try:
        candidate = predictor(settings, tile_rule=rule, engine="openvino")
        figures = agreement(field[1], candidate.predict(field[0], "engine-check"))
        small_figures = agreement(small[1], candidate.predict(small[0], "engine-check-small")) if small else None
        used = candidate.engine
        candidate.close()
    except Exception as exc:  # noqa: BLE001 - OpenVINO cannot compile or run an operator of this model
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}"
        return {**onnxruntime_engine().as_record(), "openvino": "failed", "reason": f"OpenVINO failed ({reason})"}
    if agrees(figures) and (small_figures is None or agrees(small_figures)):
        return {**used, "openvino": "passed", **figures, "small_field": small_figures}
    return {**onnxruntime_engine().as_record(), "openvino": "failed", "openvino_figures": {**figures, "small_field": small_figures},
            "reason": f"OpenVINO ({used['precision']}) does not give the model's own probabilities: mean difference "
                      f"{figures['mean_abs_difference']}, foreground agreement {figures['foreground_agreement']}"}


def mirrored(image: np.ndarray, side: int) -> np.ndarray:
    """A CYX image mirrored out (or cropped) to ``side`` x ``side``."""
    pad = max(0, side - min(image.shape[-2:]))
    if pad:
        image = np.pad(image, ((0, 0), (0, pad), (0, pad)), mode="reflect" if min(image.shape[-2:]) > 1 else "edge")
    return image[:, :side, :side]


def odd_multiple_below(length: int, step: int) -> int:
    """The largest odd multiple of ``step`` not above ``length`` (at least ``step``)."""
    count = max(1, length // step)
    return (count if count % 2 else count - 1 or 1) * step

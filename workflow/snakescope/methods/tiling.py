"""Opt-in larger inference tiles (config key ``model.tile_px``), validated per model.

Many bioimage.io models declare one fixed input size (the shared nuclei U-Net: 512 × 512 with a
32-pixel halo), so a 1024² field costs nine overlapping tiles, 2.25 times its pixels. A fully
convolutional network usually accepts any size that is a multiple of its downsampling factor, but
only the model's architecture decides that, so snakescope never assumes it:

1. ONNX weights get a copy whose spatial input and output sizes are free (the rest of the graph is
   untouched); TorchScript weights are used as they are.
2. The model's own test input, mirrored out to a field that needs several of the model's tiles, is
   predicted twice: with the model's tiles and with the larger tile. The smallest size step at which
   the larger tile runs and agrees (mean probability difference and foreground agreement within
   :data:`TOLERANCE`) is kept; if none agrees, the check fails naming ``model.tile_px``.
3. The figures are recorded in ``models/model_check.json`` and cached per model digest and tile size.
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


@dataclass(frozen=True)
class TileRule:
    """Sizes the model runs at with larger tiles: ``minimum + n * step`` up to ``tile_px``."""

    tile_px: int
    minimum: int
    step: int

    @property
    def largest(self) -> int:
        return self.minimum + max(0, (self.tile_px - self.minimum) // self.step) * self.step

    def fits(self, length: int) -> bool:
        """Whether an axis of ``length`` (halo included) runs as one tile."""
        return length <= self.largest

    def block(self, length: int) -> int:
        """Tile edge (halo included) for an axis of ``length`` (padded to this rule) that does not fit in one tile."""
        return min(length, self.largest)

    def as_record(self) -> dict[str, int]:
        return asdict(self)


def free_size_onnx(data: bytes) -> bytes:
    """A copy of ONNX weights whose inputs' and outputs' last two (spatial) sizes are free."""
    import onnx

    model = onnx.load_from_string(data)
    for tensor in [*model.graph.input, *model.graph.output]:
        dims = tensor.type.tensor_type.shape.dim
        for dim, name in zip(dims[-2:], ("y", "x")):
            dim.ClearField("dim_value")
            dim.dim_param = name
    del model.graph.value_info[:]  # intermediate shapes inferred from the fixed size would contradict the free one
    return model.SerializeToString()


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


def validate_tiles(settings: Any, test_input: np.ndarray, predictor: Callable[..., Any]) -> dict[str, Any]:
    """Find the step at which ``settings.tile_px`` tiles reproduce the model's own tiles on its test input.

    ``predictor(settings, tile_rule=None)`` loads the model (inference's ``Predictor``): passed in, so this check
    stays below the inference stage that calls it.

    Returns the record for model_check.json: ``status`` passed (with ``rule``) or failed (with the figures).
    """
    from dataclasses import replace

    own = predictor(replace(settings, tile_px=None))
    fixed = own.size_rules.get("y", (1, 1))[0]
    image = validation_image(test_input, fixed, own.halo.get("y", 0), settings.tile_px)
    reference = own.predict(image, "tile-check")
    own.close()
    tried: list[dict[str, Any]] = []
    halo = own.halo.get("y", 0)
    for step in (s for s in STEP_CANDIDATES if (2 * halo) % s == 0):  # the field plus its halo stays a valid size
        rule = TileRule(tile_px=settings.tile_px, minimum=fixed, step=step)
        try:
            larger = predictor(settings, tile_rule=rule)
            figures = agreement(reference, larger.predict(image, "tile-check"))
            larger.close()
        except Exception as exc:  # noqa: BLE001 - onnxruntime/torch reject a size the architecture cannot take
            tried.append({"step": step, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}"})
            continue
        tried.append({"step": step, **figures})
        if agrees(figures):
            return {"status": "passed", "rule": rule.as_record(), "image_shape": list(image.shape[-2:]), **figures,
                    "tolerance": TOLERANCE, "tried": tried}
    return {"status": "failed", "image_shape": list(image.shape[-2:]), "tolerance": TOLERANCE, "tried": tried}

"""What a job needs, from the fields it will process: memory per stage as a base plus bytes per pixel of what
the stage holds of the batch's largest field at once (the field, or its block once the field is large). The
figures are measured by ``bench/large_image.py`` (real nuclei mosaics, real U-Net, one process per stage, peak
RSS) and given 25 % headroom; README "Cost model" has the table and the times.

The workflow's rules call :func:`job_mem_mb` when a job is about to run (the batch's import manifest exists by
then). With the default blocks every field fits the rules' usual memory; a larger ``postprocess.block_px`` makes
post-processing hold more of a large field, and its jobs ask for that. A ``set-resources`` entry in a profile
still overrides it.
"""

from __future__ import annotations

from pathlib import Path

from .records import read_json

# stage: (base MB, bytes per pixel held); slopes between 4096² and 8192² fields before the stages worked by blocks
STAGE_MEMORY = {
    "quality": (300, 35),
    "infer": (600, 16),
    "postprocess": (300, 55),
    "review": (300, 8),
    "refinement": (300, 55),  # the LLM's critique may re-run post-processing (not on large fields)
    "gallery": (300, 12),
}
HEADROOM = 1.25


def pixels_held(stage: str, pixels: int, postprocess_block_px: int = 2048, postprocess_overlap_px: int = 256) -> int:
    """The most pixels a stage holds at once for a field of ``pixels``: the field itself up to the size where the
    stage starts to work by blocks or strips, the block (plus its overlap) beyond (``blocks.is_large``;
    post-processing: its ``block_px`` and ``block_overlap_px``)."""
    from .blocks import LARGE_SIDE

    if stage == "postprocess":
        return min(pixels, (postprocess_block_px + 2 * postprocess_overlap_px) ** 2)
    return min(pixels, LARGE_SIDE**2)


def largest_field_pixels(manifest: str | Path) -> int | None:
    """Pixels (Y x X) of the largest unit of an import manifest; None when there is no manifest yet."""
    path = Path(manifest)
    if not path.is_file():
        return None
    units = read_json(path).get("units", [])
    sizes = [int(u["shape"][-1]) * int(u["shape"][-2]) for u in units if len(u.get("shape", [])) >= 2]
    return max(sizes, default=None)


def tile_mb(model_check: str | Path | None, pixels: int) -> float:
    """What the model runtime holds (MB) for the largest tile a field of ``pixels`` uses with the tiles the model
    check validated (``model.tile_px``; its measured bytes per tile pixel); 0 with the model's own tiles, which the
    inference stage's base covers."""
    path = Path(model_check) if model_check else None
    tiling = read_json(path).get("tiling") or {} if path and path.is_file() else {}
    if tiling.get("status") != "passed":
        return 0.0
    edge = int(tiling["rule"]["tile_px"])
    return float(tiling.get("bytes_per_tile_pixel", 0)) * min(edge * edge, 2 * pixels) / 1e6


def checked_engine(model_check: str | Path | None) -> dict | None:
    """The engine the model check validated for the tiles (``tiling.engine``), or None."""
    path = Path(model_check) if model_check else None
    return ((read_json(path).get("tiling") or {}).get("engine") if path and path.is_file() else None) or None


def inference_streams(engine: dict | None, threads: int | None) -> int:
    """Fields an inference job predicts side by side: one per thread with OpenVINO (each in its own stream on one
    thread, which uses the cores better than one field on all of them: a field's reading, normalising and writing
    run beside the other's prediction), one with onnxruntime (its threads share each field)."""
    return max(1, threads or 1) if (engine or {}).get("name") == "openvino" else 1


def job_mem_mb(manifest: str | Path, stage: str, floor: int, model_check: str | Path | None = None, workers: int = 1,
               **blocks: int) -> int:
    """Memory (MB) for one job of ``stage`` on the batch of ``manifest``: at least ``floor`` (the rule's usual
    value, and what a dry run shows before the batch is imported), more for fields that hold more than that
    before the stage works by blocks. ``blocks``: post-processing's block settings (:func:`pixels_held`);
    ``model_check``: inference's tiles (:func:`tile_mb`); ``workers``: fields processed side by side, each holding
    its own (``core.fields``; inference: the job's threads, of which :func:`inference_streams` takes its fields)."""
    pixels = largest_field_pixels(manifest)
    if pixels is None:
        return floor
    if stage == "infer":
        workers = inference_streams(checked_engine(model_check), workers)
    base, per_pixel = STAGE_MEMORY[stage]
    tiles = tile_mb(model_check, pixels) if stage == "infer" else 0.0
    held = per_pixel * pixels_held(stage, pixels, **blocks) / 1e6
    return max(floor, int(HEADROOM * (base + max(1, workers) * (tiles + held))))

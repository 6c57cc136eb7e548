"""The inference stage at its defaults against the fastest plain onnxruntime configuration found for the same outputs.

    python bench/inference_throughput.py [--sizes 256 1024 2048] [--images 4] [--rounds 3] [--cores N]

For each field size, the stage runs as the infer job runs it: default settings (``model.tile_px: auto``, so
the model check picks the tiles), one Predictor, the job's cores. The baseline is a plain loop over the
same model's ONNX weights with free spatial sizes: normalise, mirror-pad by the halo, cut tiles, run
onnxruntime, stitch. Its configuration is searched, per size: intra-op threads (onnxruntime's default and
1..cores) and graph optimisation level (basic, extended, all) on one tile size, then tile sizes from the
model's own up to the whole field (equal tiles, each a multiple of the size step). Every configuration is
warmed at its shape first (onnxruntime plans memory per shape) and timed over the batch; the fastest wins.
The baseline's probabilities are compared with the stage's (foreground agreement), so both compute the
same outputs. Then the stage and the fastest baseline alternate for --rounds rounds (the order flips).

Per size the median of the rounds' ratios (stage images/s over baseline images/s) is printed; the last
line is the worst of the sizes: ``limit_ratio=…`` (target >= 0.9). With --tile-px model the stage keeps
the model's own tiles (the old default), for the before figure; with --engine onnxruntime it runs onnxruntime
instead of the engine the model check validates (OpenVINO where it agrees: snakescope.methods.engines).
Uses the real U-Net in ../shared when present (fixed 512 input, halo 32), else the demo model.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))

from snakescope.core.settings import ModelSettings  # noqa: E402
from snakescope.demo import write_demo_model  # noqa: E402
from snakescope.methods.engines import free_size_onnx  # noqa: E402
from snakescope.stages.inference import batch_predictor, check_model, load_description  # noqa: E402

OPT_LEVELS = ("ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")


def images(n: int, size: int) -> list[np.ndarray]:
    """``n`` demo-like fields of ``size``², nuclei everywhere (256-px demo fields tiled)."""
    from snakescope.demo import DemoField, render_field

    out = []
    per_side = max(1, -(-size // 256))
    for i in range(n):
        tiles = [render_field(DemoField(f"b{i}{j}", 30, seed=1000 * i + j))[0] for j in range(per_side**2)]
        rows = [np.concatenate(tiles[r * per_side:(r + 1) * per_side], axis=1) for r in range(per_side)]
        out.append(np.concatenate(rows, axis=0)[None, :size, :size].astype(np.float32))
    return out


class OnnxLoop:
    """Plain onnxruntime over equal tiles of ``inner`` px (plus ``halo`` each side); ``inner`` >= the field: one tile."""

    def __init__(self, weights: bytes, halo: int, step: int, threads: int, level: str) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel, level)
        self.session = onnxruntime.InferenceSession(weights, sess_options=options, providers=["CPUExecutionProvider"])
        self.name = self.session.get_inputs()[0].name
        self.halo, self.step = halo, step

    def run(self, image: np.ndarray, inner: int) -> np.ndarray:
        h, w = image.shape[-2:]
        x = (image - image.mean()) / (image.std() + 1e-6)
        tiles_y, tiles_x = -(-h // inner), -(-w // inner)
        by = -(-(-(-h // tiles_y)) // self.step) * self.step  # equal tiles, each a multiple of the size step
        bx = -(-(-(-w // tiles_x)) // self.step) * self.step
        ph, pw = tiles_y * by, tiles_x * bx
        padded = np.pad(x, ((0, 0), (self.halo, ph - h + self.halo), (self.halo, pw - w + self.halo)), mode="reflect")
        out = np.empty((ph, pw), np.float32)
        for y in range(0, ph, by):
            for xo in range(0, pw, bx):
                tile = np.ascontiguousarray(padded[None, :, y:y + by + 2 * self.halo, xo:xo + bx + 2 * self.halo])
                result = self.session.run(None, {self.name: tile})[0]
                out[y:y + by, xo:xo + bx] = result[0, 0, self.halo:self.halo + by, self.halo:self.halo + bx]
        return out[:h, :w]


def seconds(run: Callable[[np.ndarray], object], batch: list[np.ndarray]) -> float:
    t0 = time.perf_counter()
    for image in batch:
        run(image)
    return time.perf_counter() - t0


def fastest_baseline(weights: bytes, halo: int, step: int, own_inner: int, size: int, batch: list[np.ndarray],
                     cores: int) -> tuple[dict[str, object], OnnxLoop]:
    """Search threads x optimisation level at one tile size, then the tile sizes; returns the winner."""
    def timed(loop: OnnxLoop, inner: int) -> float:
        loop.run(batch[0], inner)  # warm this shape
        return min(seconds(lambda im: loop.run(im, inner), batch[:2]) for _ in range(2)) / min(2, len(batch))

    probe_inner = min(size, 1024)
    found = []
    for threads, level in itertools.product([0, *range(1, cores + 1)], OPT_LEVELS):
        loop = OnnxLoop(weights, halo, step, threads, level)
        found.append((timed(loop, probe_inner), threads, level))
    _, threads, level = min(found)
    loop = OnnxLoop(weights, halo, step, threads, level)
    inners = sorted({own_inner, *(-(-size // n) for n in range(1, 5)), size})
    by_tile = {inner: timed(loop, inner) for inner in inners if inner >= own_inner or inner == size}
    inner = min(by_tile, key=by_tile.get)
    print(f"  {size}²: onnxruntime search: threads={threads or 'default'}, {level}; per image by tile "
          + ", ".join(f"{i + 2 * halo}px {t:.3f}s" for i, t in by_tile.items()) + f" -> tiles of {inner + 2 * halo}px")
    return {"threads": threads, "level": level, "tile": inner + 2 * halo, "inner": inner}, loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--images", type=int, default=4, help="fields per size (each round predicts all)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the order alternates)")
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="the job's cores (the infer rule's threads)")
    parser.add_argument("--tile-px", default="auto", help="model.tile_px for the stage (default: auto, the default)")
    parser.add_argument("--engine", default="auto", help="model.engine for the stage (default: auto, the default)")
    args = parser.parse_args()
    unet = ROOT.parent / "shared" / "models" / "unet2d_nuclei_broad" / "bioimageio.yaml"
    model = unet if unet.is_file() else write_demo_model(Path(tempfile.mkdtemp()) / "model")
    import tqdm  # bioimageio.core's progress bar: silence it so both loops print nothing per tile
    from functools import partialmethod

    tqdm.tqdm.__init__ = partialmethod(tqdm.tqdm.__init__, disable=True)
    tile_px = int(args.tile_px) if str(args.tile_px).isdigit() else args.tile_px
    settings = ModelSettings(source=str(model), run_test=False, tile_px=tile_px, engine=args.engine)
    check = check_model(settings, Path(tempfile.mkdtemp()))
    stage = batch_predictor(settings, check, threads=args.cores)
    tiling = check.get("tiling") or {}
    print(f"model: {model}\n{args.images} fields per size, {args.cores} core(s), {args.rounds} rounds; stage tiles: "
          f"{tiling.get('rule') or 'the model’s own'} (model.tile_px: {tile_px}, check {tiling.get('status', 'not run')}, "
          f"{tiling.get('bytes_per_tile_pixel', '?')} bytes per tile pixel); stage engine: {stage.engine} "
          f"(model.engine: {args.engine})")
    descr = load_description(str(model))
    source = descr.weights.onnx.source
    weights = model.parent / str(source.path if hasattr(source, "path") else source)
    halo = max(stage.halo.values(), default=0)
    fixed = (stage.default_block or {"y": 512}).get("y", 512)
    own_size = {str(a.id): getattr(a, "size", None) for a in descr.inputs[0].axes}.get("y")
    own_inner = (own_size if isinstance(own_size, int) else fixed) - 2 * halo
    step = (stage.tile_rule.step if stage.tile_rule else 16)
    free = free_size_onnx(weights.read_bytes())
    worst = []
    for size in args.sizes:
        batch = images(args.images, size)
        config, baseline = fastest_baseline(free, halo, step, own_inner, size, batch, args.cores)
        run_base = lambda im: baseline.run(im, config["inner"])  # noqa: E731
        run_stage = lambda im: stage.predict(im)  # noqa: E731
        run_stage(batch[0]), run_base(batch[0])  # warm both at this shape
        agreement = float(np.mean((run_stage(batch[0]) > 0.5) == (run_base(batch[0]) > 0.5)))
        ratios = []
        for r in range(args.rounds):
            order = [("stage", run_stage), ("onnxruntime", run_base)] if r % 2 == 0 else [("onnxruntime", run_base), ("stage", run_stage)]
            took = {name: seconds(run, batch) for name, run in order}
            ratios.append(took["onnxruntime"] / took["stage"])
            print(f"  {size}² round {r + 1}: stage {took['stage'] / len(batch):.3f}s, onnxruntime "
                  f"{took['onnxruntime'] / len(batch):.3f}s per field, ratio {ratios[-1]:.3f}")
        worst.append((statistics.median(ratios), size))
        print(f"{size}²: stage / fastest onnxruntime ({config['tile']}px tiles, threads={config['threads'] or 'default'}, "
              f"{config['level']}) = {worst[-1][0]:.3f} (median of {args.rounds}); foreground agreement {agreement:.4f}")
    ratio, size = min(worst)
    print(f"worst size {size}²; throughput of the stage at its defaults over the fastest onnxruntime configuration found "
          f"(target >= 0.9)")
    print(f"limit_ratio={ratio:.3f}")


if __name__ == "__main__":
    main()

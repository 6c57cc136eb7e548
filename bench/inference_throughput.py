"""Inference stage throughput vs a plain onnxruntime loop over the same tiles of the same model.

    python bench/inference_throughput.py [--images 8] [--size 1024] [--tile-px 1100]

Both sides run in this process, on the same images, after one warm-up image; the model load is paid
once for each and not timed. The baseline runs at its best thread setting (onnxruntime's default and
1..cores intra-op threads are tried first); then the two sides alternate for --rounds rounds (the order
flips each round) and the last line is the median ratio: `ratio=…` (target >= 0.95).
Uses the real U-Net in ../shared when present (fixed 512 input, halo 32), else the demo model.
With --tile-px the stage runs with the opt-in larger tiles (model.tile_px, checked against the model's own
tiles first, figures printed) while the baseline keeps the model's own tile: the ratio is then the speed-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))

from snakescope.demo import write_demo_model  # noqa: E402
from snakescope.stages.inference import Predictor, load_description  # noqa: E402
from snakescope.core.settings import ModelSettings


def images(n: int, size: int) -> list[np.ndarray]:
    from snakescope.demo import DemoField, render_field

    out = []
    for i in range(n):
        tiles = [render_field(DemoField(f"b{i}{j}", 30, seed=1000 * i + j))[0] for j in range((size // 256) ** 2)]
        rows = [np.concatenate(tiles[r * (size // 256):(r + 1) * (size // 256)], axis=1) for r in range(size // 256)]
        out.append(np.concatenate(rows, axis=0)[None].astype(np.float32))
    return out


def onnx_runner(model_yaml: Path, block: int, halo: int, threads: int):
    """Plain loop: normalise, cut blocks of `block` px with `halo` px context, run onnxruntime, stitch.
    `threads`: intra-op threads (0: onnxruntime's default). Returns (load seconds, run(image) -> probabilities)."""
    import onnxruntime

    t0 = time.perf_counter()
    descr = load_description(str(model_yaml))
    weights = model_yaml.parent / str(descr.weights.onnx.source.path if hasattr(descr.weights.onnx.source, "path") else descr.weights.onnx.source)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(weights), sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    inner = block - 2 * halo

    def run(image: np.ndarray) -> np.ndarray:
        x = (image - image.mean()) / (image.std() + 1e-6)
        _, h, w = x.shape
        ph, pw = -(-h // inner) * inner, -(-w // inner) * inner
        padded = np.pad(x, ((0, 0), (halo, ph - h + halo), (halo, pw - w + halo)), mode="reflect")
        out = np.zeros((ph, pw), np.float32)
        for y in range(0, ph, inner):
            for xo in range(0, pw, inner):
                tile = padded[None, :, y:y + block, xo:xo + block].astype(np.float32)
                out[y:y + inner, xo:xo + inner] = session.run(None, {name: tile})[0][0, 0, halo:halo + inner, halo:halo + inner]
        return out[:h, :w]

    return time.perf_counter() - t0, run


def stage_runner(model_yaml: Path, threads: int, tile_px: int | None = None):
    """snakescope's inference stage as the infer job runs it: one Predictor, the job's threads."""
    from snakescope.stages.inference import check_model
    from snakescope.methods.tiling import TileRule

    settings = ModelSettings(source=str(model_yaml), tile_px=tile_px, run_test=False)
    rule = None
    if tile_px:
        tiling = check_model(settings, Path(tempfile.mkdtemp()))["tiling"]
        print(f"  tile check (model.tile_px={tile_px}): step {tiling['rule']['step']}, mean difference "
              f"{tiling['mean_abs_difference']}, foreground agreement {tiling['foreground_agreement']}")
        rule = TileRule(**tiling["rule"])
    t0 = time.perf_counter()
    predictor = Predictor(settings, threads=threads, tile_rule=rule)
    return time.perf_counter() - t0, lambda image: predictor.predict(image)


def rate(run, batch: list[np.ndarray]) -> float:
    t0 = time.perf_counter()
    for image in batch:
        run(image)
    return len(batch) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (the order alternates)")
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="the job's cores (the infer rule's threads)")
    parser.add_argument("--tile-px", type=int, default=None, help="the stage with larger tiles (model.tile_px)")
    args = parser.parse_args()
    unet = ROOT.parent / "shared" / "models" / "unet2d_nuclei_broad" / "bioimageio.yaml"
    if unet.is_file():
        model, block, halo = unet, 512, 32
    else:
        model = write_demo_model(Path(tempfile.mkdtemp()) / "model")
        block, halo = 256, 8
    batch = images(args.images, args.size)
    print(f"model: {model}\nimages: {args.images} x {args.size}x{args.size}, {args.cores} core(s), {args.rounds} rounds")
    import tqdm  # bioimageio.core's progress bar: silence it so both loops print nothing per tile
    from functools import partialmethod

    tqdm.tqdm.__init__ = partialmethod(tqdm.tqdm.__init__, disable=True)
    # The baseline at its best: onnxruntime's default and every thread count up to the job's cores.
    candidates = {}
    for threads in [0, *range(1, args.cores + 1)]:
        _, run = onnx_runner(model, block, halo, threads)
        run(batch[0])
        candidates[threads] = max(rate(run, batch[:2]) for _ in range(2))
        print(f"  onnxruntime intra_op_num_threads={threads or 'default'}: {candidates[threads]:.2f} images/s")
    best = max(candidates, key=candidates.get)
    ort_load, ort = onnx_runner(model, block, halo, best)
    stage_load, stage = stage_runner(model, args.cores, args.tile_px)
    ort(batch[0]), stage(batch[0])  # warm-up
    ratios = []
    for r in range(args.rounds):
        order = [("stage", stage), ("ort", ort)] if r % 2 == 0 else [("ort", ort), ("stage", stage)]
        rates = {name: rate(run, batch) for name, run in order}
        ratios.append(rates["stage"] / rates["ort"])
        print(f"  round {r + 1}: snakescope {rates['stage']:.2f}, onnxruntime {rates['ort']:.2f} images/s, ratio {ratios[-1]:.3f}")
    ratio = statistics.median(ratios)
    tiles = f"tiles up to {args.tile_px} px" if args.tile_px else "the model's own tiles"
    print(f"plain onnxruntime loop: best intra_op_num_threads={best or 'default'}, load {ort_load:.2f}s; "
          f"snakescope (bioimageio.core blocked prediction, {tiles}, threads={args.cores}), load {stage_load:.2f}s")
    print(f"throughput ratio snakescope / best onnxruntime, median of {args.rounds} interleaved rounds (target >= 0.95)")
    print(f"ratio={ratio:.3f}")


if __name__ == "__main__":
    main()

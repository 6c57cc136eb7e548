"""Inference stage throughput vs a plain onnxruntime loop over the same tiles of the same model.

    python bench/inference_throughput.py [--images 8] [--size 1024]

Both sides run in this process, on the same images, after one warm-up image; the model load is
counted once for each. Prints images/s for both and the ratio (target >= 0.9).
Uses the real U-Net in ../shared when present (fixed 512 input, halo 32), else the demo model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))

from snakescope.demo import write_demo_model  # noqa: E402
from snakescope.inference import ModelSettings, Predictor, load_description  # noqa: E402


def images(n: int, size: int) -> list[np.ndarray]:
    from snakescope.demo import DemoField, render_field

    out = []
    for i in range(n):
        tiles = [render_field(DemoField(f"b{i}{j}", 30, seed=1000 * i + j))[0] for j in range((size // 256) ** 2)]
        rows = [np.concatenate(tiles[r * (size // 256):(r + 1) * (size // 256)], axis=1) for r in range(size // 256)]
        out.append(np.concatenate(rows, axis=0)[None].astype(np.float32))
    return out


def onnx_loop(model_yaml: Path, batch: list[np.ndarray], block: int, halo: int) -> tuple[float, float, int]:
    """Plain loop: normalise, cut blocks of `block` px with `halo` px context, run onnxruntime, stitch."""
    import onnxruntime

    t0 = time.perf_counter()
    descr = load_description(str(model_yaml))
    weights = model_yaml.parent / str(descr.weights.onnx.source.path if hasattr(descr.weights.onnx.source, "path") else descr.weights.onnx.source)
    session = onnxruntime.InferenceSession(str(weights), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    load = time.perf_counter() - t0
    inner = block - 2 * halo
    tiles = 0

    def run(image: np.ndarray) -> np.ndarray:
        nonlocal tiles
        x = (image - image.mean()) / (image.std() + 1e-6)
        _, h, w = x.shape
        ph, pw = -(-h // inner) * inner, -(-w // inner) * inner
        padded = np.pad(x, ((0, 0), (halo, ph - h + halo), (halo, pw - w + halo)), mode="reflect")
        out = np.zeros((ph, pw), np.float32)
        for y in range(0, ph, inner):
            for xo in range(0, pw, inner):
                tile = padded[None, :, y:y + block, xo:xo + block].astype(np.float32)
                out[y:y + inner, xo:xo + inner] = session.run(None, {name: tile})[0][0, 0, halo:halo + inner, halo:halo + inner]
                tiles += 1
        return out[:h, :w]

    run(batch[0])  # warm-up
    t0 = time.perf_counter()
    for image in batch:
        run(image)
    return load, time.perf_counter() - t0, tiles


def stage_loop(model_yaml: Path, batch: list[np.ndarray]) -> tuple[float, float]:
    t0 = time.perf_counter()
    predictor = Predictor(ModelSettings(source=str(model_yaml)))
    load = time.perf_counter() - t0
    predictor.predict(batch[0])  # warm-up
    t0 = time.perf_counter()
    for i, image in enumerate(batch):
        predictor.predict(image, f"img{i}")
    seconds = time.perf_counter() - t0
    predictor.close()
    return load, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    unet = ROOT.parent / "shared" / "models" / "unet2d_nuclei_broad" / "bioimageio.yaml"
    if unet.is_file():
        model, block, halo = unet, 512, 32
    else:
        model = write_demo_model(Path(tempfile.mkdtemp()) / "model")
        block, halo = 256, 8
    batch = images(args.images, args.size)
    print(f"model: {model}\nimages: {args.images} x {args.size}x{args.size}")
    import tqdm  # bioimageio.core's progress bar: silence it so both loops print nothing per tile
    from functools import partialmethod

    tqdm.tqdm.__init__ = partialmethod(tqdm.tqdm.__init__, disable=True)
    stage_load, stage_s = stage_loop(model, batch)
    ort_load, ort_s, tiles = onnx_loop(model, batch, block, halo)
    stage_rate, ort_rate = args.images / stage_s, args.images / ort_s
    print(f"plain onnxruntime loop: {ort_rate:.2f} images/s ({tiles} tiles of {block}px, load {ort_load:.2f}s)")
    print(f"snakescope inference  : {stage_rate:.2f} images/s (bioimageio.core blocked prediction, load {stage_load:.2f}s)")
    print(f"throughput ratio snakescope / onnxruntime = {stage_rate / ort_rate:.2f} (target >= 0.9)")


if __name__ == "__main__":
    main()

"""A simulated acquisition for trying and testing watch mode: fields written into a folder at a set rate.

    snakescope simulate-acquisition --images 'real/*.tif' --out acq/ [--fields 50] [--size 1024] [--interval 2]

Each field is cut from a mosaic of real images (mirrored where it runs past them), encoded as an ImageJ TIFF
with its pixel size, and written in place in several chunks, as a camera driver fills a file, so that a
watcher sees files that are still growing. Nothing here talks to a microscope.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np


@dataclass(frozen=True)
class WrittenField:
    path: Path
    started: float  # time.time() when the first byte was written
    closed: float  # when the last byte was written and the file closed


def fields_from(images: list[np.ndarray], size: int, count: int, seed: int = 0) -> Iterator[np.ndarray]:
    """``count`` fields of ``size`` x ``size`` cut at random places from a mosaic of the images (mirrored to fit)."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(len(images))))
    height, width = min(i.shape[0] for i in images), min(i.shape[1] for i in images)
    tiles = [images[i % len(images)][:height, :width] for i in range(side * side)]
    mosaic = np.block([[tiles[r * side + c] for c in range(side)] for r in range(side)])
    if min(mosaic.shape) < size:
        mosaic = np.pad(mosaic, [(0, max(0, size - n)) for n in mosaic.shape], mode="symmetric")
    for _ in range(count):
        y = int(rng.integers(0, mosaic.shape[0] - size + 1))
        x = int(rng.integers(0, mosaic.shape[1] - size + 1))
        yield mosaic[y:y + size, x:x + size]


def tiff_bytes(field: np.ndarray, pixel_size_um: float | None) -> bytes:
    """The field as an ImageJ TIFF (declares its length), calibrated when a pixel size is given."""
    import tifffile

    buffer = io.BytesIO()
    extra = {"resolution": (1 / pixel_size_um, 1 / pixel_size_um), "metadata": {"unit": "um"}} if pixel_size_um else {}
    tifffile.imwrite(buffer, field, imagej=True, **extra)
    return buffer.getvalue()


def write_slowly(path: Path, data: bytes, chunks: int = 4, seconds: float = 0.2) -> WrittenField:
    """Write ``data`` to ``path`` in ``chunks`` pieces over ``seconds``, flushing each (a file that grows)."""
    started = time.time()
    step = -(-len(data) // max(1, chunks))
    with open(path, "wb") as handle:
        for i in range(0, len(data), step):
            handle.write(data[i:i + step])
            handle.flush()
            if i + step < len(data):
                time.sleep(seconds / max(1, chunks - 1))
    return WrittenField(path, started, time.time())


def acquire(out_dir: str | Path, fields: list[bytes], interval_s: float, names: list[str] | None = None, chunks: int = 4,
            write_s: float = 0.2, should_stop: Callable[[], bool] = lambda: False) -> list[WrittenField]:
    """Write each encoded field into ``out_dir``, one every ``interval_s`` seconds (start to start)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    start = time.time()
    for i, data in enumerate(fields):
        if should_stop():
            break
        delay = start + i * interval_s - time.time()
        if delay > 0:
            time.sleep(delay)
        written.append(write_slowly(out / (names[i] if names else f"field_{i:05d}.tif"), data, chunks, write_s))
    return written

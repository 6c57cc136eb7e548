"""Watch mode's second phase of a field (quality metrics beside post-processing) in this checkout and another.

    python bench/watch_phase.py --base ../other-checkout [--fields 10] [--rounds 4]

The phase as the watcher runs it: a field's quality metrics in a thread of this process while its post-processing
(``watch.segment_and_hold``, with its helper thread) runs in a post-processing worker, its own process. Two workers
are started, one importing snakescope from this checkout and one from ``--base``; fields cut from the real BBBC039
nuclei (imported and predicted once, here, with the real U-Net) go through one and then the other, the order
alternating every round, so a slow spell of the machine hits both. The quality metrics come from this checkout
for both. Last line: ``ratio=<median phase time here / median with --base>`` (below 1: this checkout is faster).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
_WATCH: list = []  # in a worker: snakescope.watch of its checkout


def _start_worker(checkout: str) -> None:
    sys.path.insert(0, str(Path(checkout) / "workflow"))
    import snakescope.watch as watch
    from snakescope.core.settings import PostprocessSettings

    if not watch.__file__.startswith(str(Path(checkout).resolve())):
        raise RuntimeError(f"snakescope came from {watch.__file__}, not from {checkout}")
    watch._warm_up_postprocess(PostprocessSettings())
    _WATCH.append(watch)


def _postprocess(unit: dict, probability_path: str, out: str) -> None:
    from snakescope.core.settings import PostprocessSettings

    _WATCH[0].segment_and_hold(unit, probability_path, PostprocessSettings(), (0,), Path(out), True)
    _WATCH[0]._HELD.clear()  # the files are not written: only the phase is timed


def main() -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
    from dataclasses import asdict

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="another snakescope checkout to compare with")
    parser.add_argument("--fields", type=int, default=10)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "workflow"))
    import numpy as np
    import tifffile

    from snakescope.core.inputs import Source
    from snakescope.core.settings import ImportSettings, ModelSettings
    from snakescope.microscope_sim import fields_from, tiff_bytes
    from snakescope.stages.acquisition import import_one
    from snakescope.stages.inference import batch_predictor, check_model, predict_one
    from snakescope.stages.quality import quality_one

    work = Path(tempfile.mkdtemp(prefix="snakescope-watch-phase-"))
    for folder in ("import", "inference", "segmentation"):
        (work / folder).mkdir()
    images = [tifffile.imread(p) for p in sorted((SHARED / "data" / "nuclei" / "bbbc039" / "images").glob("*.tif"))]
    model = {"source": str(SHARED / "models" / "unet2d_nuclei_broad" / "bioimageio.yaml"), "run_test": False}
    settings = ModelSettings.from_config(model)
    predictor = batch_predictor(settings, check_model(settings, work / "cache"), threads=2)
    fields = []
    for index, data in enumerate(tiff_bytes(f, 0.645) for f in fields_from(images, args.size, args.fields, seed=1)):
        path = work / f"field_{index:03d}.tif"
        path.write_bytes(data)
        units, _ = import_one(Source(path.stem, str(path)), ImportSettings(), work / "import", "[bench]")
        unit = asdict(units[0])
        prediction, _ = predict_one(predictor, unit, work / "inference", "[bench]")
        fields.append((unit, prediction["path"]))
    spawn = multiprocessing.get_context("spawn")
    workers = {name: ProcessPoolExecutor(1, mp_context=spawn, initializer=_start_worker, initargs=(str(checkout),))
               for name, checkout in (("this", ROOT), ("base", Path(args.base).resolve()))}
    for worker in workers.values():
        worker.submit(time.sleep, 0).result()
    quality = ThreadPoolExecutor(max_workers=1)
    seconds: dict[str, list[float]] = {"this": [], "base": []}
    for round_ in range(args.rounds):
        for unit, probability_path in fields:
            for name in ("this", "base") if round_ % 2 == 0 else ("base", "this"):
                time.sleep(0.3)  # idle between fields, as between a microscope's fields
                started = time.perf_counter()
                metrics = quality.submit(quality_one, unit, "bench")
                workers[name].submit(_postprocess, unit, probability_path, str(work / "segmentation")).result()
                metrics.result()
                seconds[name].append(time.perf_counter() - started)
    for name, values in seconds.items():
        print(f"{name}: quality beside post-processing per field, median {statistics.median(values):.3f} s, "
              f"p90 {float(np.percentile(values, 90)):.3f} s ({len(values)} fields)")
    print(f"ratio={statistics.median(seconds['this']) / statistics.median(seconds['base']):.3f}")


if __name__ == "__main__":
    main()

"""Watch mode on a simulated acquisition: latency from a file being complete to its action record.

    python bench/acquisition_latency.py [--fields 50] [--size 1024] [--interval 2] [--tile-px auto|model|N] [--engine auto|onnxruntime|openvino] [--cpu N]

The watcher (``snakescope watch``, its own process, the real U-Net in ../shared and the rule-based reviewer)
is started and, once its model is loaded, fields cut from the real BBBC039 nuclei are written into its folder
one every --interval seconds, each in 4 chunks over 0.2 s. For every field the latency runs from the moment the
simulated microscope closed the file to the moment the field's record was in the actions file (so it includes
noticing the file); the per-field processing time alone is printed beside it as the floor. The loop keeps up
when its p95 latency stays under the interval (no queue builds). Last line: ``p95_latency_s=<value>`` (target <= 1.0
with the defaults; ``--tile-px model`` gives the old default, the model's own tiles; ``--engine onnxruntime``
keeps onnxruntime where the model check would validate OpenVINO).

``--cpu N`` first runs a field's stages one after another in this process on N of the same fields (import,
inference on the watcher's threads, quality metrics, post-processing) and prints the CPU seconds each takes per
field: their sum over the cores is the least time a field can take however the stages overlap.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))
SHARED = ROOT.parent / "shared"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def cpu_per_field(encoded: list[bytes], count: int, model: dict, threads: int) -> None:
    """Median CPU seconds per field of each stage, run in turn in this process (the first field warms up)."""
    import statistics
    from dataclasses import asdict

    from snakescope.core.inputs import Source
    from snakescope.core.settings import ImportSettings, ModelSettings, PostprocessSettings
    from snakescope.stages.acquisition import import_one
    from snakescope.stages.inference import batch_predictor, check_model, predict_one
    from snakescope.stages.quality import quality_one
    from snakescope.stages.segmentation import segment_one

    work = Path(tempfile.mkdtemp(prefix="snakescope-cpu-bench-"))
    settings = ModelSettings.from_config({**model, "run_test": False})
    predictor = batch_predictor(settings, check_model(settings, work / "cache"), threads=threads)
    cpu: dict[str, list[float]] = {"import": [], "inference": [], "quality": [], "postprocess": []}
    for folder in ("import", "inference"):
        (work / folder).mkdir()
    for index, data in enumerate(encoded[:count + 1]):
        path = work / f"field_{index:03d}.tif"
        path.write_bytes(data)
        started = time.process_time()
        units, _ = import_one(Source(path.stem, str(path)), ImportSettings(), work / "import", "[cpu]")
        unit = asdict(units[0])
        times = {"import": time.process_time() - started}
        started = time.process_time()
        prediction, _ = predict_one(predictor, unit, work / "inference", "[cpu]")
        times["inference"] = time.process_time() - started
        started = time.process_time()
        quality_one(unit, "cpu")
        times["quality"] = time.process_time() - started
        started = time.process_time()
        segment_one(unit, prediction["path"], PostprocessSettings(), (0,))
        times["postprocess"] = time.process_time() - started
        if index:
            for stage, seconds in times.items():
                cpu[stage].append(seconds)
    medians = {stage: statistics.median(values) for stage, values in cpu.items()}
    total = sum(medians.values())
    cores = len(os.sched_getaffinity(0))
    print("CPU seconds per field: " + ", ".join(f"{stage} {value:.2f}" for stage, value in medians.items())
          + f"; sum {total:.2f} s, over {cores} cores at least {total / cores:.2f} s per field")


def main() -> None:
    import tifffile

    from snakescope.microscope_sim import acquire, fields_from, tiff_bytes

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fields", type=int, default=50)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--tile-px", default="auto", help="model.tile_px: auto (the default), model, or an edge")
    parser.add_argument("--engine", default="auto", help="model.engine: auto (the default), onnxruntime or openvino")
    parser.add_argument("--cpu", type=int, default=0, help="first, the CPU seconds per field of each stage over N fields")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="snakescope-watch-bench-"))
    model = {"source": str(SHARED / "models" / "unet2d_nuclei_broad" / "bioimageio.yaml"), "run_test": False}
    model["tile_px"] = int(args.tile_px) if str(args.tile_px).isdigit() else args.tile_px
    model["engine"] = args.engine
    config = {"dataset": "watch", "inputs": ["acq/*.tif"], "results": "results", "batch_size": 25, "cache_dir": "cache",
              "model": model}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    images = [tifffile.imread(p) for p in sorted((SHARED / "data" / "nuclei" / "bbbc039" / "images").glob("*.tif"))]
    encoded = [tiff_bytes(f, 0.645) for f in fields_from(images, args.size, args.fields, seed=1)]
    if args.cpu:
        cpu_per_field(encoded, args.cpu, model, len(os.sched_getaffinity(0)))
    log = open(folder / "watch.log", "w")
    started = time.time()
    watcher = subprocess.Popen([sys.executable, "-m", "snakescope.cli", "watch", "--config", "config.yaml", "--idle-exit", "15"],
                               cwd=folder, stderr=log, stdout=log, env={**os.environ, "PYTHONPATH": str(ROOT / "workflow")})
    while "model loaded" not in (folder / "watch.log").read_text():
        if watcher.poll() is not None:
            sys.exit((folder / "watch.log").read_text()[-3000:])
        time.sleep(0.2)
    ready = time.time() - started
    written = acquire(folder / "acq", encoded, args.interval)
    watcher.wait()
    records = {json.loads(line)["sample_id"]: json.loads(line)
               for line in (folder / "results" / "watch" / "watch" / "actions.jsonl").read_text().splitlines()}
    closed = {w.path.name: w.closed for w in written}
    latency = [datetime.fromisoformat(r["timestamp"]).timestamp() - closed[sid] for sid, r in records.items() if sid in closed]
    detected = [r["latency_s"] for r in records.values()]
    processing = [r["processing_s"] for r in records.values()]
    verdicts = {v: sum(1 for r in records.values() if r["verdict"] == v) for v in ("pass", "warn", "fail")}
    print(f"watcher start-up (imports, model load, warm-up): {ready:.1f} s; log: {folder / 'watch.log'}")
    print(f"fields: {len(written)} of {args.size}x{args.size} px, one every {args.interval} s; records: {len(records)} {verdicts}"
          f"; model.tile_px: {args.tile_px}; model.engine: {args.engine}")
    print(f"processing per field (the floor): p50 {percentile(processing, 50):.2f} s, p95 {percentile(processing, 95):.2f} s")
    stages = [r["stage_s"] for r in records.values()]
    print("median seconds per stage: " + ", ".join(f"{k} {np.median([t[k] for t in stages]):.2f}" for k in stages[0]))
    print(f"from the watcher noticing the file: p50 {percentile(detected, 50):.2f} s, p95 {percentile(detected, 95):.2f} s")
    p95 = percentile(latency, 95)
    print(f"from the file closed to its record: p50 {percentile(latency, 50):.2f} s, p95 {p95:.2f} s, max {max(latency):.2f} s")
    print(f"kept up: {'yes' if p95 <= args.interval else 'no (fields queued: the microscope was faster than the review)'}")
    print(f"p95_latency_s={p95:.2f}")


if __name__ == "__main__":
    main()

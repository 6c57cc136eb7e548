"""The whole workflow on N fields vs a plain Python loop doing the same stages in one process.

    python bench/workflow_vs_loop.py [--images 200] [--batch-size 50] [--field-px 256] [--cores 1 2]

Fields are the demo's 256² fields, or with another ``--field-px`` (e.g. 1024) fields cut from the real BBBC039
nuclei in ../shared; the model is the demo model on both sides (the bench measures what the workflow adds).

The loop reads each file with bioio, computes the quality metrics, predicts with one bioimage.io
pipeline, segments, renders the overlay and the report's gallery images and reviews: the same package
functions the workflow's rules call, minus Snakemake, batching, per-job processes and files between
stages (and the run's tables, plots and report, about 1 CPU-s together). It runs in a
process of its own with one core, so its start-up and imports count once, as they would for a script.
The workflow runs at each --cores value from scratch. Both are measured in wall time and in CPU time
(user + system of every process, from the operating system's accounting of finished children), so
work spread over several cores is not hidden. Loop and workflow runs are interleaved over ``--rounds``
rounds and compared by their medians: on a shared (virtual) machine the CPU time of the same work moves
by 20-30 % between minutes, which a loop measured once, then the workflow, takes for a difference. Prints
each run and the median ratios workflow / loop; the last line is
``cpu_ratio=<median workflow CPU / median loop CPU at the last --cores value>`` (targets at batch 50: <= 1.10 at
1024 px; at 256 px, where per-job start-up weighs most, reported as it is).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SNAKESCOPE_SHARED", ROOT.parent / "shared"))
sys.path.insert(0, str(ROOT / "workflow"))


def real_field(size: int, seed: int) -> np.ndarray:
    """A size x size uint16 field cut from the real BBBC039 nuclei (../shared), tiles flipped at random."""
    import tifffile

    rng = np.random.default_rng(seed)
    paths = sorted((SHARED / "data" / "nuclei" / "bbbc039" / "images").glob("*.tif"))
    out = np.zeros((size, size), np.uint16)
    for y in range(0, size, 512):
        for x in range(0, size, 512):
            tile = tifffile.imread(paths[rng.integers(len(paths))])[:512, :512]
            tile = tile[:: rng.choice([-1, 1]), :: rng.choice([-1, 1])]
            out[y : y + 512, x : x + 512] = tile[: size - y, : size - x]
    return out


def make_inputs(folder: Path, n: int, field_px: int) -> Path:
    """``n`` fields: the demo's 256² fields, or for another --field-px real BBBC039 nuclei at 0.645 µm."""
    from dataclasses import replace

    from snakescope.demo import DEMO_FIELDS, _write_ome, render_field, write_demo_model

    (folder / "images").mkdir(parents=True)
    rows = ["sample_id\tpath\ttreatment\tcell_line"]
    for i in range(n):
        name = f"img{i:05d}"
        if field_px == 256:
            image, _ = render_field(replace(DEMO_FIELDS[i % len(DEMO_FIELDS)], name=name, seed=10_000 + i))
            _write_ome(folder / "images" / f"{name}.ome.tif", [image[None]], "CYX")
        else:
            import tifffile

            tifffile.imwrite(folder / "images" / f"{name}.ome.tif", real_field(field_px, i)[None], ome=True,
                             metadata={"axes": "CYX", "PhysicalSizeX": 0.645, "PhysicalSizeY": 0.645, "Channel": {"Name": ["DAPI"]}})
        rows.append(f"{name}\timages/{name}.ome.tif\tDMSO\tU2OS")
    (folder / "samples.tsv").write_text("\n".join(rows) + "\n")
    return write_demo_model(folder / "model")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measured(command: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and all its descendants) of one command."""
    cpu, t0 = children_cpu(), time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0, children_cpu() - cpu


def plain_loop(folder: Path, model: Path) -> float:
    import yaml as _yaml

    from snakescope.stages.acquisition import import_source
    from snakescope.core.settings import ImportSettings
    from snakescope.stages.report.gallery import unit_gallery_images
    from snakescope.core.settings import GallerySettings
    from snakescope.stages.inference import Predictor
    from snakescope.core.settings import ModelSettings
    from snakescope.core.channels import model_channels
    from snakescope.core.inputs import read_sample_sheet
    from snakescope.stages.quality import unit_metrics
    from snakescope.core.rendering import overlay_png
    from snakescope.stages.review import review_unit
    from snakescope.core.settings import ReviewThresholds
    from snakescope.methods.measurements import segment_unit
    from snakescope.core.settings import PostprocessSettings

    t0 = time.perf_counter()
    kb = _yaml.safe_load((ROOT / "config" / "knowledge_base.yaml").read_text())
    predictor = Predictor(ModelSettings(source=str(model)), threads=1)
    out = folder / "loop"
    gallery: dict[str, dict[str, str]] = {}
    shared_limits = (0.0, 1000.0)  # the workflow takes the run's from the quality stage; the rendering work is the same
    for source in read_sample_sheet(folder / "samples.tsv"):
        units, _ = import_source(source, ImportSettings(), out)
        for unit in units:
            from snakescope.core.images import read_unit

            image = read_unit(unit.image_path)
            metrics = unit_metrics(image, unit.channel_names, unit.__dict__)
            seen = model_channels(image, unit.__dict__, (0,))  # the channel with its background flattened, as the stages see it
            probability = predictor.predict(seen, unit.unit_id)
            pixel = (unit.pixel_size_um["y"], unit.pixel_size_um["x"])
            labels, objects, summary = segment_unit(probability, seen[0], pixel, PostprocessSettings(), unit.unit_id,
                                                    measured=image[0])
            (out / f"{unit.unit_id}.png").write_bytes(overlay_png(image[0], labels, pixel[1]))
            # the report's images, as the workflow renders them: in a shared contrast and the field's own
            gallery[unit.unit_id] = unit_gallery_images(image[0], labels, pixel[1], GallerySettings(), shared_limits)
            review_unit(unit.__dict__, metrics[unit.channel_names[0]], summary,
                        [o["equivalent_diameter_um"] for o in objects], kb, ReviewThresholds())
    predictor.close()
    return time.perf_counter() - t0


def workflow(folder: Path, model: Path, batch_size: int, cores: int) -> tuple[float, float]:
    config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    config.update(samples=str(folder / "samples.tsv"), batch_size=batch_size, cache_dir=str(folder / "cache"),
                  results=str(folder / f"results-c{cores}"))
    config["model"]["source"] = str(model)
    config["model"]["channels"] = [0]
    config["review"]["knowledge_base"] = str(ROOT / "config" / "knowledge_base.yaml")
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return measured([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(folder),
                     "--configfile", str(folder / "config.yaml"), "--cores", str(cores), "--quiet", "all"])


def where_cpu_went(benchmarks: Path, total: float) -> str:
    """The workflow's CPU per rule (Snakemake's benchmark files, which measure each job's process) and what is left:
    Snakemake itself (planning, scheduling, its script preambles are counted in the jobs)."""
    import csv
    from collections import Counter

    per_rule: Counter = Counter()
    for tsv in benchmarks.glob("*/*.tsv"):
        with open(tsv, newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                per_rule[tsv.parent.name] += float(row.get("cpu_time") or 0)
    rules = ", ".join(f"{rule} {seconds:.1f}" for rule, seconds in per_rule.most_common())
    return f"CPU s per rule: {rules}; Snakemake and what its benchmarks miss: {total - sum(per_rule.values()):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--field-px", type=int, default=256, help="field edge: 256 (demo fields) or larger (real BBBC039 nuclei)")
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of loop and workflow runs; medians")
    parser.add_argument("--loop-only", nargs=2, metavar=("FOLDER", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    import tqdm
    from functools import partialmethod

    tqdm.tqdm.__init__ = partialmethod(tqdm.tqdm.__init__, disable=True)
    if args.loop_only:
        plain_loop(Path(args.loop_only[0]), Path(args.loop_only[1]))
        return
    folder = Path(tempfile.mkdtemp(prefix="snakescope-bench-"))
    model = make_inputs(folder, args.images, args.field_px)
    print(f"images: {args.images} ({args.field_px}x{args.field_px} px each), batch_size {args.batch_size}, "
          f"{args.rounds} interleaved round(s)")
    loops: list[tuple[float, float]] = []
    runs: dict[int, list[tuple[float, float]]] = {cores: [] for cores in args.cores}
    for index in range(args.rounds):  # interleaved: a slow spell of a shared machine hits both sides alike
        loops.append(measured([sys.executable, __file__, "--loop-only", str(folder), str(model)]))
        print(f"round {index + 1}: plain Python loop, one process, one core: {loops[-1][0]:.1f} s wall, {loops[-1][1]:.1f} s CPU")
        for cores in args.cores:
            shutil.rmtree(folder / f"results-c{cores}", ignore_errors=True)
            runs[cores].append(workflow(folder, model, args.batch_size, cores))
            wall, cpu = runs[cores][-1]
            print(f"round {index + 1}: snakescope workflow, --cores {cores}: {wall:.1f} s wall, {cpu:.1f} s CPU "
                  f"({cpu / loops[-1][1]:.2f}x this round's loop)")
            print("  " + where_cpu_went(folder / f"results-c{cores}" / "demo" / "benchmarks", cpu))
    loop_wall, loop_cpu = (float(np.median(v)) for v in zip(*loops))
    print(f"median plain Python loop: {loop_wall:.1f} s wall, {loop_cpu:.1f} s CPU")
    cpu_ratio = float("nan")
    for cores in args.cores:
        wall, cpu = (float(np.median(v)) for v in zip(*runs[cores]))
        cpu_ratio = cpu / loop_cpu
        print(f"median snakescope workflow, --cores {cores}: {wall:.1f} s wall ({wall / loop_wall:.2f}x the loop), "
              f"{cpu:.1f} s CPU ({cpu_ratio:.2f}x the loop)")
    print(f"cpu_ratio={cpu_ratio:.2f}")


if __name__ == "__main__":
    main()

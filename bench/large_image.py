"""Peak memory and wall time per stage for one large field, at several sizes, with the real U-Net.

    python bench/large_image.py [--sizes 4096 8192 16384] [--max-rss-gb 18]

Each size is one uint16 mosaic of real BBBC039 nuclei (../shared/data/nuclei, flipped tiles), imported as an
OME-TIFF and taken through the stages the workflow runs per batch: import, quality, inference (the shared
U-Net, ONNX), post-processing, rule-based review, refinement and gallery. Every stage runs as its own process
(``python -m snakescope.stages RULE ...``, the rule's function as a Snakemake job calls it) under GNU time, which
reports its peak resident memory.

A stage whose memory, extrapolated from the previous size, would exceed --max-rss-gb is skipped (this machine
has 24 GiB; a process that runs out is killed, with others). Prints per stage and size: peak RSS (GB), bytes
per pixel, wall time and seconds per megapixel; then the ratio of peak RSS at the largest size every stage ran
to the smallest (target <= 1.5: bounded by the block, not the image). Last line: ``rss_ratio=<value>`` (the
worst stage), or ``rss_ratio=nan`` when the largest size could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SNAKESCOPE_SHARED", ROOT.parent / "shared"))
UNET = SHARED / "models" / "unet2d_nuclei_broad" / "bioimageio.yaml"
NUCLEI = SHARED / "data" / "nuclei" / "bbbc039" / "images"
STAGES = ("import", "quality", "infer", "postprocess", "review", "refinement", "gallery")


def mosaic(size: int, seed: int = 0) -> np.ndarray:
    """A size x size uint16 field tiled from the real BBBC039 images, each tile flipped at random."""
    import tifffile

    rng = np.random.default_rng(seed)
    tiles = [tifffile.imread(p) for p in sorted(NUCLEI.glob("*.tif"))]
    out = np.zeros((size, size), np.uint16)
    th, tw = tiles[0].shape[:2]
    for y in range(0, size, th):
        for x in range(0, size, tw):
            tile = tiles[rng.integers(len(tiles))]
            tile = tile[:: rng.choice([-1, 1]), :: rng.choice([-1, 1])]
            h, w = min(th, size - y), min(tw, size - x)
            out[y : y + h, x : x + w] = tile[:h, :w]
    return out


def write_input(folder: Path, size: int) -> Path:
    import tifffile

    path = folder / f"field_{size}.ome.tif"
    tifffile.imwrite(path, mosaic(size)[None], photometric="minisblack", tile=(512, 512),
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.645, "PhysicalSizeY": 0.645, "Channel": {"Name": ["DAPI"]}})
    return path


def commands(work: Path, source: Path) -> dict[str, list[str]]:
    """Each stage's job as the workflow's rule would run it (snakescope.stages.run_stage, by the rule's names)."""
    model = {"source": str(UNET), "weight_format": "onnx", "channels": [0]}
    channels = [0]
    paths = {name: str(work / name) for name in ("import", "inference", "segmentation", "review", "refinement")}

    def job(rule: str, **arguments) -> list[str]:
        return [sys.executable, "-m", "snakescope.stages", rule, json.dumps(arguments)]

    return {
        "import": job("import_batch", batch="b0000", imported=paths["import"], settings={},
                      sources=[{"sample_id": "field", "path": str(source), "metadata": {"cell_line": "U2OS"}}]),
        "quality": job("quality_metrics", imported=paths["import"], quality=str(work / "quality.json")),
        "check": job("check_model", settings=model, cache_dir=str(work.parent / "cache"), model_check=str(work / "check.json")),
        "infer": job("infer", imported=paths["import"], settings=model, model_check=str(work / "check.json"),
                     inference=paths["inference"], threads=2),
        "postprocess": job("postprocess", imported=paths["import"], inference=paths["inference"], settings={},
                           channels=channels, segmentation=paths["segmentation"]),
        "reference": job("quality_reference", quality=[str(work / "quality.json")], imported=[paths["import"]],
                         plate_column="plate", reference=str(work / "reference.json")),
        "review": job("review", imported=paths["import"], quality=str(work / "quality.json"), inference=paths["inference"],
                      segmentation=paths["segmentation"], knowledge_base=str(ROOT / "config" / "knowledge_base.yaml"),
                      settings={}, channels=channels, schema=str(ROOT / "workflow" / "schemas" / "review.schema.json"),
                      reference=str(work / "reference.json"), review=paths["review"], llm_runtime={},
                      cache_dir=str(work.parent / "cache")),
        "refinement": job("refinement", imported=paths["import"], quality=str(work / "quality.json"), inference=paths["inference"],
                          segmentation=paths["segmentation"], review=paths["review"], refinement=paths["refinement"],
                          knowledge_base=str(ROOT / "config" / "knowledge_base.yaml"), settings={}, channels=channels,
                          refine={"enabled": False}, count_tolerance=0.2, cell_line_column="cell_line"),
        "gallery": job("gallery", imported=paths["import"], refinement=paths["refinement"], settings={}, channels=channels,
                       reference=str(work / "reference.json"), gallery=str(work / "gallery.json")),
    }


def timed(command: list[str], log: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB) of one process, from GNU time."""
    stats = log.with_suffix(".time")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "workflow")}
    with open(log, "w") as handle:
        result = subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", str(stats), *command], stdout=handle, stderr=handle, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{command[3]} failed (exit {result.returncode}); see {log}")  # command[3]: the rule
    wall, kb = stats.read_text().split()[-2:]
    return float(wall), int(kb) / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--max-rss-gb", type=float, default=18.0, help="skip a stage whose extrapolated peak exceeds this")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    for needed in (UNET, NUCLEI):
        if not needed.exists():
            sys.exit(f"{needed} is absent: the real model and nuclei live in ../shared beside the project")
    tmp = Path(tempfile.mkdtemp(prefix="snakescope-large-"))
    results: dict[str, dict[int, tuple[float, float]]] = {stage: {} for stage in STAGES}
    per_pixel: dict[str, float] = {}
    for size in args.sizes:
        work = tmp / str(size)
        work.mkdir()
        source = write_input(tmp, size)
        steps = commands(work, source)
        megapixels = size * size / 1e6
        for stage in ("import", "quality", "check", "infer", "postprocess", "reference", "review", "refinement", "gallery"):
            if stage in per_pixel and per_pixel[stage] * size * size / 1024**3 > args.max_rss_gb:
                print(f"{size:>6}² {stage:<12} skipped: about {per_pixel[stage] * size * size / 1024**3:.1f} GB expected "
                      f"(> --max-rss-gb {args.max_rss_gb:g})", flush=True)
                break  # later stages need this one's output
            wall, rss = timed(steps[stage], work / f"{stage}.log")
            if stage in STAGES:
                results[stage][size] = (wall, rss)
                per_pixel[stage] = rss * 1024**3 / (size * size)
                print(f"{size:>6}² {stage:<12} peak {rss:6.2f} GB ({per_pixel[stage]:6.1f} B/px)  {wall:7.1f} s "
                      f"({wall / megapixels:6.2f} s/MP)", flush=True)
    smallest = min(args.sizes)
    ratios = {}
    for stage, by_size in results.items():
        if smallest in by_size and len(by_size) > 1:
            largest = max(by_size)
            ratios[stage] = by_size[largest][1] / by_size[smallest][1]
            time_ratio = (by_size[largest][0] / largest**2) / (by_size[smallest][0] / smallest**2)
            print(f"{stage:<12} peak RSS {largest}² / {smallest}² = {ratios[stage]:.2f}; time per MP {time_ratio:.2f}x")
    complete = all(max(args.sizes) in by_size for by_size in results.values())
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    worst = max(ratios.values()) if ratios and complete else float("nan")
    print(f"rss_ratio={worst:.2f}")


if __name__ == "__main__":
    main()

"""Each per-batch stage's wall time on a batch of 1024² fields with the job given 1 core and 2 cores.

    python bench/stage_cores.py [--fields 50] [--size 1024] [--rounds 2]

The batch: --fields (default: a batch at the workflow's default ``batch_size``) OME-TIFFs of real BBBC039 nuclei tiled to --size² (bench/large_image.py's mosaic, each
with its own seed), 0.645 µm pixels. Each stage's function runs as its rule's job calls it (the job's
``threads`` as its ``workers``/``threads``), in this process, on the outputs of the stages before it:
import, quality metrics, inference (the real U-Net at its defaults, model check done once beforehand),
post-processing and the gallery. The job's start-up (imports, model load) is not in the figures; a job of
50 fields pays it once. 1 and 2 cores alternate for --rounds rounds; per stage the median times and their
ratio t(2 cores) / t(1 core) are printed (target <= 0.6). The last line is the worst stage:
``core_ratio=<value>``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))
sys.path.insert(0, str(ROOT / "bench"))

from large_image import NUCLEI, UNET, mosaic  # noqa: E402


def write_fields(folder: Path, count: int, size: int) -> list[Path]:
    import tifffile

    paths = []
    for i in range(count):
        path = folder / f"field_{i:02d}.ome.tif"
        tifffile.imwrite(path, mosaic(size, seed=i)[None], photometric="minisblack",
                         metadata={"axes": "CYX", "PhysicalSizeX": 0.645, "PhysicalSizeY": 0.645, "Channel": {"Name": ["DAPI"]}})
        paths.append(path)
    return paths


def stages(work: Path, sources: list[Path]) -> dict[str, Callable[[int, Path], object]]:
    """stage name -> run(cores, out_dir), each reading the outputs of a reference run of the stages before it."""
    from snakescope.core.inputs import Source
    from snakescope.core.records import read_json
    from snakescope.core.settings import GallerySettings, ImportSettings, ModelSettings, PostprocessSettings
    from snakescope.stages.acquisition import import_batch
    from snakescope.stages.inference import check_model, predict_batch
    from snakescope.stages.quality import quality_batch
    from snakescope.stages.report.gallery import gallery_batch
    from snakescope.stages.segmentation import postprocess_batch
    from snakescope.core.records import LABELS_SUFFIX, write_json

    model = ModelSettings(source=str(UNET), run_test=False)
    write_json(work / "model_check.json", check_model(model, work / "cache"))
    batch = [Source(p.stem, str(p)) for p in sources]
    import_batch("b0000", batch, ImportSettings(), work / "import")
    imported = work / "import" / "manifest.json"
    predict_batch(imported, model, work / "model_check.json", work / "inference", threads=2)
    postprocess_batch(imported, work / "inference" / "manifest.json", PostprocessSettings(), (0,), work / "segmentation")
    summaries = read_json(work / "segmentation" / "summary.json")["summaries"]
    final = {uid: {"labels": str(work / "segmentation" / f"{uid}{LABELS_SUFFIX}")} for uid in summaries}
    return {
        "import": lambda cores, out: import_batch("b0000", batch, ImportSettings(), out, workers=cores),
        "quality": lambda cores, out: quality_batch(imported, out / "quality.json", workers=cores),
        "inference": lambda cores, out: predict_batch(imported, model, work / "model_check.json", out, threads=cores),
        "postprocess": lambda cores, out: postprocess_batch(imported, work / "inference" / "manifest.json",
                                                            PostprocessSettings(), (0,), out, workers=cores),
        "gallery": lambda cores, out: gallery_batch(imported, final, (0,), GallerySettings(), out / "gallery.json",
                                                    workers=cores),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fields", type=int, default=50)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--stages", nargs="+", default=None, help="only these stages (default: all)")
    args = parser.parse_args()
    if not (UNET.is_file() and NUCLEI.is_dir()):
        raise SystemExit(f"needs the real U-Net and nuclei in ../shared ({UNET}, {NUCLEI})")
    import contextlib
    import io

    import tqdm
    from functools import partialmethod

    tqdm.tqdm.__init__ = partialmethod(tqdm.tqdm.__init__, disable=True)
    work = Path(tempfile.mkdtemp(prefix="stage-cores-"))
    sources = write_fields(work, args.fields, args.size)
    with contextlib.redirect_stderr(io.StringIO()):
        runs = stages(work, sources)
    print(f"{args.fields} fields of {args.size}² (real BBBC039 nuclei), {args.rounds} rounds, in {work}")
    ratios = {}
    for name, run in runs.items():
        if args.stages and name not in args.stages:
            continue
        times: dict[int, list[float]] = {1: [], 2: []}
        for r in range(args.rounds):
            for cores in ((1, 2) if r % 2 == 0 else (2, 1)):
                out = work / "runs" / f"{name}-{cores}-{r}"
                out.mkdir(parents=True)
                t0 = time.perf_counter()
                with contextlib.redirect_stderr(io.StringIO()):
                    run(cores, out)
                times[cores].append(time.perf_counter() - t0)
        one, two = statistics.median(times[1]), statistics.median(times[2])
        ratios[name] = two / one
        print(f"  {name:12s} 1 core {one:6.2f}s   2 cores {two:6.2f}s   ratio {ratios[name]:.3f}")
    worst = max(ratios, key=ratios.get)
    print(f"worst stage: {worst}; wall time at 2 cores over 1 core (target <= 0.6)")
    print(f"core_ratio={ratios[worst]:.3f}")


if __name__ == "__main__":
    main()

"""LLM review throughput against a server with K parallel slots and a fixed latency per answer.

    python bench/review_throughput.py [--latency 2.0] [--units 32] [--backend ollama|openai]

The server is tests/fake_llm.py (the real wire protocol, answers computed from the image bytes) with
``latency`` seconds per answer on each of K slots: the ideal throughput is K / latency answers per second.
The review stage (snakescope.stages.review.review_batch through the real `ollama` or `openai` client, max_concurrency = K,
cache empty, refinement off so only the LLM path is timed) reviews demo units; K = 1 reviews a quarter of them.
Then a run as the workflow makes it: the run's self-test once (rule llm_check: two probe requests with the same latency)
and ``--batches`` review jobs of ``--units`` units each that read its record (no probe of their own), ``--jobs`` at a
time as Snakemake runs them (separate processes), each with an empty cache. Prints the achieved and ideal rates per K and for the run; the last line is
``ratio=<achieved/ideal of the run at K=8, self-test included>`` (target >= 0.9).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "workflow"), str(ROOT / "tests")]


def prepared_batch(root: Path, n_units: int) -> Path:
    """Demo units taken through import, quality, inference and post-processing (no Snakemake); returns the root."""
    from snakescope.stages.acquisition import import_batch
    from snakescope.core.settings import ImportSettings
    from snakescope.demo import write_demo_data, write_demo_model
    from snakescope.stages.inference import check_model, predict_batch
    from snakescope.core.settings import ModelSettings
    from snakescope.core.inputs import Source, read_sample_sheet
    from snakescope.stages.quality import quality_batch
    from snakescope.core.records import write_json
    from snakescope.stages.segmentation import postprocess_batch
    from snakescope.core.settings import PostprocessSettings

    write_demo_data(root / "demo")
    write_demo_model(root / "demo" / "model")
    sheet = [s for s in read_sample_sheet(root / "demo" / "samples.tsv") if s.sample_id.startswith(("ctrl", "treated"))]
    sources = [Source(f"{s.sample_id}_{i}", s.path, s.metadata) for i in range(-(-n_units // len(sheet))) for s in sheet][:n_units]
    import_batch("b0000", sources, ImportSettings(), root / "import")
    quality_batch(root / "import" / "manifest.json", root / "quality.json")
    settings = ModelSettings(source=str(root / "demo" / "model" / "bioimageio.yaml"), channels=("DAPI",))
    write_json(root / "check.json", check_model(settings, root / "cache"))
    predict_batch(root / "import" / "manifest.json", settings, root / "check.json", root / "inference")
    postprocess_batch(root / "import" / "manifest.json", root / "inference" / "manifest.json", PostprocessSettings(), ("DAPI",),
                      root / "segmentation")
    return root


def run_rate(root: Path, manifest: Path, latency: float, out: Path, backend: str, batches: int,
             jobs: int) -> tuple[float, int, float, float]:
    """A run at 8 slots: the self-test once, then ``batches`` review jobs reading its record, ``jobs`` at a time (as
    Snakemake runs independent jobs). (answers/s, units, seconds, seconds of the self-test)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from fake_llm import FakeLLMServer
    from snakescope.llm.settings import LLMSettings
    from snakescope.methods.llm_review import check_run
    from snakescope.stages.review import SCHEMA_PATH, review_batch

    server = FakeLLMServer(latency=latency, slots=8).start()
    try:
        endpoint = server.host if backend == "ollama" else server.openai_base
        llm = {"endpoint": endpoint, "prompt": str(ROOT / "config" / "prompts" / "review_v1.txt"), "max_concurrency": 8,
               "refine": {"enabled": False}, "timeout_s": 60}
        started = time.perf_counter()
        record = check_run(LLMSettings.from_config(llm, backend))
        checked = time.perf_counter() - started
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:  # Snakemake's --jobs
            docs = pool.map(review_batch, *zip(*[(manifest, root / "quality.json", root / "inference" / "manifest.json",
                                                   root / "segmentation", ROOT / "config" / "knowledge_base.yaml",
                                                   {"backend": backend, "llm": llm}, ("DAPI",), out / f"b{batch}",
                                                   SCHEMA_PATH, out / f"cache{batch}", None, record) for batch in range(batches)]))
            reviewed = sum(r["status"] == "reviewed" for doc in docs for r in doc["reviews"])
        seconds = time.perf_counter() - started
    finally:
        server.stop()
    probes = len(server.probe_requests())
    assert probes == 2, f"the self-test is once per run: {probes} probe requests"
    return reviewed / seconds, reviewed, seconds, checked


def review_rate(root: Path, manifest: Path, slots: int, latency: float, out: Path, concurrency: int, backend: str,
                selftest: bool = False) -> tuple[float, int, float]:
    """Answers per second of one review_batch against a server with ``slots`` slots; the units reviewed; seconds."""
    from fake_llm import FakeLLMServer
    from snakescope.core.records import read_json
    from snakescope.stages.review import review_batch

    server = FakeLLMServer(latency=latency, slots=slots).start()
    try:
        endpoint = server.host if backend == "ollama" else server.openai_base
        settings = {"backend": backend, "llm": {"endpoint": endpoint, "prompt": str(ROOT / "config" / "prompts" / "review_v1.txt"),
                                                "max_concurrency": concurrency, "refine": {"enabled": False}, "timeout_s": 60,
                                                "selftest": selftest}}
        started = time.perf_counter()
        doc = review_batch(manifest, root / "quality.json", root / "inference" / "manifest.json", root / "segmentation",
                           ROOT / "config" / "knowledge_base.yaml", settings, ("DAPI",), out, cache_dir=out / "cache")
        seconds = time.perf_counter() - started
    finally:
        server.stop()
    reviewed = sum(r["status"] == "reviewed" for r in doc["reviews"])
    assert reviewed == len(read_json(manifest)["units"]), "every unit must be reviewed by the LLM"
    return reviewed / seconds, reviewed, seconds


def subset_manifest(root: Path, n: int) -> Path:
    from snakescope.core.records import read_json, write_json

    doc = read_json(root / "import" / "manifest.json")
    path = root / f"manifest-{n}.json"
    write_json(path, {**doc, "units": doc["units"][:n]})
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=2.0, help="seconds per answer on one slot")
    parser.add_argument("--units", type=int, default=32, help="units reviewed at K=8 (a quarter at K=1)")
    parser.add_argument("--sequential", action="store_true", help="max_concurrency 1 whatever K (how snakescope asked before)")
    parser.add_argument("--backend", choices=("ollama", "openai"), default="ollama", help="wire protocol (the fake serves both)")
    parser.add_argument("--batches", type=int, default=4, help="review jobs in the run (each of --units units)")
    parser.add_argument("--jobs", type=int, default=2, help="review jobs at once (Snakemake's --jobs/--cores; 2 on this machine)")
    args = parser.parse_args()
    import tqdm
    from functools import partialmethod

    tqdm.tqdm.__init__ = partialmethod(tqdm.tqdm.__init__, disable=True)
    with tempfile.TemporaryDirectory(prefix="snakescope-review-bench-") as tmp:
        root = prepared_batch(Path(tmp), args.units)
        ratios = {}
        for slots, n in ((1, max(2, args.units // 4)), (8, args.units)):
            concurrency = 1 if args.sequential else slots
            rate, reviewed, seconds = review_rate(root, subset_manifest(root, n), slots, args.latency, Path(tmp) / f"review-k{slots}",
                                                  concurrency, args.backend)
            ideal = slots / args.latency
            ratios[slots] = rate / ideal
            print(f"K={slots}: {reviewed} units reviewed at {rate:.2f} answers/s; ideal {ideal:.2f}/s "
                  f"({slots} slot(s) / {args.latency:g} s); achieved/ideal {ratios[slots]:.3f}")
        rate, reviewed, seconds, checked = run_rate(root, subset_manifest(root, args.units), args.latency, Path(tmp) / "run",
                                                    args.backend, args.batches, args.jobs)
        run_ratio = rate / (8 / args.latency)
        print(f"K=8, a run of {args.batches} review job(s), {args.jobs} at a time, and its self-test ({checked:.1f} s, once): "
              f"{reviewed} units in "
              f"{seconds:.1f} s, {rate:.2f} answers/s; achieved/ideal {run_ratio:.3f}")
    print(f"ratio={run_ratio:.3f}")


if __name__ == "__main__":
    main()

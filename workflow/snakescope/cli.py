"""Command line: one subcommand per stage, so Snakemake rules stay one line.

    snakescope demo-data DIR           write the built-in demo images, sample sheet and model
    snakescope import ...              acquisition import of one batch
    snakescope quality ...             quality metrics of one batch
    snakescope quality-reference ...   the run's median and MAD of the metrics (relative checks)
    snakescope check-model ...         test a bioimage.io model once (cached per digest)
    snakescope infer ...               model inference for one batch (model loaded once)
    snakescope dataset-pixels ...      a pooled pixel sample of the run (model.normalization: dataset)
    snakescope postprocess ...         labels and measurements for one batch
    snakescope review ...              review of one batch (rules; an LLM vision model when configured)
    snakescope llm-check --config F    self-test of the configured LLM backend before a run
    snakescope watch --config F        review each field while a screen is acquired (action records, JSON Lines)
    snakescope simulate-acquisition .. write fields cut from real images into a folder at a set rate (try watch)
    snakescope summary ...             the run's narrative summary, numbers checked against the tables
    snakescope tables ...              merge batches into tables and the acquisition actions
    snakescope gallery ...             report thumbnails and detail views of one batch
    snakescope plots ...               the report's SVG plots
    snakescope report ...              the self-contained HTML report
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def _json(text: str) -> Any:
    return json.loads(text)


def _channels(settings: dict[str, Any]) -> tuple[str | int, ...]:
    return tuple(settings.get("channels", (0,)))


def _progress(stage: str, doc: dict[str, Any], done: int) -> None:
    from collections import Counter

    from .progress import batch_progress

    failures = len(doc.get("failures", []))
    verdicts = Counter(r["verdict"] for r in doc.get("reviews", []))
    extra = "".join(f", {n} {v}" for v, n in sorted(verdicts.items()))
    if doc.get("uses_llm") or doc.get("llm_error"):  # an LLM run: say how many the LLM really reviewed
        by_llm = sum(1 for r in doc.get("reviews", []) if r["reviewer"].get("uses_llm"))
        scoped = sum(1 for r in doc.get("reviews", []) if r.get("status") == "rules_only")
        extra += (f"; {by_llm} reviewed by the LLM, {len(doc.get('reviews', [])) - by_llm} by the rules alone"
                  + (f" ({scoped} of them left to the rules by review.llm.scope)" if scoped else ""))
    batch_progress(stage, doc["batch"], f"{done} unit(s) done{extra}" + (f", {failures} FAILED (see the log)" if failures else ""))


def cmd_demo_data(args: argparse.Namespace) -> None:
    from .demo import write_demo_data, write_demo_model

    out = Path(args.out)
    truth = write_demo_data(out)
    model = write_demo_model(out / "model")
    print(f"demo data: {len(truth)} units in {out}/samples.tsv; demo model: {model}")


def cmd_import(args: argparse.Namespace) -> None:
    from .acquisition import ImportSettings, import_batch
    from .inputs import Source

    sources = [Source(**s) for s in args.sources]
    settings = ImportSettings.from_config(args.settings, reader=args.reader)
    doc = import_batch(args.batch, sources, settings, args.out)
    _progress("import", doc, len(doc["units"]))


def cmd_quality(args: argparse.Namespace) -> None:
    from .quality import quality_batch

    doc = quality_batch(args.manifest, args.out)
    _progress("quality", doc, len(doc["metrics"]))


def cmd_quality_reference(args: argparse.Namespace) -> None:
    from .review import write_run_reference

    doc = write_run_reference(args.quality, args.out, args.manifests, args.plate_column)
    print(f"quality reference: {doc['fields']} field(s) per channel", file=sys.stderr)


def cmd_check_model(args: argparse.Namespace) -> None:
    from .inference import ModelError, ModelSettings, check_model
    from .records import write_json

    settings = ModelSettings.from_config(args.settings)
    try:
        record = check_model(settings, args.cache_dir)
    except ModelError as exc:
        sys.exit(f"snakescope: {exc}")
    if record["test"]["status"] not in ("passed", "skipped"):
        reasons = "; ".join(record["test"].get("errors") or record["test"].get("failed_checks") or ["no detail"])
        sys.exit(f"snakescope: config key model.source={settings.source!r}: bioimageio test_model "
                 f"did not pass ({record['test']['status']}): {reasons}")
    write_json(args.out, record)
    cached = " (cached)" if record.get("test_cached") else ""
    print(f"model {record['name']} [{settings.weight_format}] test {record['test']['status']}{cached}", file=sys.stderr)


def cmd_infer(args: argparse.Namespace) -> None:
    from .inference import ModelError, ModelSettings, predict_batch

    try:
        doc = predict_batch(args.manifest, ModelSettings.from_config(args.settings), args.model_check, args.out,
                            args.dataset_pixels, threads=args.threads)
    except ModelError as exc:
        sys.exit(f"snakescope: {exc}")
    _progress("inference", doc, len(doc["predictions"]))


def cmd_dataset_pixels(args: argparse.Namespace) -> None:
    import numpy as np

    from .inference import pooled_pixels

    pixels = pooled_pixels(args.manifests, _channels(args.model_settings))
    with open(args.out, "wb") as handle:
        np.save(handle, pixels)
    print(f"dataset pixels: {pixels.shape[1]} per channel from {len(args.manifests)} batch(es)", file=sys.stderr)


def cmd_postprocess(args: argparse.Namespace) -> None:
    from .segmentation import PostprocessSettings, postprocess_batch

    doc = postprocess_batch(args.manifest, args.inference, PostprocessSettings.from_config(args.settings),
                            _channels(args.model_settings), args.out)
    _progress("segmentation", doc, len(doc["summaries"]))


def _llm_section(args: argparse.Namespace) -> dict[str, Any]:
    """``review.llm`` with the runtime keys (endpoint, timeouts, ...) the workflow passes through the environment."""
    return {**args.settings.get("llm", {}), **args.runtime}


def cmd_review(args: argparse.Namespace) -> None:
    from .llm.settings import LLMUnavailable
    from .review import review_batch

    settings = {**args.settings, "llm": _llm_section(args)}
    try:
        doc = review_batch(args.manifest, args.quality, args.inference, args.segmentation, args.knowledge_base, settings,
                           _channels(args.model_settings), args.out, args.schema, args.cache_dir, args.postprocess, args.reference)
    except LLMUnavailable as exc:
        sys.exit(f"snakescope: {exc} (review.llm.on_unreachable: fail)")
    _progress("review", doc, len(doc["reviews"]))


def cmd_watch(args: argparse.Namespace) -> None:
    """Watch mode (snakescope.watch): one process, the model loaded once, one action record per field."""
    import signal

    from .configuration import ConfigError, load_config
    from .inference import ModelError
    from .llm.settings import LLMUnavailable
    from .watch import Watcher, summary_lines

    project = Path(__file__).resolve().parents[2]
    try:
        config = load_config(args.config, project)
    except ConfigError as exc:
        sys.exit(f"snakescope: {exc}")
    knowledge_base = Path(config["review"]["knowledge_base"])
    if not knowledge_base.is_file() and (project / knowledge_base).is_file():
        knowledge_base = project / knowledge_base
    stop = {"requested": False}

    def request_stop(signum: int, frame: Any) -> None:
        stop["requested"] = True
        print("[watch] stopping after the field in hand (records and outputs so far are kept)", file=sys.stderr)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        watcher = Watcher(config, knowledge_base, args.config)
    except (ModelError, LLMUnavailable) as exc:
        sys.exit(f"snakescope: {exc}")
    print(f"[watch] {watcher.llm_note}", file=sys.stderr)
    where = config["samples"] or ", ".join(config["inputs"])
    print(f"[watch] model loaded in {watcher.load_seconds:.1f} s; watching {where}; "
          f"{len(watcher.records)} record(s) already in {watcher.actions_path}", file=sys.stderr)
    try:
        summary = watcher.run(lambda: stop["requested"], args.max_fields, args.idle_exit)
    except LLMUnavailable as exc:
        sys.exit(f"snakescope: {exc} (review.llm.on_unreachable: fail; the records so far are kept)")
    finally:
        watcher.close()
    for line in summary_lines(summary):
        print(line, file=sys.stderr)


def cmd_simulate_acquisition(args: argparse.Namespace) -> None:
    import glob

    import numpy as np
    import tifffile

    from .microscope_sim import acquire, fields_from, tiff_bytes

    paths = sorted(glob.glob(args.images))
    if not paths:
        sys.exit(f"snakescope: no file matches --images {args.images!r}")
    images = [np.squeeze(tifffile.imread(p)) for p in paths]
    images = [i if i.ndim == 2 else i.reshape(-1, *i.shape[-2:])[0] for i in images]
    encoded = [tiff_bytes(f, args.pixel_size_um) for f in fields_from(images, args.size, args.fields, args.seed)]
    for field in acquire(args.out, encoded, args.interval, chunks=args.chunks, write_s=args.write_s):
        print(f"[simulate-acquisition] wrote {field.path} in {field.closed - field.started:.2f} s", file=sys.stderr)


def cmd_llm_check(args: argparse.Namespace) -> None:
    """The LLM backend's self-test from a config file, before a run: exit 0 and the record, or 1 and the reason."""
    import yaml

    from .llm.client import connect
    from .llm.selftest import self_test
    from .llm.settings import LLMSettings, LLMUnavailable
    from .review import LLM_BACKENDS

    review = (yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}).get("review") or {}
    backend = args.backend or review.get("backend", "deterministic")
    if backend not in LLM_BACKENDS:
        sys.exit(f"snakescope: review.backend is {backend!r} in {args.config}: no LLM to check (use --backend ollama|openai)")
    settings = LLMSettings.from_config(review.get("llm") or {}, backend)
    try:
        with connect(settings) as (client, info):
            record = self_test(client, info)
    except LLMUnavailable as exc:
        sys.exit(f"snakescope: LLM self-test FAILED: {exc}")
    print(json.dumps(record, indent=1))
    print(f"LLM self-test passed: {info.model} on {info.backend} {info.server_version} sees images "
          f"(structured output: {record['structured_output']})", file=sys.stderr)


def cmd_pipeline_info(args: argparse.Namespace) -> None:
    from .provenance import write_pipeline_info

    write_pipeline_info(args.config, args.out)


def cmd_tables(args: argparse.Namespace) -> None:
    from .tables import USABLE_VERDICTS, build_tables

    counts = build_tables(args.batches, Path(args.results), _channels(args.model_settings), args.out, args.condition_column,
                          args.dataset, args.report_settings.get("plate_column", "plate"), args.report_settings.get("well_column", "well"),
                          args.report_settings.get("usable_verdicts", USABLE_VERDICTS), args.corrections)
    print(f"tables: {counts}", file=sys.stderr)


def cmd_gallery(args: argparse.Namespace) -> None:
    from .gallery import GallerySettings, gallery_batch

    gallery_batch(args.manifest, args.segmentation, args.review, _channels(args.model_settings),
                  GallerySettings.from_config(args.settings), args.out, args.reference)


def cmd_plots(args: argparse.Namespace) -> None:
    from .plots import write_plots

    written = write_plots(args.tables, args.out, args.condition_column, args.thresholds,
                          args.settings.get("plate_column", "plate"), args.settings.get("well_column", "well"),
                          args.settings.get("usable_verdicts"))
    print(f"plots: {len(written)} SVG file(s) in {args.out}", file=sys.stderr)


def cmd_summary(args: argparse.Namespace) -> None:
    from .llm.settings import AnswerInvalid, LLMSettings, LLMUnavailable
    from .llm.summary import write_run_summary
    from .records import read_json
    from .review import LLM_BACKENDS

    backend = args.settings.get("backend", "deterministic")
    llm = LLMSettings.from_config(_llm_section(args), backend) if backend in LLM_BACKENDS else None
    try:
        record = write_run_summary(read_json(args.aggregates), llm, args.cache_dir, args.out)
    except (LLMUnavailable, AnswerInvalid) as exc:
        sys.exit(f"snakescope: run summary: {exc} (review.llm.on_unreachable: fail)")
    print(f"run summary ({record['backend']}): {len(record['numbers_mismatched'])} unchecked number(s)", file=sys.stderr)


def cmd_report(args: argparse.Namespace) -> None:
    from .report import ReportSettings, write_report

    facts = write_report(args.tables, args.plots, args.gallery, args.model_check, args.pipeline_info, args.dataset, args.out,
                         ReportSettings.from_config(args.settings), args.benchmarks, args.batches)
    print(f"report: {Path(args.out).resolve()} ({facts['units']} units, {facts['bytes'] / 1e6:.1f} MB, "
          f"{facts['bytes_per_unit'] / 1024:.1f} KiB per unit)", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="snakescope", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func, help_text: str, **arguments: dict[str, Any]) -> None:
        p = sub.add_parser(name, help=help_text, description=help_text)
        for flag, kwargs in arguments.items():
            p.add_argument(f"--{flag.replace('_', '-')}", dest=flag, **kwargs)
        p.set_defaults(func=func)

    req = {"required": True}
    js = {"required": True, "type": _json}
    # Settings that do not change results reach jobs through the environment (set by the workflow), so
    # changing them reruns nothing: the LLM server's address and timeouts, and the cache folder.
    runtime = {"type": _json, "default": os.environ.get("SNAKESCOPE_LLM_RUNTIME", "{}"),
               "help": "LLM settings that do not change results (endpoint, timeouts); default $SNAKESCOPE_LLM_RUNTIME"}
    cache_dir = {"default": os.environ.get("SNAKESCOPE_CACHE_DIR", ".snakescope-cache"),
                 "help": "model-test and review cache; default $SNAKESCOPE_CACHE_DIR"}
    add("demo-data", cmd_demo_data, "write the built-in demo data set and demo model", out={**req, "help": "output folder"})
    add("import", cmd_import, "import one batch of acquisition files", batch=req, sources={**js, "help": "JSON list of sources"},
        settings={**js, "help": "JSON of config section import"}, reader={"default": "bioio"}, out=req)
    add("quality", cmd_quality, "quality metrics of one imported batch", manifest=req, out=req)
    add("quality-reference", cmd_quality_reference, "the run's median and MAD of quality metrics (relative checks)",
        quality={"nargs": "+", "required": True, "help": "quality JSON files of every batch"}, out=req,
        manifests={"nargs": "*", "default": [], "help": "import manifests (for the plate of each unit)"},
        plate_column={"default": "plate", "help": "sample-sheet column naming the plate"})
    add("check-model", cmd_check_model, "run bioimageio test_model once per model digest", settings=js, cache_dir=req, out=req)
    add("infer", cmd_infer, "bioimage.io inference for one batch", manifest=req, settings=js, model_check=req, out=req,
        dataset_pixels={"default": None, "help": "pooled pixels (.npy) for dataset-level normalisation"},
        threads={"type": int, "default": 1, "help": "CPU threads for the model runtime (onnxruntime, torch)"})
    add("dataset-pixels", cmd_dataset_pixels, "a pooled pixel sample of the run (dataset-level normalisation)",
        manifests={"nargs": "+", "required": True}, model_settings=js, out=req)
    add("postprocess", cmd_postprocess, "instance labels and measurements for one batch", manifest=req, inference=req,
        settings=js, model_settings=js, out=req)
    add("review", cmd_review, "review one batch (rules, and an LLM vision model when configured)", manifest=req,
        quality=req, inference=req, segmentation=req, knowledge_base=req, settings=js, model_settings=js, schema=req, out=req,
        postprocess={"type": _json, "default": {}}, reference={"default": None, "help": "the run's quality reference JSON"},
        runtime=runtime, cache_dir=cache_dir)
    add("llm-check", cmd_llm_check, "self-test of the configured LLM backend (server, model, sees images, JSON)",
        config={**req, "help": "a snakescope config file (its review section)"},
        backend={"default": None, "help": "ollama or openai (default: the config's review.backend)"})
    add("watch", cmd_watch, "review each field while a screen is acquired: one action record per field (JSON Lines)",
        config={"action": "append", "required": True, "help": "config file(s), as snakemake --configfile (repeat to layer)"},
        max_fields={"type": int, "default": None, "help": "stop after this many new files"},
        idle_exit={"type": float, "default": None, "help": "stop after this many seconds without a new file"})
    add("simulate-acquisition", cmd_simulate_acquisition, "write fields cut from real images into a folder at a set rate",
        images={**req, "help": "glob of real single-plane TIFFs to cut fields from"}, out={**req, "help": "the folder to fill"},
        fields={"type": int, "default": 50}, size={"type": int, "default": 1024, "help": "field edge in pixels"},
        interval={"type": float, "default": 2.0, "help": "seconds between fields"},
        pixel_size_um={"type": float, "default": None, "help": "pixel size written into each file (default: none)"},
        chunks={"type": int, "default": 4, "help": "pieces each file is written in"},
        write_s={"type": float, "default": 0.2, "help": "seconds each file takes to write"}, seed={"type": int, "default": 0})
    add("pipeline-info", cmd_pipeline_info, "write params.json and software_versions.json", config=js, out=req)
    add("tables", cmd_tables, "merge batch outputs into tables and acquisition_actions.json", batches={**js}, results=req,
        model_settings=js, out=req, condition_column={"default": "treatment"}, dataset={"default": ""},
        report_settings={"type": _json, "default": {}, "help": "JSON of config section report (plate/well columns)"},
        corrections={"default": None, "help": "a corrections file exported from the report (config review.corrections)"})
    add("gallery", cmd_gallery, "report thumbnails and detail views of one batch", manifest=req, segmentation=req, review=req,
        model_settings=js, settings={"type": _json, "default": {}, "help": "JSON of config section report"}, out=req,
        reference={"default": None, "help": "quality/reference.json: the run's shared contrast per channel"})
    add("plots", cmd_plots, "write the report's SVG plots from the tables", tables=req, out=req,
        condition_column={"default": "treatment"}, thresholds={"type": _json, "default": {}, "help": "JSON of review.thresholds"},
        settings={"type": _json, "default": {}, "help": "JSON of config section report"})
    add("summary", cmd_summary, "the run's narrative summary (LLM or template), numbers checked", aggregates=req,
        settings=js, runtime=runtime, cache_dir=cache_dir, out=req)
    add("report", cmd_report, "write the self-contained HTML report", tables=req, plots=req,
        gallery={"nargs": "*", "default": [], "help": "gallery JSON files of the batches"}, model_check=req,
        pipeline_info=req, dataset=req, out=req, settings={"type": _json, "default": {}, "help": "JSON of config section report"},
        benchmarks={"default": None, "help": "folder of Snakemake benchmark files (benchmarks/<rule>/*.tsv)"},
        batches={"type": _json, "default": None, "help": "JSON list of this run's batches (whose benchmarks count)"})
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":  # the rules run ``python -m snakescope``, which hands a job to the stage host first
    main()

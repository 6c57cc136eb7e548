"""The commands people type; the workflow's stages run as Snakemake rules (``snakemake --configfile ...``).

    snakescope demo-data --out DIR          write the built-in demo images, sample sheet and model
    snakescope watch --config F             review each field while a screen is acquired (action records, JSON Lines)
    snakescope llm-check --config F         self-test of the configured LLM backend before a run
    snakescope simulate-acquisition ...     write fields cut from real images into a folder at a set rate (try watch)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any
from .core.layout import PROJECT_DIR


def cmd_demo_data(args: argparse.Namespace) -> None:
    from .demo import write_demo_data, write_demo_model

    out = Path(args.out)
    truth = write_demo_data(out)
    model = write_demo_model(out / "model")
    print(f"demo data: {len(truth)} units in {out}/samples.tsv; demo model: {model}")


def cmd_watch(args: argparse.Namespace) -> None:
    """Watch mode (snakescope.watch): one process, the model loaded once, one action record per field."""
    import signal

    from .core.configuration import ConfigError, load_config
    from .stages.inference import ModelError
    from .llm.settings import LLMUnavailable
    from .watch import Watcher, WatchLocked, summary_lines

    project = PROJECT_DIR
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
    except (ModelError, LLMUnavailable, WatchLocked) as exc:
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
    """The LLM backend's self-test from a config file, before a run (what rule llm_check records): exit 0 and the
    record, or 1 and the reason."""
    from dataclasses import replace

    import yaml

    from .methods.llm_review import check_run
    from .llm.settings import BACKENDS as LLM_BACKENDS
    from .llm.settings import LLMSettings

    review = (yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}).get("review") or {}
    backend = args.backend or review.get("backend", "deterministic")
    if backend not in LLM_BACKENDS:
        sys.exit(f"snakescope: review.backend is {backend!r} in {args.config}: no LLM to check (use --backend ollama|openai)")
    settings = replace(LLMSettings.from_config(review.get("llm") or {}, backend), on_unreachable="fallback")
    record = check_run(settings, replace(settings, model=settings.summary_model) if settings.summary_model else None)
    print(json.dumps(record, indent=1))
    failed = [f"{role} model {r.get('model')!r}: {r.get('error')}" for role, r in record.items()
              if isinstance(r, dict) and r.get("passed") is False]
    if failed:
        sys.exit("snakescope: LLM self-test FAILED: " + "; ".join(failed))
    checked = record["review"]
    print(f"LLM self-test passed: {checked['model']} on {checked.get('server_kind') or backend} {checked['server_version']} "
          f"sees images (structured output: {checked['structured_output']})", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="snakescope", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func, help_text: str, **arguments: dict[str, Any]) -> None:
        p = sub.add_parser(name, help=help_text, description=help_text)
        for flag, kwargs in arguments.items():
            p.add_argument(f"--{flag.replace('_', '-')}", dest=flag, **kwargs)
        p.set_defaults(func=func)

    req = {"required": True}
    add("demo-data", cmd_demo_data, "write the built-in demo data set and demo model", out={**req, "help": "output folder"})
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
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()

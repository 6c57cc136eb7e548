"""Watch mode: review each field while a screen is acquired, within seconds of its file being complete.

    snakescope watch --config CONFIG [--max-fields N] [--idle-exit S]

One long-lived process with the model loaded once. It lists the acquisition folder (config ``inputs``) or
the sample sheet (``samples``) every ``watch.poll_s`` seconds; a new file is complete when its size and
modification time have not changed for ``watch.stable_s`` seconds. Each complete file runs through import,
quality metrics, inference, post-processing and the rule-based review, and each of its fields (units) gets
exactly one action record appended to a JSON-Lines file (``watch.actions_file``; format in
``workflow/schemas/watch_record.schema.json``) that a microscope-control script can tail. snakescope never
drives the microscope: a record says what to do, bounded by ``watch.*`` limits, with the evidence.

Every stage output is written where the batch workflow writes it (``import/<batch>/``, ``quality/<batch>.json``,
``inference/<batch>/``, ``segmentation/<batch>/``, ``models/model_check.json``), and a batch's manifests once
all of its files are done, so a later ``snakemake`` run over the same data plans no import, quality, inference
or post-processing job for those batches; its review, tables and report cover the whole screen (the review
then compares each field with the whole run, where watch mode compared it with the fields seen so far).

Stopping (Ctrl-C, SIGTERM) finishes the field in hand, writes the manifests of complete batches and prints
the summary; a restart reads the records already written and goes on with the files that have none.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import time
import warnings
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from .core.closes import open_closes
from .core.settings import WatchSettings
from .core.inputs import InputError, Source, batches, read_sample_sheet, sources_from_globs
from .core.records import LABELS_SUFFIX, Failure, read_json, write_json
from .core.layout import PROJECT_DIR, SNAKEFILE, BatchPaths, manifest
from .stages import STAGES


RECORD_FORMAT = "snakescope-watch-action"
RECORD_VERSION = 1
# Actions that image the field again (bounded per well); skip_field and check_sample do not.
REIMAGING = ("reacquire", "refocus", "increase_exposure", "reduce_exposure")
EXPOSURE_CHANGE = {"increase_exposure": 2.0, "reduce_exposure": 0.5}
POLLER_THREAD = "watch-poller"
WARM_UP_SIDE = 1024  # the field edge the watcher warms the model at (see _warm_up)


def _quiet_poller(record: Any) -> bool:
    """tifffile's complaints about half-written files, from the poller's looks at them, are expected: dropped."""
    import threading

    return threading.current_thread().name != POLLER_THREAD


def tiff_complete(path: str, ome_only: bool = False) -> bool | None:
    """A TIFF's own end marker: True when every page its metadata declares (OME-XML planes, ImageJ ``images``) is
    in the file with all its pixel data; False when the IFD chain or the data is cut short; None when the file does
    not declare its length (a plain TIFF, or not a TIFF at all): then only a stable size says it is complete.
    ``ome_only``: only an OME-XML declaration counts (an ImageJ description written plane by plane declares the
    first plane alone until the file is closed)."""
    import logging
    import re

    import tifffile

    tiff_log = logging.getLogger("tifffile")
    if _quiet_poller not in tiff_log.filters:
        tiff_log.addFilter(_quiet_poller)
    try:
        size = os.path.getsize(path)
        with tifffile.TiffFile(path) as tif:
            pages = len(tif.pages)
            expected = None
            if tif.is_ome and tif.ome_metadata:
                expected = 0
                for pixels in re.findall(r"<Pixels\b[^>]*>", tif.ome_metadata):
                    sizes = {k: int(v) for k, v in re.findall(r'\bSize([CZT])="(\d+)"', pixels)}
                    samples = re.search(r'SamplesPerPixel="(\d+)"', tif.ome_metadata)
                    expected += sizes.get("C", 1) * sizes.get("Z", 1) * sizes.get("T", 1) // max(1, int(samples.group(1)) if samples else 1)
            elif tif.is_imagej and tif.imagej_metadata and not ome_only:
                expected = int(tif.imagej_metadata.get("images", 1))
            for page in tif.pages:
                offsets, counts = getattr(page, "dataoffsets", ()), getattr(page, "databytecounts", ())
                if any(o + c > size for o, c in zip(offsets, counts)):
                    return False
    except Exception:  # noqa: BLE001 - a file being written can break a parser in any way: not complete yet
        try:
            return False if str(path).lower().endswith((".tif", ".tiff")) and os.path.getsize(path) > 0 else None
        except OSError:
            return False
    if expected is None:
        return None
    return pages >= expected


def file_signature(path: str) -> tuple[int, int] | None:
    """(size, modification time in ns) of a file, or None if it is not there."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def changed_since(path: str, timestamp: str) -> bool:
    """Whether the file was modified after ``timestamp`` (ISO 8601, a record's)."""
    try:
        return os.stat(path).st_mtime > datetime.fromisoformat(timestamp).timestamp()
    except (OSError, ValueError):
        return False


class FileTracker:
    """Decides when a file written by the microscope is complete.

    OME-TIFFs: as soon as all the planes their OME-XML declares are in the file with their data (tifffile writes
    the OME-XML when it closes the file; writers that declare it first have all planes in only at the end). ImageJ
    TIFFs: the same, and their size did not change since the previous look (one ``poll_s``): an ImageJ description
    written plane by plane declares the first plane alone until the file is closed. Other files: when size and modification
    time have not changed for ``stable_s`` seconds. A file that never becomes complete (cut short, not a TIFF
    although named one) is passed on after ``stable_s`` unchanged, so that the import records why it fails.
    """

    def __init__(self, stable_s: float, clock: Callable[[], float] = time.time) -> None:
        self.stable_s = stable_s
        self.clock = clock
        self._seen: dict[str, tuple[tuple[int, int], float]] = {}

    def complete(self, path: str, closed: bool = False) -> float | None:
        """The time the file was found complete, or None while it may still be written. ``closed``: the kernel
        said its writer closed it since the previous look (:mod:`.closes`): a declared length then counts at once
        whatever declares it (a closed ImageJ file's description is final)."""
        try:
            stat = os.stat(path)
        except OSError:
            return None
        now, signature = self.clock(), (stat.st_size, stat.st_mtime_ns)
        previous = self._seen.get(path)
        if stat.st_size == 0:
            self._seen[path] = (signature, now)
            return None
        if previous is None or previous[0] != signature:
            self._seen[path] = (signature, now)
            return now if self.stable_s <= 0 or tiff_complete(path, ome_only=not closed) else None
        if now - previous[1] >= self.stable_s:
            return now
        return now if tiff_complete(path) else None

    def forget(self, path: str) -> None:
        """Look at ``path`` as a new file from now on (it was removed; if it comes back it is watched from the start)."""
        self._seen.pop(path, None)


def well_key(entry: dict[str, Any]) -> str:
    """What the re-imaging limit counts per: plate/well from the sample sheet, else the file."""
    position = entry["position"]
    return f"{position['plate'] or ''}/{position['well']}" if position.get("well") else entry["source_path"]


def bounded_actions(entry: dict[str, Any], reimaged: dict[str, int], settings: WatchSettings) -> tuple[list, list]:
    """(actions to ask for, actions suppressed with the reason): at most ``max_reacquisitions_per_well`` re-imaging
    requests per well (per file when the sample sheet names no well), exposure factors within the configured limits."""
    well = well_key(entry)
    actions, suppressed = [], []
    allowed = reimaged.get(well, 0) < settings.max_reacquisitions_per_well  # one re-imaging per record, however many reasons
    for action in entry["actions"]:
        action = dict(action)
        if action["action"] in EXPOSURE_CHANGE:
            action["exposure_factor"] = min(settings.exposure_factor_max,
                                            max(settings.exposure_factor_min, EXPOSURE_CHANGE[action["action"]]))
        if action["action"] in REIMAGING and not allowed:
            suppressed.append({**action, "reason": f"watch.max_reacquisitions_per_well ({settings.max_reacquisitions_per_well}) "
                                                   f"reached for {well}"})
            continue
        actions.append(action)
    if any(a["action"] in REIMAGING for a in actions):
        reimaged[well] = reimaged.get(well, 0) + 1
    return actions, suppressed


class WatchLocked(RuntimeError):
    """Another watcher writes to the same results folder (or actions file)."""


def lock_results(paths: list[Path]) -> list[int]:
    """Hold an exclusive lock on each of ``paths`` for the life of this process (the kernel drops it when the process
    ends, however it ends); raises :class:`WatchLocked` naming the folder and the holder's process id when another
    watcher holds one. Two watchers on one folder would give two files the same sequence number."""
    import fcntl

    held: list[int] = []
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            for other in held:
                os.close(other)
            raise WatchLocked(f"another snakescope watch (process {holder}) already writes to {path.parent} (lock file "
                              f"{path.name}); stop it first, or give this one its own results folder (config key results "
                              "or dataset) and watch.actions_file") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        held.append(fd)
    return held


def _exit_with_parent(parent: int) -> None:
    """In a worker process: end it when the watcher that started it is gone, even after ``kill -9`` (no orphan
    keeps computing, nor keeps multiprocessing's resource tracker alive)."""
    import threading

    try:  # Linux: the kernel sends SIGKILL when the parent dies
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch_parent() -> None:  # elsewhere, and should the parent have died before prctl: look every second
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=watch_parent, name="watch-parent", daemon=True).start()


def _warm_up_postprocess(settings: Any) -> None:
    """Run in the post-processing worker at start: its imports and first calls are paid before the first field, then
    its objects are frozen out of later full collections (:mod:`.warmup`)."""
    import tempfile

    import numpy as np

    with tempfile.TemporaryDirectory(prefix="snakescope-warm-up-") as tmp:
        image = np.zeros((64, 64), np.uint16)
        image[20:40, 20:40] = 100
        first_segmentation(image, settings, Path(tmp))
    freeze_heap()


_HELD: dict[str, tuple[Any, Path]] = {}  # in the post-processing worker: fields segmented, files not yet written
_HELPER: list[ThreadPoolExecutor] = []  # in the post-processing worker: its second thread (segment_unit's helper)


def _helper() -> ThreadPoolExecutor:
    """The post-processing worker's second thread: it takes the steps of a field that do not wait for each other
    (the smoothing for the outlines, the lower half's flood, the outlines' background level, the intensity sums and
    channel means), on the core the quality metrics leave free once done."""
    if not _HELPER:
        _HELPER.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="postprocess-helper"))
    return _HELPER[0]


def segment_and_hold(unit: dict[str, Any], probability_path: str, settings: Any, channels: tuple[str | int, ...], out: Path,
                     hold: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """In the post-processing worker: a field's summary and objects; with ``hold`` its labels and overlay stay in
    the worker until :func:`write_held` (a large field, post-processed block by block, writes them as it goes)."""
    from .stages.segmentation import is_blocked, postprocess_one, segment_one

    if not hold or is_blocked(unit, settings):
        return postprocess_one(unit, probability_path, settings, channels, out)
    segmented = segment_one(unit, probability_path, settings, channels, helper=_helper())
    _HELD[unit["unit_id"]] = (segmented, out)
    return segmented.summary, segmented.objects


def write_held(unit_ids: list[str]) -> None:
    """In the post-processing worker: write the held fields' labels and overlays."""
    for uid in unit_ids:
        if uid in _HELD:
            segmented, out = _HELD.pop(uid)
            segmented.write(out)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, as a SLURM job's cgroup sets it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _now_iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat(timespec="milliseconds")


class Watcher:
    """The watch loop's state: settings parsed once, the model loaded once, the records written so far."""

    def __init__(self, config: dict[str, Any], knowledge_base_path: str | Path, config_files: list[str] | None = None,
                 base_dir: str | Path = ".") -> None:
        import yaml

        from .core.settings import ImportSettings
        from .stages.inference import ModelError, batch_predictor, check_model
        from .core.settings import ModelSettings
        from .core.settings import ReviewThresholds
        from .core.settings import PostprocessSettings

        self.config = config
        self.config_files = list(config_files or [])
        self.base = Path(base_dir)
        self.results = Path(config["results"]) / config["dataset"]
        self.settings = WatchSettings.from_config(config.get("watch", {}))
        self.actions_path = Path(self.settings.actions_file or self.results / "watch" / "actions.jsonl")
        self.locks = lock_results(sorted({self.results / "watch" / "watch.lock",
                                          self.actions_path.with_name(self.actions_path.name + ".lock")}))
        self.units_dir = self.results / "watch" / "units"
        model = {k: v for k, v in config["model"].items()}
        if model.get("normalization", "per_image") == "dataset":
            raise ModelError("config key model.normalization: dataset needs the whole run's pixels; watch mode normalises "
                             "each field by itself (per_image)")
        self.import_settings = ImportSettings.from_config(config["import"], reader=config["reader"])
        self.model_settings = ModelSettings.from_config(model)
        self.postprocess_settings = PostprocessSettings.from_config(config["postprocess"])
        self.channels = tuple(config["model"]["channels"])
        self.thresholds = ReviewThresholds.from_config(config["review"].get("thresholds", {}))
        self.cell_line_column = config["review"].get("cell_line_column", "cell_line")
        self.knowledge_base = yaml.safe_load(Path(knowledge_base_path).read_text(encoding="utf-8"))
        self.positions = (config["report"]["plate_column"], config["report"]["well_column"])
        started = time.time()
        self.check = check_model(self.model_settings, config["cache_dir"])
        if self.check["test"]["status"] not in ("passed", "skipped"):
            raise ModelError(f"config key model.source={self.model_settings.source!r}: bioimageio test_model did not pass")
        write_json(self.results / "models" / "model_check.json", self.check)
        # every core for inference: a field's latency is the sum of its stages, and a field arriving while the previous
        # one is post-processed shares the cores (measured at 1024²: 0.8 s on 2 threads against 1.4 s on 1)
        self.predictor = batch_predictor(self.model_settings, self.check, threads=self.settings.threads or available_cores())
        self._warm_up()
        self.load_seconds = time.time() - started
        self.llm_settings, self.llm_session, self.llm_note = self._open_llm()
        self.tracker = FileTracker(self.settings.stable_s)
        self.quality_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="watch-quality")
        self.front = ThreadPoolExecutor(max_workers=1, thread_name_prefix="watch-front")
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="watch-writer")
        self.writes: list[Any] = []
        # post-processing in a process of its own: its Python-level loops would otherwise hold the GIL while the next
        # file is imported and predicted (measured: 2.2 s per file overlapped in threads, against 1.6 s alone)
        self.post_pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_exit_with_parent, initargs=(os.getpid(),))
        self.post_pool.submit(_warm_up_postprocess, self.postprocess_settings).result()
        # the libraries' objects out of later collections: one full collection walks them in ~0.3 s (measured after
        # these imports), which would land in the middle of some field's latency
        freeze_heap()
        self.records = self._read_records()
        self.recorded = {r["sample_id"] for r in self.records}
        self.done = {sid for sid in self.recorded if (self.units_dir / f"{sid}.json").is_file()}
        for record in self.records:  # a file recorded unreadable and written to since: read again
            if record["status"] == "failed" and record["issues"][0]["type"] == "unreadable_input" and \
                    changed_since(record["source_path"], record["timestamp"]):
                self.done.discard(record["sample_id"])
                self.recorded.discard(record["sample_id"])
        self.reimaged: dict[str, int] = {}
        for record in self.records:
            if any(a["action"] in REIMAGING for a in record["actions"]):
                self.reimaged[well_key(record)] = self.reimaged.get(well_key(record), 0) + 1
        self.model_metrics = [m for f in self._unit_files() for m in f["model_metrics"]]
        self.written: dict[str, tuple[str, ...]] = {}
        self.resumed = len(self.records)

    def _open_llm(self) -> tuple[Any, Any, str]:
        """With ``review.backend: ollama|openai``: one session for the whole watch (connected, self-tested, the server
        kept warm between fields). Returns (settings, session or None, a line saying who reviews)."""
        from contextlib import ExitStack

        from .methods.llm_review import llm_session
        from .llm.settings import LLMSettings, LLMUnavailable
        from .stages.review import LLM_BACKENDS

        self._llm_stack = ExitStack()
        review = self.config["review"]
        if review["backend"] not in LLM_BACKENDS:
            return None, None, "reviewer: the rules (review.backend: deterministic)"
        section = dict(review.get("llm") or {})
        project = PROJECT_DIR
        for key, default in (("prompt", "config/prompts/review_v1.txt"), ("summary_prompt", "config/prompts/summary_v2.txt")):
            path = Path(section.get(key, default))
            section[key] = str(path if path.is_file() or not (project / path).is_file() else project / path)
        settings = LLMSettings.from_config(section, review["backend"])
        try:
            session = self._llm_stack.enter_context(llm_session(settings, self.results / "watch" / "llm-server.log"))
        except LLMUnavailable as exc:
            if settings.on_unreachable == "fail":
                raise
            return settings, None, f"reviewer: the rules: the LLM cannot be used ({exc}) (review.llm.on_unreachable: fallback)"
        return settings, session, (f"reviewer: {settings.model} via {review['backend']} (self-test: "
                                   f"{'passed' if session.checked.get('passed') else session.checked.get('note', 'failed')}); "
                                   "each field adds one request to its latency")

    def _llm_reviews(self, units: list[dict[str, Any]], context: dict[str, Any]) -> list[dict[str, Any]] | None:
        """The LLM's reviews of one file's units (the rules' as second opinion), or None to keep the rules' reviews."""
        from .methods.llm_review import llm_review_units
        from .llm.settings import LLMUnavailable

        try:
            reviews, _ = llm_review_units(units, context, self.llm_settings, self.config["cache_dir"], self.results / "watch" / "llm",
                                          self.thresholds.count_tolerance, self.llm_session)
            return reviews
        except LLMUnavailable as exc:
            if self.llm_settings.on_unreachable == "fail":
                raise
            print(f"[watch] LLM reviewer unavailable for this file, the rules review it: {exc}", file=sys.stderr)
            return None

    def _warm_up(self) -> None:
        """Pay the one-off costs before the first field: the runtime's first run at the fields' tile size, the reader
        plugins and the quality metrics' first calls (:mod:`.warmup`)."""
        import contextlib
        import io
        import tempfile

        import numpy as np

        # the runtime plans its memory per input shape: warm the tile a 1024² field uses (a 2048² one uses four of
        # them with auto tiles); with the model's own tiles any field uses its tile
        rule = self.predictor.tile_rule
        side = min(WARM_UP_SIDE, rule.largest - 2 * max(self.predictor.halo.values(), default=0)) if rule else 64
        self.predictor.predict(np.zeros((len(self.channels), side, side), np.float32), "warm-up")
        with tempfile.TemporaryDirectory(prefix="snakescope-warm-up-") as tmp, contextlib.redirect_stderr(io.StringIO()):
            first_reads(Path(tmp), self.import_settings)

    # -- state on disk ---------------------------------------------------------------------------------
    def _read_records(self) -> list[dict[str, Any]]:
        if not self.actions_path.is_file():
            return []
        records = []
        for line in self.actions_path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash mid-write: its field is processed again
                continue
        return records

    def _unit_files(self) -> list[dict[str, Any]]:
        return [read_json(p) for p in sorted(self.units_dir.glob("*.json"))] if self.units_dir.is_dir() else []

    def _append(self, records: list[dict[str, Any]]) -> None:
        self.actions_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.actions_path, "a", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    # -- sources -------------------------------------------------------------------------------------
    def sources(self) -> list[Source]:
        """The sources as the workflow would list them now (none yet is not an error while watching)."""
        try:
            if self.config.get("samples"):
                return read_sample_sheet(self.config["samples"], growing=True)
            return sources_from_globs(self.config["inputs"], self.base)
        except (InputError, FileNotFoundError):
            return []

    def input_folders(self) -> list[str]:
        """The existing folders the input globs start from (the sample sheet's files' folders are found as listed)."""
        folders = []
        for pattern in self.config.get("inputs") or []:
            parts = Path(pattern).parts
            fixed = parts[: next((i for i, p in enumerate(parts) if any(c in p for c in "*?[")), len(parts) - 1)]
            folder = self.base.joinpath(*fixed)
            if folder.is_dir():
                folders.append(str(folder))
        return folders

    def batch_of(self, sources: list[Source]) -> dict[str, str]:
        return {s.sample_id: batch for batch, members in batches(sources, self.config["batch_size"]).items() for s in members}

    # -- one field -----------------------------------------------------------------------------------
    def start(self, source: Source, batch: str) -> dict[str, Any]:
        """The first half of a file's stages, which may run beside the previous file's second half: import, then
        inference on all of the watcher's threads. Touches no shared state."""
        from .stages.acquisition import import_one
        from .stages.inference import predict_one

        started = time.time()
        paths = BatchPaths(self.results, batch)  # where the workflow keeps the batch: watch mode writes there too
        folders = {"import": paths.imported, "inference": paths.inference, "segmentation": paths.segmentation}
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        units, import_failures = import_one(source, self.import_settings, folders["import"], f"[watch {batch}]")
        imported = time.time()
        state: dict[str, Any] = {"sample_id": source.sample_id, "batch": batch, "units": [asdict(u) for u in units],
                                 "import_failures": [asdict(f) for f in import_failures], "metrics": {}, "quality_failures": [],
                                 "predictions": {}, "inference_failures": [], "summaries": {}, "objects": [],
                                 "postprocess_failures": [], "model_metrics": [], "started": started}
        for unit in state["units"]:
            prediction, failure = predict_one(self.predictor, unit, folders["inference"], f"[watch {batch}]")
            if failure:
                state["inference_failures"].append(failure)
            else:
                state["predictions"][unit["unit_id"]] = prediction
        state["stage_s"] = {"import": round(imported - started, 3), "inference": round(time.time() - imported, 3)}
        state["front_done"] = time.time()
        return state

    def finish(self, state: dict[str, Any], completed_at: float) -> list[dict[str, Any]]:
        """The second half: post-processing, the rule-based review against the fields seen so far, the records."""
        from .core.channels import model_channel_name
        from .stages.quality import quality_one, run_reference
        from .stages.review import review_one
        from .stages.report.tables import unit_action_entry, unreadable_entry

        batch, started, front_done = state["batch"], state.pop("started"), state.pop("front_done")
        finishing = time.time()
        # the labels and overlay files are written after the record (the microscope waits for the record, not for
        # them), except for an LLM reviewer, which looks at them
        hold = self.llm_session is None
        # quality metrics on one core beside post-processing on the other (numpy releases the GIL; post-processing
        # runs in its own process)
        qualities = {u["unit_id"]: self.quality_pool.submit(quality_one, u, batch) for u in state["units"]}
        failures = {f["unit_id"]: f"{f['stage']}: {f['reason']}" for f in state["quality_failures"] + state["inference_failures"]}
        entries = [unreadable_entry(f, *self.positions) for f in state["import_failures"] if not f.get("unit_id")]
        context: dict[str, Any] = {}
        for unit in state["units"]:
            uid, summary, diameters = unit["unit_id"], None, []
            pending = self.post_pool.submit(segment_and_hold, unit, state["predictions"][uid]["path"], self.postprocess_settings,
                                            self.channels, BatchPaths(self.results, batch).segmentation, hold) \
                if uid in state["predictions"] else None
            metrics, failure = qualities[uid].result()
            if failure:
                state["quality_failures"].append(failure)
                failures.setdefault(uid, f"{failure['stage']}: {failure['reason']}")
            else:
                state["metrics"][uid] = metrics
            if pending is not None:
                try:
                    summary, objects = pending.result()
                    state["summaries"][uid] = summary
                    state["objects"].extend(objects)
                    diameters = [o["equivalent_diameter_um"] for o in objects if o.get("equivalent_diameter_um") not in ("", None)]
                except Exception as exc:  # noqa: BLE001
                    failure = Failure.from_exception("postprocess", unit["source_path"], exc, unit_id=uid).__dict__
                    state["postprocess_failures"].append(failure)
                    failures.setdefault(uid, f"postprocess: {failure['reason']}")
            channel_metrics = state["metrics"].get(uid, {}).get(model_channel_name(unit, self.channels))
            if channel_metrics:
                state["model_metrics"].append(channel_metrics)
            reference = run_reference(self.model_metrics + state["model_metrics"])  # the fields seen so far
            _, context[uid] = review_one(unit, channel_metrics, summary, diameters, self.knowledge_base, self.thresholds,
                                         self.cell_line_column, failures.get(uid), reference or None,
                                         BatchPaths(self.results, batch).segmentation / f"{uid}{LABELS_SUFFIX}", self.channels)
        reviewing = time.time()
        reviews = [context[u["unit_id"]]["rules"] for u in state["units"]]
        if self.llm_session is not None and state["units"]:
            reviews = self._llm_reviews(state["units"], context) or reviews
        for unit, review in zip(state["units"], reviews):
            entries.append(unit_action_entry(unit, review, *self.positions))
        written_at = time.time()
        # where a record's latency went: waiting for the loop, the stages, waiting for the previous file's second half
        timing = {"queued": round(max(0.0, started - completed_at), 3), **state["stage_s"],
                  "waiting_for_previous": round(finishing - front_done, 3), "quality_and_postprocess": round(reviewing - finishing, 3),
                  "review_and_record": round(written_at - reviewing, 3)}
        sequence = len(self.records)
        records = []
        for i, entry in enumerate(entries):
            actions, suppressed = bounded_actions(entry, self.reimaged, self.settings)
            records.append({"format": RECORD_FORMAT, "version": RECORD_VERSION, "sequence": sequence + i,
                            "timestamp": _now_iso(written_at), "file_completed_at": _now_iso(completed_at),
                            "latency_s": round(written_at - completed_at, 3), "processing_s": round(written_at - started, 3),
                            "stage_s": timing,
                            "batch": batch, "status": "failed" if entry["issues"] and entry["issues"][0]["type"] in
                            ("unreadable_input", "processing_failed") else "reviewed",
                            **{**entry, "actions": actions}, "suppressed": suppressed})
        if state["sample_id"] in self.recorded:  # recorded before a restart that came before its files were all written
            print(f"[watch] {state['sample_id']}: recorded before the restart, its files were not all written: written now "
                  "(no second record)", file=sys.stderr)
            records = []
        self._append(records)
        self.records.extend(records)
        self.recorded.add(state["sample_id"])
        # the files after the record, beside the next field (one writer thread, in arrival order)
        self._reap_writes()
        self.writes.append(self.writer.submit(self._write_outputs, state))
        self.model_metrics.extend(state["model_metrics"])
        for record in records:
            asked = ", ".join(a["action"] + (f" x{a['exposure_factor']}" if "exposure_factor" in a else "") for a in record["actions"])
            print(f"[watch] #{record['sequence']} {record['unit_id']}: {record['verdict']}"
                  f"{' -> ' + asked if asked else ''} ({record['latency_s']:.2f} s after the file was complete)", file=sys.stderr)
        return records

    def _write_outputs(self, state: dict[str, Any]) -> None:
        """After the records: the held labels and overlays, then the file's state (what a restart and the batch
        manifests read). A field whose record is in but whose state is not is processed again after a restart,
        without a second record."""
        held = list(state["summaries"])  # (write_held passes over those written already)
        if held:
            try:
                self.post_pool.submit(write_held, held).result()
            except Exception as exc:  # noqa: BLE001 - the record is out; the batch tables list the failure
                for uid in held:
                    unit = next(u for u in state["units"] if u["unit_id"] == uid)
                    state["summaries"].pop(uid)
                    state["objects"] = [o for o in state["objects"] if o.get("unit_id") != uid]
                    state["postprocess_failures"].append(
                        Failure.from_exception("postprocess", unit["source_path"], exc, unit_id=uid).__dict__)
                print(f"[watch] writing the labels of {', '.join(held)} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        write_json(self.units_dir / f"{state['sample_id']}.json", state)
        self.done.add(state["sample_id"])

    def _reap_writes(self) -> None:
        """Forget the writes that are done, saying so where one failed (its field is processed again on restart)."""
        for write in [w for w in self.writes if w.done()]:
            self.writes.remove(write)
            if write.exception() is not None:
                print(f"[watch] writing a field's files failed: {type(write.exception()).__name__}: {write.exception()}",
                      file=sys.stderr)

    def drain_writes(self) -> None:
        """Wait for the files of every field recorded so far."""
        from concurrent.futures import wait

        wait(self.writes)
        self._reap_writes()

    # -- batches -------------------------------------------------------------------------------------
    def write_ready_batches(self, sources: list[Source], final: bool = False) -> list[str]:
        """Write the manifests of every batch whose files are all done (full batches; with ``final`` the last one too),
        as the batch workflow's jobs would, so a later snakemake run reuses them."""
        from .stages.inference import inference_manifest
        from .stages.segmentation import write_postprocess_outputs

        written = []
        for batch, members in batches(sources, self.config["batch_size"]).items() if sources else []:
            ids = tuple(s.sample_id for s in members)
            if self.written.get(batch) == ids or not all(i in self.done for i in ids):
                continue
            if len(members) < self.config["batch_size"] and not final:
                continue
            states = [read_json(self.units_dir / f"{i}.json") for i in ids]
            if any(state["batch"] != batch for state in states):  # a file arrived out of order: leave it to snakemake
                print(f"[watch] batch {batch}: its files moved between batches; snakemake will redo it", file=sys.stderr)
                continue
            units = [u for state in states for u in state["units"]]
            paths = BatchPaths(self.results, batch)
            import_doc = {"batch": batch, "units": units, "failures": [f for s in states for f in s["import_failures"]],
                          "settings": self.import_settings.__dict__}
            # in stage order, each directory output's .snakemake_timestamp (its mtime for Snakemake) after its manifest
            write_json(manifest(paths.imported), import_doc)
            (paths.imported / ".snakemake_timestamp").touch()
            write_json(paths.quality,
                       {"batch": batch, "metrics": {k: v for s in states for k, v in s["metrics"].items()},
                        "failures": [f for s in states for f in s["quality_failures"]]})
            write_json(manifest(paths.inference), inference_manifest(
                batch, self.check, self.model_settings, self.predictor, None, self.load_seconds,
                {k: v for s in states for k, v in s["predictions"].items()}, [f for s in states for f in s["inference_failures"]]))
            (paths.inference / ".snakemake_timestamp").touch()
            write_postprocess_outputs(paths.segmentation, batch, self.postprocess_settings,
                                      {k: v for s in states for k, v in s["summaries"].items()},
                                      [f for s in states for f in s["postprocess_failures"]], [o for s in states for o in s["objects"]])
            (paths.segmentation / ".snakemake_timestamp").touch()
            self.written[batch] = ids
            written.append(batch)
            print(f"[watch] batch {batch} complete ({len(ids)} file(s)): its outputs are ready for snakemake", file=sys.stderr)
        return written

    # -- the loop ------------------------------------------------------------------------------------
    def run(self, should_stop: Callable[[], bool] = lambda: False, max_fields: int | None = None,
            idle_exit_s: float | None = None) -> dict[str, Any]:
        """Watch until ``should_stop()``, ``max_fields`` new files, or ``idle_exit_s`` seconds without a new file.

        A poller thread notes when each file becomes complete (so queueing counts in the latency); the loop starts
        the next file's import and inference while it finishes the current one's post-processing and review."""
        import queue
        import threading

        arrivals: queue.Queue = queue.Queue()  # (source, completed_at, last_try): files to process, in order
        # from the loop to the poller: files to look at again, (source, signature at the failed read or None if the file
        # was gone, deadline, completed_at)
        again: queue.Queue = queue.Queue()
        halt = threading.Event()
        latest: dict[str, list[Source]] = {"sources": []}
        retrying: set[str] = set()  # files waiting to be read again (the loop does not idle-exit from under them)
        deadlines: dict[str, float] = {}  # by when a file that failed to read must have its record

        def poll() -> None:
            queued: set[str] = set()
            waiting: dict[str, tuple[Source, tuple[int, int], float, float]] = {}
            closes, closed = open_closes(), set()  # files the kernel saw closed: looked at at once, not at the next poll
            for folder in self.input_folders() if closes else []:
                closes.watch(folder)
            while not halt.is_set():
                while not again.empty():
                    source, signature, deadline, completed_at = again.get()
                    if signature is None:  # gone before it was read: taken like a new file if it comes back
                        queued.discard(source.sample_id)
                        self.tracker.forget(source.path)
                    else:
                        waiting[source.sample_id] = (source, signature, deadline, completed_at)
                for sample_id, (source, signature, deadline, completed_at) in list(waiting.items()):
                    now_signature = file_signature(source.path)
                    if now_signature is not None and now_signature != signature:  # written to since: read again once complete
                        if (done_at := self.tracker.complete(source.path)) is not None:
                            del waiting[sample_id]
                            arrivals.put((source, done_at, False))
                    elif time.time() >= deadline:  # unchanged until the deadline: read a last time, then recorded
                        del waiting[sample_id]
                        arrivals.put((source, completed_at, True))
                try:
                    latest["sources"] = sources = self.sources()
                    for source in sources:
                        if source.sample_id not in self.done and source.sample_id not in queued:
                            path = os.path.abspath(source.path)
                            if closes:
                                closes.watch(os.path.dirname(path))
                            completed_at = self.tracker.complete(source.path, closed=path in closed)
                            closed.discard(path)
                            if completed_at is not None:
                                queued.add(source.sample_id)
                                arrivals.put((source, completed_at, False))
                except Exception as exc:  # noqa: BLE001 - the poller must outlive any odd file or listing error
                    print(f"[watch] listing the acquisition failed, trying again: {type(exc).__name__}: {exc}", file=sys.stderr)
                if closes:
                    closed.update(closes.wait(self.settings.poll_s))
                else:
                    halt.wait(self.settings.poll_s)
            if closes:
                closes.close()

        poller = threading.Thread(target=poll, name=POLLER_THREAD, daemon=True)
        poller.start()
        processed, last_activity = 0, time.time()
        in_flight = None  # (future of start(), completed_at) of the file being imported and predicted

        def read_again(source: Source, state: dict[str, Any], completed_at: float, last_try: bool) -> bool:
            """Whether a file that could not be read is looked at again instead of recorded: it is gone (taken again
            if it comes back), or it may still be being written (read again when it changes, until watch.retry_s
            after the first failure)."""
            if state["units"] or not state["import_failures"] or last_try:
                return False
            signature = file_signature(source.path)
            if signature is None:
                print(f"[watch] {source.sample_id}: removed before it was read; taken again if it comes back", file=sys.stderr)
                again.put((source, None, 0.0, completed_at))
                return True
            deadline = deadlines.setdefault(source.sample_id, time.time() + self.settings.retry_s)
            print(f"[watch] {source.sample_id}: could not be read yet ({state['import_failures'][0]['reason'][:200]}); "
                  f"read again if it changes in the next {max(0.0, deadline - time.time()):.0f} s (watch.retry_s)", file=sys.stderr)
            retrying.add(source.sample_id)
            again.put((source, signature, deadline, completed_at))
            return True

        def finish_in_flight() -> None:
            nonlocal in_flight, processed, last_activity
            future, completed_at, source, last_try = in_flight
            in_flight = None
            state = future.result()
            if read_again(source, state, completed_at, last_try):
                return
            deadlines.pop(source.sample_id, None)
            self.finish(state, completed_at)
            processed += 1
            last_activity = time.time()
            self.write_ready_batches(latest["sources"])
        try:
            while True:
                limit = max_fields is not None and processed + (in_flight is not None) >= max_fields
                arrival = None
                if not should_stop() and not limit:
                    try:
                        arrival = arrivals.get(timeout=self.settings.poll_s)
                    except queue.Empty:
                        arrival = None
                upcoming = None
                if arrival is not None:
                    source, completed_at, last_try = arrival
                    retrying.discard(source.sample_id)
                    batch = self.batch_of(latest["sources"] or self.sources()).get(source.sample_id)
                    if batch is None:  # listed when it was complete, gone now (renamed or removed): taken if it comes back
                        again.put((source, None, 0.0, completed_at))
                        continue
                    if in_flight is not None and arrivals.empty():
                        # one file waiting: the file in hand is finished first (side by side both would share the
                        # cores and each take longer); files overlap only when they queue up, for throughput
                        finish_in_flight()
                    upcoming = (self.front.submit(self.start, source, batch), completed_at, source, last_try)
                if in_flight is not None:
                    finish_in_flight()
                in_flight = upcoming
                if in_flight is None:
                    if should_stop() or limit:
                        break
                    if idle_exit_s is not None and time.time() - last_activity >= idle_exit_s and not retrying:
                        break
        finally:
            halt.set()
            poller.join()
            if in_flight is not None:  # stopping: the file in hand is finished, not dropped (unless it waits to be read again)
                future, completed_at, source, _ = in_flight
                state = future.result()
                if state["units"] or file_signature(source.path) is not None:  # a file gone meanwhile gets no record
                    self.finish(state, completed_at)
            self.drain_writes()
        self.write_ready_batches(self.sources(), final=True)
        summary = self.summary()
        summary["adopted"] = self.adopt() if self.config_files else None
        return summary

    def adopt(self) -> bool:
        """Record the written batches in Snakemake's metadata (``snakemake --touch`` of exactly their jobs), so that a
        later config change reruns them like any job's outputs; without it they would be reused on modification
        times alone. Returns whether Snakemake accepted them."""
        import subprocess

        if not self.written:
            return True
        targets = [str(BatchPaths(self.results, b).segmentation) for b in sorted(self.written)]
        targets += [str(BatchPaths(self.results, b).quality) for b in sorted(self.written)]
        snakefile = SNAKEFILE
        command = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "--configfile", *self.config_files, "--touch",
                   "--forcerun", *(stage.rule for stage in STAGES.values() if stage.watch), "--cores", "1", "--quiet", "all", "--", *targets]
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.base)
        if result.returncode != 0:
            print(f"[watch] snakemake did not record the batches' provenance (they will be reused on modification times "
                  f"only):\n{result.stderr.strip()[-2000:]}", file=sys.stderr)
        return result.returncode == 0

    def summary(self) -> dict[str, Any]:
        files = list({r["sample_id"]: r for r in reversed(self.records[self.resumed:])}.values())  # one record per file
        latencies = sorted(r["latency_s"] for r in files)

        def pct(q: float) -> float | None:
            return round(latencies[min(len(latencies) - 1, int(round(q * (len(latencies) - 1))))], 3) if latencies else None

        queued = sum(1 for r in files if r["latency_s"] - r["processing_s"] > self.settings.poll_s + 0.5)  # waited to start
        recent = [r["stage_s"] for r in self.records[self.resumed:] if "stage_s" in r]
        stage_means = {k: round(statistics.fmean(t[k] for t in recent), 3) for k in (recent[0] if recent else {})}
        return {"files_this_session": len(files), "records_total": len(self.records), "resumed_from": self.resumed,
                "failed": sum(1 for r in self.records if r["status"] == "failed"),
                "actions": sum(len(r["actions"]) for r in self.records),
                "suppressed": sum(len(r["suppressed"]) for r in self.records),
                "latency_p50_s": pct(0.5), "latency_p95_s": pct(0.95),
                "mean_latency_s": round(statistics.fmean(latencies), 3) if latencies else None,
                "queued_fields": queued, "stage_mean_s": stage_means, "model_load_s": round(self.load_seconds, 2), "actions_file": str(self.actions_path),
                "batches_ready": sorted(self.written)}

    def close(self) -> None:
        for fd in self.locks:
            os.close(fd)
        self.locks = []
        self._llm_stack.close()
        self.writer.shutdown()
        self.post_pool.shutdown()
        self.front.shutdown()
        self.quality_pool.shutdown()
        self.predictor.close()


def summary_lines(summary: dict[str, Any]) -> list[str]:
    lines = [f"snakescope watch: {summary['files_this_session']} file(s) reviewed this session, {summary['records_total']} "
             f"record(s) in {summary['actions_file']} ({summary['failed']} failed, {summary['actions']} action(s) asked, "
             f"{summary['suppressed']} suppressed by the limits)"]
    if summary["latency_p50_s"] is not None:
        lines.append(f"latency from file complete to record written: p50 {summary['latency_p50_s']} s, p95 {summary['latency_p95_s']} s")
    if summary.get("stage_mean_s"):
        lines.append("mean seconds per file: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in summary["stage_mean_s"].items()))
    if summary["queued_fields"]:
        lines.append(f"{summary['queued_fields']} field(s) waited in the queue: the microscope was faster than the review")
    if summary["batches_ready"]:
        recorded = "" if summary.get("adopted") else " (not recorded in Snakemake's metadata: see above)"
        lines.append(f"batches ready for snakemake: {', '.join(summary['batches_ready'])}{recorded}; run snakemake with the "
                     "same config for the review and report of the whole screen")
    return lines


def freeze_heap() -> int:
    """Collect once, then move every object tracked so far out of later collections (``gc.freeze``); returns how
    many. New objects are collected as usual."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def first_reads(folder: Path, settings: Any = None) -> list[dict[str, Any]]:
    """A tiny OME-TIFF and a tiny ImageJ TIFF (the two TIFF readers) through import and quality metrics, written to
    and imported in ``folder``; returns the units (as the stages pass them, dicts)."""
    import numpy as np
    import tifffile

    from .stages.acquisition import import_one
    from .core.settings import ImportSettings
    from .core.images import write_ome_tiff
    from .core.inputs import Source
    from .stages.quality import quality_one

    field = np.zeros((1, 32, 32), np.uint16)
    field[0, 8:20, 8:20] = 100
    write_ome_tiff(folder / "warm-up.ome.tif", field, ["warm-up"], {"x": 1.0, "y": 1.0})
    tifffile.imwrite(folder / "warm-up.tif", field[0], imagej=True)
    units = []
    for name in ("warm-up.ome.tif", "warm-up.tif"):
        imported, _ = import_one(Source(name, str(folder / name)), settings or ImportSettings(), folder / "import", "[warm-up]")
        units += [asdict(unit) for unit in imported]
    for unit in units:
        quality_one(unit, "warm-up")
    return units


def first_segmentation(image: Any, settings: Any = None, folder: Path | None = None, gallery: bool = False) -> None:
    """Post-processing of a YX ``image`` (its bright part as the probability), then the overlay renderer, and with
    ``folder`` the labels and overlay writers, with ``gallery`` the report's gallery images."""
    import numpy as np

    from .core.rendering import overlay_png
    from .stages.segmentation import Segmented
    from .methods.measurements import segment_unit
    from .core.settings import PostprocessSettings

    probability = (image > image.mean()).astype(np.float32)
    with warnings.catch_warnings():  # e.g. scikit-image's about a single object: true of this image, not news
        warnings.simplefilter("ignore")
        labels, objects, summary = segment_unit(probability, image, (1.0, 1.0), settings or PostprocessSettings())
    if folder is not None:  # the writers render the overlay themselves
        unit = {"unit_id": "warm-up", "pixel_size_um": {"y": 1.0, "x": 1.0}, "channel_names": ["warm-up"]}
        Segmented(unit, labels, image, (1.0, 1.0), summary, objects).write(folder)
    else:
        overlay_png(image, labels, 1.0)
    if gallery:
        from .stages.report.gallery import unit_gallery_images
        from .core.settings import GallerySettings

        unit_gallery_images(image, labels, 1.0, GallerySettings(), (0.0, float(image.max()) or 1.0))

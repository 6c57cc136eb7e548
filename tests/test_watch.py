"""Watch mode on a simulated acquisition of real BBBC039 fields with the real U-Net, then a batch run that reuses it."""

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from conftest import ROOT, SHARED, UNET, needs_shared
from snakescope.core.configuration import load_config
from snakescope.microscope_sim import acquire, tiff_bytes, write_slowly
from snakescope.watch import FileTracker, Watcher, bounded_actions, tiff_complete
from snakescope.core.settings import WatchSettings
from workflow_helpers import planned_jobs, snakemake

BBBC039 = SHARED / "data" / "nuclei" / "bbbc039" / "images"
KNOWLEDGE_BASE = ROOT / "config" / "knowledge_base.yaml"


def test_a_tiff_is_complete_only_when_all_its_declared_pages_are_in(tmp_path):
    data = tiff_bytes(np.arange(3 * 64 * 80, dtype=np.uint16).reshape(3, 64, 80), 0.5)
    path = tmp_path / "growing.tif"
    for cut in (len(data) // 4, len(data) // 2, len(data) * 3 // 4):  # the IFDs and the last page cut short
        path.write_bytes(data[:cut])
        assert not tiff_complete(str(path))
    path.write_bytes(data)
    assert tiff_complete(str(path)) is True
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((32, 32), np.uint16))  # declares nothing: only a stable size says it is done
    assert tiff_complete(str(plain)) is None


def test_the_tracker_waits_for_a_slowly_written_file(tmp_path):
    data = tiff_bytes(np.ones((256, 256), np.uint16), 0.645)
    tracker = FileTracker(stable_s=5.0)
    path = tmp_path / "slow.tif"
    seen = []
    writer = threading.Thread(target=write_slowly, args=(path, data, 6, 1.0))
    writer.start()
    while writer.is_alive():
        seen.append(tracker.complete(str(path)) if path.exists() else None)
        time.sleep(0.05)
    writer.join()
    assert not any(seen), "a file still being written was taken as complete"
    # the TIFF declares its length: complete one look after its size stopped changing, not stable_s (5 s) later
    closed = time.time()
    while tracker.complete(str(path)) is None:
        assert time.time() - closed < 1.0, "a complete TIFF waited for the stable-size rule"
        time.sleep(0.05)
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a tiff at all")
    quick = FileTracker(stable_s=0.3)
    assert quick.complete(str(broken)) is None
    time.sleep(0.35)
    assert quick.complete(str(broken)) is not None  # handed on so the import can say why it fails


def test_an_ome_tiff_is_complete_at_the_first_look_an_imagej_one_written_plane_by_plane_is_not(tmp_path):
    stack = np.arange(3 * 64 * 80, dtype=np.uint16).reshape(3, 64, 80)
    ome = tmp_path / "field.ome.tif"
    tifffile.imwrite(ome, stack, ome=True, metadata={"axes": "ZYX"})
    data = ome.read_bytes()
    tracker = FileTracker(stable_s=5.0)
    ome.write_bytes(data[: len(data) * 2 // 3])
    assert tracker.complete(str(ome)) is None
    ome.write_bytes(data)
    assert tracker.complete(str(ome)) is not None  # all declared planes in: no second look needed
    # tifffile writing ImageJ plane by plane declares the planes written so far until it closes the file
    growing = tmp_path / "growing.tif"
    with tifffile.TiffWriter(growing, imagej=True) as writer:
        writer.write(stack[0], contiguous=True)
        writer.filehandle.flush()
        assert tiff_complete(str(growing)) is True  # the declaration alone would be fooled
        assert tracker.complete(str(growing)) is None
        writer.write(stack[1], contiguous=True)
        writer.filehandle.flush()
        assert tracker.complete(str(growing)) is None


def test_the_kernel_says_when_a_file_is_closed_and_the_tracker_takes_it_at_once(tmp_path):
    from snakescope.core.closes import open_closes

    closes = open_closes()
    if closes is None:
        pytest.skip("no inotify on this system")
    try:
        assert closes.watch(str(tmp_path)) and closes.wait(0.05) == []
        data = tiff_bytes(np.arange(2 * 64 * 80, dtype=np.uint16).reshape(2, 64, 80), 0.5)
        path = tmp_path / "field.tif"
        with open(path, "wb") as handle:
            handle.write(data[: len(data) // 2])
            handle.flush()
            assert closes.wait(0.1) == []  # written to, not closed
            handle.write(data[len(data) // 2:])
        assert closes.wait(1.0) == [str(path)]
        tracker = FileTracker(stable_s=5.0)
        assert tracker.complete(str(path)) is None  # an ImageJ TIFF at a first look: not without the close
        path.write_bytes(data)  # written again: a new signature
        assert FileTracker(stable_s=5.0).complete(str(path), closed=True) is not None
        (tmp_path / "other.tif").write_bytes(data)
        os.replace(tmp_path / "other.tif", tmp_path / "moved.tif")
        seen = closes.wait(1.0)
        assert str(tmp_path / "moved.tif") in seen + closes.wait(0.2)
    finally:
        closes.close()


def test_actions_are_bounded_per_well_and_clamped():
    settings = WatchSettings(max_reacquisitions_per_well=1, exposure_factor_min=0.8, exposure_factor_max=1.5)
    entry = {"position": {"plate": "P1", "well": "A01"}, "source_path": "a.tif",
             "actions": [{"action": "increase_exposure", "detail": "dim"}, {"action": "refocus", "detail": "blur"},
                         {"action": "check_sample", "detail": "few nuclei"}]}
    counts: dict = {}
    actions, suppressed = bounded_actions(entry, counts, settings)
    assert [a["action"] for a in actions] == ["increase_exposure", "refocus", "check_sample"]
    assert actions[0]["exposure_factor"] == 1.5 and not suppressed
    again, suppressed = bounded_actions(entry, counts, settings)  # the same well again: no more re-imaging
    assert [a["action"] for a in again] == ["check_sample"]
    assert {s["action"] for s in suppressed} == {"increase_exposure", "refocus"}
    assert all("max_reacquisitions_per_well" in s["reason"] and "P1/A01" in s["reason"] for s in suppressed)
    other = {**entry, "position": {"plate": "P1", "well": "A02"}}
    assert len(bounded_actions(other, counts, settings)[0]) == 3


def watch_config(workdir: Path, batch_size: int = 3) -> Path:
    config = {"dataset": "screen", "inputs": ["acq/*.tif"], "results": "results", "batch_size": batch_size,
              "cache_dir": "cache", "model": {"source": str(UNET), "run_test": False},
              "review": {"knowledge_base": str(KNOWLEDGE_BASE)}, "watch": {"stable_s": 0.6, "poll_s": 0.1, "retry_s": 3.0}}
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "results" / "screen" / "watch" / "actions.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    """Five real fields and a corrupt file acquired while the watcher runs; the watcher is stopped after three
    records and restarted; returns the working directory."""
    needs_shared(UNET)
    workdir = tmp_path_factory.mktemp("watch")
    configfile = watch_config(workdir)
    sources = sorted(BBBC039.glob("*.tif"))[:5]
    fields = [p.read_bytes() for p in sources] + [b"II*\x00 this is not an image"]
    names = [f"f{i}_{p.name}" for i, p in enumerate(sources)] + ["f5_corrupt.tif"]
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        config = load_config([str(configfile)], ROOT)
        writer = threading.Thread(target=acquire, args=(workdir / "acq", fields, 0.4, names, 5, 0.8))
        first = Watcher(config, KNOWLEDGE_BASE, [str(configfile)])
        writer.start()
        first.run(should_stop=lambda: len(first.records) >= 3)  # stops after finishing the file in hand
        first.close()
        writer.join()
        before = len(first.records)
        assert 3 <= before < len(names)
        # as if the watcher had died between a field's record and its files: processed again, no second record
        lost = next(r["sample_id"] for r in first.records if r["status"] == "reviewed")
        state = workdir / "results" / "screen" / "watch" / "units" / f"{lost}.json"
        state.unlink()
        restarted = Watcher(config, KNOWLEDGE_BASE, [str(configfile)])
        assert len(restarted.records) == before and restarted.resumed == before and lost not in restarted.done
        summary = restarted.run(idle_exit_s=2.0)
        assert state.is_file() and lost in restarted.done
        summary["before_restart"] = before
        restarted.close()
    finally:
        os.chdir(cwd)
    return workdir, names, summary


def test_every_field_gets_exactly_one_record_across_a_restart(watched):
    workdir, names, summary = watched
    got = records(workdir)
    assert sorted(r["source_path"] for r in got) == sorted(f"acq/{n}" for n in names)
    assert [r["sequence"] for r in got] == list(range(len(names)))
    assert summary["records_total"] == len(names)
    assert summary["files_this_session"] == len(names) - summary["before_restart"]
    corrupt = next(r for r in got if r["source_path"].endswith("corrupt.tif"))
    assert corrupt["status"] == "failed" and corrupt["verdict"] == "fail"
    assert corrupt["issues"][0]["type"] == "unreadable_input" and corrupt["actions"][0]["action"] == "reacquire"
    for record in got:
        assert record["format"] == "snakescope-watch-action" and record["latency_s"] >= 0
        assert record["latency_s"] >= record["processing_s"] - 0.01
        # the stages account for the whole latency
        assert abs(sum(record["stage_s"].values()) - record["latency_s"]) < 0.02, record["stage_s"]
    fields = [r for r in got if r["status"] == "reviewed"]
    assert len(fields) == 5 and all(r["reviewer"] == "deterministic (rules)" for r in fields)


def test_records_follow_the_documented_schema(watched):
    import jsonschema

    workdir, _, _ = watched
    schema = json.loads((ROOT / "workflow" / "schemas" / "watch_record.schema.json").read_text())
    for record in records(workdir):
        jsonschema.validate(record, schema)


def test_the_example_consumer_prints_what_it_would_ask_the_microscope(watched):
    workdir, _, _ = watched
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "watch_consumer.py"),
                             str(workdir / "results" / "screen" / "watch" / "actions.jsonl"), "--once"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "f5_corrupt.tif" in result.stdout and "re-acquire" in result.stdout
    assert result.stdout.count("\n") >= 6  # one line per record


def test_a_batch_run_reuses_the_watchers_outputs_and_gives_the_same_tables(watched, tmp_path):
    workdir, _, _ = watched
    dry = snakemake(workdir, "-n")
    assert dry.returncode == 0, dry.stderr[-3000:]
    planned = planned_jobs(dry.stdout + dry.stderr)
    for stage in ("check_model", "import_batch", "quality_metrics", "infer", "postprocess"):
        assert stage not in planned, f"{stage} planned again after watch mode: {planned}"
    assert planned["review"] == 2 and planned["tables"] == 1
    run = snakemake(workdir)
    assert run.returncode == 0, run.stderr[-3000:]
    # the same data from scratch, batch mode only
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "acq").symlink_to(workdir / "acq")
    watch_config(fresh)
    run = snakemake(fresh)
    assert run.returncode == 0, run.stderr[-3000:]
    for table in ("units.csv", "objects.csv", "reviews.csv"):
        a = list(csv.DictReader(open(workdir / "results" / "screen" / "tables" / table)))
        b = list(csv.DictReader(open(fresh / "results" / "screen" / "tables" / table)))
        drop = {k for k in a[0] if "path" in k or "seconds" in k or k.endswith("_at")}
        assert [{k: v for k, v in r.items() if k not in drop} for r in a] == [{k: v for k, v in r.items() if k not in drop} for r in b], table
    # a changed post-processing setting reruns exactly the watcher's post-processing (its provenance is recorded)
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["postprocess"] = {"probability_threshold": 0.6}
    (workdir / "changed.yaml").write_text(yaml.safe_dump(config))
    dry = snakemake(workdir, "-n", configfile=workdir / "changed.yaml")
    planned = planned_jobs(dry.stdout + dry.stderr)
    assert planned.get("postprocess") == 2 and "infer" not in planned and "import_batch" not in planned


def test_sigterm_stops_the_watcher_cleanly_and_keeps_the_records(tmp_path):
    needs_shared(UNET)
    configfile = watch_config(tmp_path, batch_size=2)
    source = sorted(BBBC039.glob("*.tif"))[0]
    (tmp_path / "acq").mkdir()
    (tmp_path / "acq" / "a.tif").write_bytes(source.read_bytes())
    env = {**os.environ, "PYTHONPATH": str(ROOT / "workflow")}
    watcher = subprocess.Popen([sys.executable, "-m", "snakescope.cli", "watch", "--config", str(configfile)], cwd=tmp_path,
                               stderr=subprocess.PIPE, text=True, env=env)
    actions = tmp_path / "results" / "screen" / "watch" / "actions.jsonl"
    deadline = time.time() + 120
    while not (actions.is_file() and actions.read_text().strip()) and time.time() < deadline and watcher.poll() is None:
        time.sleep(0.2)
    watcher.send_signal(signal.SIGTERM)
    _, stderr = watcher.communicate(timeout=120)
    assert watcher.returncode == 0, stderr[-3000:]
    assert "stopping after the field in hand" in stderr and "1 record(s)" in stderr
    assert len(records(tmp_path)) == 1
    # the single file is a complete last batch: written on stop, so snakemake can reuse it
    assert (tmp_path / "results" / "screen" / "segmentation" / "b0000" / "summary.json").is_file()


def test_a_second_watcher_is_refused_and_a_killed_watchers_children_die_with_it(tmp_path):
    """Two watchers on one results folder would both record a file as the same sequence number: the second stops
    with one message naming the folder and the first's process. After ``kill -9`` of the first, its post-processing
    worker and multiprocessing's resource tracker end within seconds, and the lock is free again."""
    import psutil

    needs_shared(UNET)
    configfile = watch_config(tmp_path, batch_size=2)
    (tmp_path / "acq").mkdir()
    (tmp_path / "acq" / "a.tif").write_bytes(sorted(BBBC039.glob("*.tif"))[0].read_bytes())
    env = {**os.environ, "PYTHONPATH": str(ROOT / "workflow")}
    command = [sys.executable, "-m", "snakescope.cli", "watch", "--config", str(configfile)]
    first = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.DEVNULL, env=env)
    try:
        actions = tmp_path / "results" / "screen" / "watch" / "actions.jsonl"
        deadline = time.time() + 120
        while not (actions.is_file() and actions.read_text().strip()) and time.time() < deadline and first.poll() is None:
            time.sleep(0.2)
        assert first.poll() is None and records(tmp_path), "the first watcher did not record its field"
        second = subprocess.run([*command, "--idle-exit", "1"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
        assert second.returncode != 0
        assert f"another snakescope watch (process {first.pid}) already writes to results/screen/watch" in second.stderr
        assert len(records(tmp_path)) == 1
        children = psutil.Process(first.pid).children(recursive=True)
        assert children, "the watcher runs post-processing in a worker process"
    finally:
        first.kill()
        first.wait()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [(p.pid, p.cmdline()[:3]) for p in alive]
    third = subprocess.run([*command, "--idle-exit", "1"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=180)
    assert third.returncode == 0, third.stderr[-2000:]


def run_watcher(workdir: Path, watcher_class=Watcher, **run) -> tuple[list[dict], dict]:
    """A watcher in this process on ``workdir`` (config from :func:`watch_config`) until ``run``'s condition; the
    records and the summary."""
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        config = load_config([str(workdir / "config.yaml")], ROOT)
        watcher = watcher_class(config, KNOWLEDGE_BASE, [str(workdir / "config.yaml")])
        try:
            summary = watcher.run(**run)
        finally:
            watcher.close()
    finally:
        os.chdir(cwd)
    return records(workdir), summary


def test_a_file_whose_writer_pauses_is_read_again_not_recorded_unreadable(tmp_path, capfd):
    """A plain TIFF written in two parts with a pause longer than watch.stable_s: the first read fails, the file
    changes, it is read again: one record, reviewed. A file that never becomes readable is recorded after retry_s; written
    again later, the next start reads it again."""
    needs_shared(UNET)
    watch_config(tmp_path)
    (tmp_path / "acq").mkdir()
    data = sorted(BBBC039.glob("*.tif"))[0].read_bytes()

    def write_with_a_pause() -> None:
        with open(tmp_path / "acq" / "paused.tif", "wb") as handle:
            handle.write(data[: len(data) // 3])
            handle.flush()
            time.sleep(2.0)  # longer than stable_s (0.6 s): the watcher takes the file as complete and cannot read it
            handle.write(data[len(data) // 3 :])
        (tmp_path / "acq" / "corrupt.tif").write_bytes(b"II*\x00 never an image")

    writer = threading.Thread(target=write_with_a_pause)

    def start_writing_once_watching() -> bool:
        if writer.ident is None:
            writer.start()
        return False

    found, _ = run_watcher(tmp_path, should_stop=start_writing_once_watching, idle_exit_s=2.5)
    writer.join()
    assert {r["sample_id"]: r["status"] for r in found} == {"paused.tif": "reviewed", "corrupt.tif": "failed"}, found
    assert "paused.tif: could not be read yet" in capfd.readouterr().err
    corrupt = next(r for r in found if r["sample_id"] == "corrupt.tif")
    assert corrupt["latency_s"] >= 3.0 and corrupt["actions"][0]["action"] == "reacquire"  # after retry_s, not before
    time.sleep(0.05)
    (tmp_path / "acq" / "corrupt.tif").write_bytes(data)  # re-exported after the record: the next start reads it
    again, _ = run_watcher(tmp_path, idle_exit_s=1.0)
    assert [(r["sample_id"], r["status"]) for r in again[len(found):]] == [("corrupt.tif", "reviewed")]


def test_a_file_removed_while_queued_is_taken_when_it_comes_back(tmp_path):
    needs_shared(UNET)
    watch_config(tmp_path)
    (tmp_path / "acq").mkdir()
    data = sorted(BBBC039.glob("*.tif"))[0].read_bytes()
    path = tmp_path / "acq" / "moved.tif"
    path.write_bytes(data)

    class RemovedBeforeItIsRead(Watcher):
        removed = False

        def start(self, source, batch):
            if not self.removed:  # the file goes after it was found complete, before it is read
                self.removed = True
                path.unlink()
                threading.Timer(3.0, path.write_bytes, args=(data,)).start()
            return super().start(source, batch)

    found, _ = run_watcher(tmp_path, RemovedBeforeItIsRead, should_stop=lambda: bool(records_or_none(tmp_path)),
                           idle_exit_s=20.0)
    assert [(r["sample_id"], r["status"]) for r in found] == [("moved.tif", "reviewed")]


def test_the_watcher_starts_and_reviews_small_fields_with_a_model_of_any_block_size(tmp_path, demo_dir):
    """The demo model's default block is 224 px; the watcher's warm-up field (64 px) and a 100 px field work."""
    config = yaml.safe_load(watch_config(tmp_path).read_text())
    config["model"] = {"source": str(demo_dir / "model" / "bioimageio.yaml"), "run_test": False, "channels": [0]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "acq").mkdir()
    image = tifffile.imread(demo_dir / "images" / "ctrl_01.ome.tif")
    tifffile.imwrite(tmp_path / "acq" / "small.tif", image[..., 60:160, 60:160], ome=True,
                     metadata={"axes": "CYX" if image.ndim == 3 else "YX", "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65})
    found, _ = run_watcher(tmp_path, idle_exit_s=2.0)
    assert [(r["sample_id"], r["status"]) for r in found] == [("small.tif", "reviewed")]


def records_or_none(workdir: Path) -> list[dict]:
    return records(workdir) if (workdir / "results" / "screen" / "watch" / "actions.jsonl").is_file() else []


def test_a_growing_sample_sheet_is_followed_row_by_row(tmp_path):
    """Rows whose file is not there yet wait; a last line still being written is not read half-way."""
    needs_shared(UNET)
    images = [tifffile.imread(p)[:256, :320] for p in sorted(BBBC039.glob("*.tif"))[:3]]
    (tmp_path / "acq").mkdir()
    for i in (1, 2):
        (tmp_path / "acq" / f"s{i}.tif").write_bytes(tiff_bytes(images[i - 1], 0.645))
    sheet = tmp_path / "samples.tsv"
    sheet.write_text("sample_id\tpath\tplate\twell\ttreatment\n"
                     "s1\tacq/s1.tif\tP1\tA01\tDMSO\n"
                     "s3\tacq/s3.tif\tP1\tA03\tDMSO\n"  # listed before its file exists
                     "s2\tacq/s2.tif\tP1\tA0")  # being written: the well is cut short
    configfile = watch_config(tmp_path)
    config = yaml.safe_load(configfile.read_text())
    config.pop("inputs")
    config["samples"] = str(sheet)
    configfile.write_text(yaml.safe_dump(config))

    def acquisition():
        time.sleep(1.5)
        with open(sheet, "a") as handle:
            handle.write("2\tnocodazole\n")
        time.sleep(1.0)
        (tmp_path / "acq" / "s3.tif").write_bytes(tiff_bytes(images[2], 0.645))

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        watcher = Watcher(load_config([str(configfile)], ROOT), KNOWLEDGE_BASE)
        writer = threading.Thread(target=acquisition)
        writer.start()
        watcher.run(idle_exit_s=3.0)
        watcher.close()
        writer.join()
    finally:
        os.chdir(cwd)
    got = {r["sample_id"]: r for r in records(tmp_path)}
    assert sorted(got) == ["s1", "s2", "s3"]
    assert got["s2"]["position"] == {"plate": "P1", "well": "A02"} and got["s2"]["metadata"]["treatment"] == "nocodazole"
    assert got["s3"]["position"]["well"] == "A03"


def test_the_llm_reviews_each_field_with_one_session_for_the_whole_watch(tmp_path, fake_llm):
    """The real ollama client against the fake server: self-tested once, one request per field, records say LLM."""
    needs_shared(UNET)
    images = [tifffile.imread(p)[:256, :320] for p in sorted(BBBC039.glob("*.tif"))[:3]]
    (tmp_path / "acq").mkdir()
    for i, image in enumerate(images):
        (tmp_path / "acq" / f"s{i}.tif").write_bytes(tiff_bytes(image, 0.645))
    configfile = watch_config(tmp_path)
    config = yaml.safe_load(configfile.read_text())
    config["review"].update(backend="ollama", llm={"endpoint": fake_llm.host, "timeout_s": 60})
    configfile.write_text(yaml.safe_dump(config))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        watcher = Watcher(load_config([str(configfile)], ROOT), KNOWLEDGE_BASE)
        assert "qwen2.5vl:7b via ollama" in watcher.llm_note and "passed" in watcher.llm_note
        watcher.run(idle_exit_s=1.5)
        watcher.close()
    finally:
        os.chdir(cwd)
    got = records(tmp_path)
    assert len(got) == 3 and all(r["reviewer"] == "ollama (LLM)" for r in got)
    assert len(fake_llm.chat_requests()) == 3  # one per field
    assert len(fake_llm.probe_requests()) == 2  # the self-test's two probes, once for the whole watch

"""The stage host: stage commands run in forks of one pre-imported process, exactly as they would run alone."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from snakescope.hostclient import ADDRESS_VARIABLE, LENGTH_BYTES, pack_request, unpack_request
from snakescope.stagehost import StageHost, read_usage

WORKFLOW = ROOT / "workflow"


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    usage = tmp_path_factory.mktemp("host") / "usage.jsonl"
    stage_host = StageHost()
    address = stage_host.start(sys.executable, usage)
    assert address is not None and os.path.exists(address)
    assert os.stat(os.path.dirname(address)).st_mode & 0o077 == 0  # only this user can connect
    yield stage_host, address, usage
    stage_host.stop()
    assert not os.path.exists(address)
    last = read_usage(usage)[-1]  # the host's own cost, written as it leaves: its imports and warm-up at least
    assert last["stage"] == "stage-host" and last["status"] == 0 and last["cpu_s"] > 1.0


def stage(args, cwd, address, **env):
    environment = {**os.environ, "PYTHONPATH": str(WORKFLOW), **env}
    environment.pop(ADDRESS_VARIABLE, None)
    if address:
        environment[ADDRESS_VARIABLE] = address
    return subprocess.run([sys.executable, "-m", "snakescope", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=120)


def test_a_stage_runs_in_the_host_in_the_jobs_folder_with_its_environment_and_log(host, tmp_path):
    _, address, usage = host
    before = len(read_usage(usage))
    config = {"dataset": "x", "note": "a value with 'quotes'; $(and shell) syntax"}
    result = stage(["pipeline-info", "--config", json.dumps(config), "--out", "info"], tmp_path, address,
                   SNAKESCOPE_CACHE_DIR="from-the-job")
    assert result.returncode == 0, result.stderr
    params = json.loads((tmp_path / "info" / "params.json").read_text())  # relative --out: the job's folder
    assert params["note"] == config["note"]
    records = read_usage(usage)[before:]
    assert [(r["stage"], r["out"], r["status"]) for r in records] == [("pipeline-info", "info", 0)]
    assert records[0]["cpu_s"] >= 0 and records[0]["max_rss_mb"] > 50  # the forked child, with the host's imports
    # the host froze its imported objects before forking: the child's collections neither walk nor copy them
    assert records[0]["frozen_objects"] > 100_000

    # a failing stage: its status and its message reach the job (the child writes to the job's stderr)
    result = stage(["infer", "--manifest", "missing.json", "--settings", "{}", "--model-check", "x", "--out", "o"],
                   tmp_path, address)
    assert result.returncode == 1 and "source" in result.stderr
    assert read_usage(usage)[-1]["status"] == 1
    # argument errors exit with argparse's status 2, as in a process of their own
    result = stage(["postprocess", "--no-such-flag"], tmp_path, address)
    assert result.returncode == 2 and "arguments are required" in result.stderr


def test_stages_running_at_once_in_the_host_each_answer_their_own_job(host, tmp_path):
    """Several jobs at once (as with --cores N): each job gets its own stage's status and output, and the host keeps
    no descriptor (connection, exit watch) of a stage that has ended."""
    stage_host, address, usage = host
    environment = {**os.environ, "PYTHONPATH": str(WORKFLOW), ADDRESS_VARIABLE: address}
    open_before = set(os.listdir(f"/proc/{stage_host.process.pid}/fd"))
    jobs = []
    for index in range(4):
        args = ["pipeline-info", "--config", json.dumps({"dataset": f"d{index}"}), "--out", f"info{index}"]
        if index == 3:  # one of them fails
            args = ["postprocess", "--no-such-flag"]
        jobs.append(subprocess.Popen([sys.executable, "-m", "snakescope", *args], cwd=tmp_path, env=environment,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    statuses = [job.wait(timeout=120) for job in jobs]
    assert statuses == [0, 0, 0, 2]
    for index in range(3):
        assert json.loads((tmp_path / f"info{index}" / "params.json").read_text())["dataset"] == f"d{index}"
    deadline = time.monotonic() + 10  # the host closes a stage's descriptors as it reaps it, right after answering
    while set(os.listdir(f"/proc/{stage_host.process.pid}/fd")) != open_before:
        assert time.monotonic() < deadline, "the host kept descriptors of stages that have ended"
        time.sleep(0.05)


def test_without_a_host_or_for_other_commands_the_job_runs_the_stage_itself(host, tmp_path):
    _, address, usage = host
    before = len(read_usage(usage))
    result = stage(["pipeline-info", "--config", "{}", "--out", "info"], tmp_path, str(tmp_path / "no-socket"))
    assert result.returncode == 0 and (tmp_path / "info" / "params.json").is_file()
    result = stage(["--help"], tmp_path, address)  # not a hosted stage
    assert result.returncode == 0 and "watch" in result.stdout
    assert len(read_usage(usage)) == before


def test_the_host_refuses_a_job_of_another_interpreter(host):
    _, address, _ = host
    payload = pack_request(["tables"], "/", {}, python="/other/python", package="/other/snakescope")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(address)
        socket.send_fds(sock, [len(payload).to_bytes(LENGTH_BYTES, "big")], [0, 1, 2])
        sock.sendall(payload)
        answer = sock.makefile("rb").readline().decode()
    assert answer.startswith("error ") and "python" in answer and "package" in answer


def test_a_malformed_request_is_dropped_and_the_host_serves_on(host, tmp_path):
    """A request that is cut short or does not parse is closed without an answer (the job then runs the stage
    itself) and leaves no descriptor behind in the host, which goes on serving jobs."""
    stage_host, address, _ = host
    host_fds = f"/proc/{stage_host.process.pid}/fd"
    open_before = set(os.listdir(host_fds))
    for payload, claimed in ((b"\0".join([b"/py", b"/pkg", b"/cwd", b"5", b"tables"]), None), (b"short", 100)):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(address)
            socket.send_fds(sock, [(claimed or len(payload)).to_bytes(LENGTH_BYTES, "big")], [0, 1, 2])
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            assert sock.makefile("rb").readline() == b""  # closed, no answer
    assert set(os.listdir(host_fds)) == open_before
    result = stage(["pipeline-info", "--config", "{}", "--out", "info"], tmp_path, address)
    assert result.returncode == 0 and (tmp_path / "info" / "params.json").is_file()


def test_a_request_carries_every_string_of_the_job_unchanged():
    """Arguments with spaces, quotes, '=' and newlines, empty ones, non-UTF-8 bytes in the environment (as
    os.environ holds them, surrogate-escaped) and values holding '=' arrive as the job sent them."""
    argv = ["tables", "--out", "a b/'c'\n=d", "", "--x=y", "ü\nz"]
    env = {"PATH": "/usr/bin:/bin", "ODD": "a=b=c", "EMPTY": "", "RAW": b"\xff\xfe".decode("utf-8", "surrogateescape")}
    request = unpack_request(pack_request(argv, "/tmp/x y", env, python="/py", package="/pkg"))
    assert request == {"argv": argv, "cwd": "/tmp/x y", "env": env, "python": "/py", "package": "/pkg"}
    with pytest.raises(ValueError):
        unpack_request(b"\0".join([b"/py", b"/pkg", b"/cwd", b"5", b"tables"]))  # says five arguments, holds one


def test_a_job_client_imports_nothing_it_would_have_to_load():
    """The client of every local stage job loads only built-in modules (no socket, json, re, enum, selectors):
    its start-up is paid by every job of every batch."""
    probe = ("import sys; before = set(sys.modules); import snakescope.hostclient; "
             "print(' '.join(sorted(set(sys.modules) - before)))")
    loaded = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": str(WORKFLOW)},
                            capture_output=True, text=True, check=True).stdout.split()
    allowed = set(sys.builtin_module_names) | {"_socket"}  # socket's C part: built in, or one small extension module
    assert "snakescope.hostclient" in loaded
    assert [name for name in loaded if not name.startswith("snakescope") and name not in allowed] == []


def test_the_host_leaves_when_the_process_that_started_it_ends(tmp_path):
    """A Snakemake process that dies without its onerror handler must not leave a host behind."""
    address = str(tmp_path / "socket")
    starter = ("import os, subprocess, sys, time; subprocess.Popen([sys.executable, '-m', 'snakescope.stagehost', "
               "sys.argv[1], str(os.getpid())]); time.sleep(1.0)")
    subprocess.run([sys.executable, "-c", starter, address], env={**os.environ, "PYTHONPATH": str(WORKFLOW)}, timeout=60)
    deadline = time.monotonic() + 60
    while os.path.exists(address):
        assert time.monotonic() < deadline, "the host kept listening after the process that started it ended"
        time.sleep(0.1)


def test_a_stage_killed_in_the_host_fails_its_job_and_says_so(host, tmp_path):
    """An out-of-memory kill of the forked stage reaches the job as a shell reports it: status 128 + signal."""
    import signal

    from conftest import UNET, needs_shared

    needs_shared(UNET)
    stage_host, address, _ = host
    environment = {**os.environ, "PYTHONPATH": str(WORKFLOW), ADDRESS_VARIABLE: address}
    settings = json.dumps({"source": str(UNET), "channels": [0]})
    job = subprocess.Popen([sys.executable, "-m", "snakescope", "check-model", "--settings", settings, "--cache-dir",
                            str(tmp_path / "cache"), "--out", str(tmp_path / "check.json")], cwd=tmp_path, env=environment,
                           stderr=subprocess.PIPE, text=True)
    children = f"/proc/{stage_host.process.pid}/task/{stage_host.process.pid}/children"
    deadline = time.monotonic() + 60
    while not open(children).read().split():
        assert time.monotonic() < deadline and job.poll() is None, "the stage never started in the host"
        time.sleep(0.05)
    os.kill(int(open(children).read().split()[0]), signal.SIGKILL)
    _, stderr = job.communicate(timeout=60)
    assert job.returncode == 128 + signal.SIGKILL and "killed by signal 9 (SIGKILL)" in stderr
    assert not (tmp_path / "check.json").exists()


def test_the_hosts_warm_up_pays_first_uses_and_leaves_no_python_thread(tmp_path):
    """The host imports and warms up before it forks: afterwards it holds only its main thread (a reader's zarr I/O
    thread is stopped), and a fork reads an OME-TIFF with bioio's plugins already found and ome-types' context made
    (without the warm-up every import job paid about 1.2-1.6 CPU-s for them, measured)."""
    script = (
        "import os, threading\n"
        "import numpy as np\n"
        "from pathlib import Path\n"
        "from snakescope import stagehost\n"
        "stagehost._preload()\n"
        "stagehost._warm_up()\n"
        "print('threads', [t.name for t in threading.enumerate()])\n"
        "from snakescope.acquisition import ImportSettings, import_source, write_ome_tiff\n"
        "from snakescope.inputs import Source\n"
        f"folder = Path({str(tmp_path)!r})\n"
        "write_ome_tiff(folder / 'f.ome.tif', np.ones((1, 40, 50), np.uint16), ['DAPI'], {'x': 0.5, 'y': 0.5})\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    import bioio.plugins, ome_types._conversion\n"
        "    warm = bool(bioio.plugins.plugins_by_ext_cache) and hasattr(ome_types._conversion.XmlParser, 'shared_context')\n"
        "    units, _ = import_source(Source('f', str(folder / 'f.ome.tif')), ImportSettings(), folder / 'out')\n"
        "    print('child', units[0].channel_names, warm, flush=True)\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(WORKFLOW)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert lines["threads"] == "['MainThread']"
    names, warm = lines["child"].rsplit(" ", 1)
    assert names == "['DAPI']"
    assert warm == "True"  # the reader plugins found and the OME binding context made before the fork, not in it

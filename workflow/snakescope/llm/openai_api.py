"""OpenAI-compatible Chat Completions through the ``openai`` client: what vLLM, llama.cpp's ``llama-server``,
SGLang, LM Studio, many sites' inference APIs and Ollama's ``/v1`` serve.

Images go as PNG data URLs in the user message; the JSON schema goes as ``response_format`` (``json_schema``),
as vLLM's older ``guided_json`` field, or not at all (``review.llm.structured_output``); the answer is validated
against the schema afterwards in every case. An API key is read from the environment variable whose *name* is
``review.llm.api_key_env``: the key itself is never in the config, a log, provenance or the report.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any
from urllib.parse import urlsplit

from .client import ChatClient, ModelInfo, Reply, ServerRefused, TransportFailed, retry_after_seconds
from .settings import LLMSettings, LLMUnavailable, ModelMissing

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
OPENAI_OPTIONS = ("temperature", "seed", "top_p", "max_tokens", "frequency_penalty", "presence_penalty", "stop")
OLLAMA_ONLY_OPTIONS = ("num_ctx", "num_predict", "keep_alive")  # num_predict becomes max_tokens


def base_url(settings: LLMSettings) -> str:
    """Config endpoint, else ``$OPENAI_BASE_URL``, else http://127.0.0.1:8000/v1 (vLLM's default)."""
    text = (settings.endpoint or os.environ.get("OPENAI_BASE_URL", "") or DEFAULT_BASE_URL).strip().rstrip("/")
    return text if "://" in text else "http://" + text


def api_key(settings: LLMSettings) -> str:
    """The key from the environment variable named in the config; servers without keys get a placeholder."""
    if not settings.api_key_env:
        return "no-key"
    value = os.environ.get(settings.api_key_env, "")
    if not value:
        raise LLMUnavailable(f"the environment variable {settings.api_key_env} (named by config key review.llm.api_key_env) "
                             "is not set or empty; export the API key under that name before running")
    return value


def request_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Chat Completions parameters, extra body fields) from ``review.llm.options``: Ollama-only keys are dropped,
    ``num_predict`` becomes ``max_tokens``, anything else (``top_k``, ``repetition_penalty``, ...) is passed on."""
    named = {k: v for k, v in options.items() if k in OPENAI_OPTIONS}
    if "num_predict" in options and "max_tokens" not in named:
        named["max_tokens"] = options["num_predict"]
    extra = {k: v for k, v in options.items() if k not in OPENAI_OPTIONS and k not in OLLAMA_ONLY_OPTIONS}
    return named, extra


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


class OpenAIClient(ChatClient):
    backend = "openai"

    def __init__(self, settings: LLMSettings) -> None:
        import openai

        super().__init__(settings, base_url(settings))
        self.client = openai.OpenAI(base_url=self.endpoint, api_key=api_key(settings), timeout=settings.timeout_s, max_retries=0)
        self.structured = settings.structured_output
        self.models: list[Any] | None = None  # /models as listed when the server was first asked (server_version)

    def server_version(self) -> str:
        """The server's version where it says (vLLM ``/version``, llama-server ``/props``), after checking it answers."""
        import httpx
        import openai

        try:
            self.models = list(self.client.models.list())
        except openai.APIConnectionError as exc:
            raise LLMUnavailable(f"no OpenAI-compatible server answers at {self.endpoint} (config key review.llm.endpoint "
                                 f"or $OPENAI_BASE_URL): {type(exc).__name__}") from exc
        except openai.APIStatusError as exc:
            raise LLMUnavailable(f"the server at {self.endpoint} refused to list its models: HTTP {exc.status_code} "
                                 f"{_message(exc)} (an API key? config key review.llm.api_key_env)") from exc
        parts = urlsplit(self.endpoint)
        root = f"{parts.scheme}://{parts.netloc}"
        headers = {"Authorization": f"Bearer {self.client.api_key}"}
        for path, field_ in (("/version", "version"), ("/props", "build_info")):
            try:
                response = httpx.get(root + path, timeout=3.0, headers=headers)
                if response.status_code == 200 and (value := response.json().get(field_)):
                    return str(value)
            except (httpx.HTTPError, ValueError, AttributeError):
                continue
        return "unknown"

    def describe(self, server_version: str) -> ModelInfo:
        """The model as ``/models`` lists it; its id is a hash of the stable fields (vLLM's ``created`` is the request time)."""
        served = {m.id: m for m in (self.models if self.models is not None else self.client.models.list())}
        entry = served.get(self.settings.model)
        if entry is None:
            raise ModelMissing(f"model {self.settings.model!r} is not served at {self.endpoint} (config key review.llm.model); "
                               f"the server lists: {', '.join(sorted(served)) or 'nothing'}")
        stable = {k: v for k, v in entry.model_dump().items() if k not in ("created", "permission")}
        model_id = "sha256:" + hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()
        return ModelInfo(self.backend, self.endpoint, server_version, self.settings.model, model_id)

    def send(self, prompt: str, images: list[bytes], schema: dict[str, Any] | None) -> Reply:
        import openai

        content: Any = prompt
        if images:
            content = [{"type": "text", "text": prompt}, *({"type": "image_url", "image_url": {"url": data_url(i)}} for i in images)]
        named, extra = request_options(self.settings.options)
        if schema is not None and self.schema_in_request:
            if self.structured == "response_format":
                named["response_format"] = {"type": "json_schema",
                                            "json_schema": {"name": "snakescope_answer", "schema": schema, "strict": False}}
            elif self.structured == "guided_json":
                extra["guided_json"] = schema
        try:
            response = self.client.chat.completions.create(model=self.settings.model, messages=[{"role": "user", "content": content}],
                                                           extra_body=extra or None, **named)
        except openai.NotFoundError as exc:
            raise ModelMissing(f"model {self.settings.model!r} is not served at {self.endpoint}: {_message(exc)} "
                               "(config key review.llm.model)") from exc
        except openai.APIStatusError as exc:
            raise ServerRefused(exc.status_code, _message(exc), retry_after_seconds(exc.response.headers.get("retry-after"))) from exc
        except openai.APIConnectionError as exc:
            raise TransportFailed(f"{type(exc).__name__}: {exc}") from exc
        if not response.choices:
            raise ServerRefused(200, "the answer has no choices")
        choice = response.choices[0]
        return Reply(choice.message.content or "", choice.finish_reason)


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        return str(inner.get("message", inner) if isinstance(inner, dict) else inner)[:300]
    return str(getattr(exc, "message", exc))[:300]

"""OpenAI-compatible Chat Completions through the ``openai`` client: what vLLM, llama.cpp's ``llama-server``,
SGLang, LM Studio, many sites' inference APIs and Ollama's ``/v1`` serve.

Images go as PNG data URLs in the user message. The JSON schema goes the way the server documents
(``review.llm.structured_output``; ``auto`` picks by what the server reports, see :data:`FORMS`), and the self-test
falls back along the chain when a server refuses one; the answer is validated against the schema afterwards in every
case. What the server says about itself (llama.cpp's ``/props`` and ``/v1/models`` ``architecture``, vLLM's
``/version`` and ``max_model_len``) gives its kind, the model's input modalities and its context size. An API key is read from the environment variable whose *name* is
``review.llm.api_key_env``: the key itself is never in the config, a log, provenance or the report.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
from typing import Any
from urllib.parse import urlsplit

from .client import ChatClient, ModelInfo, Reply, ServerRefused, TransportFailed, retry_after_seconds
from .settings import LLMSettings, LLMUnavailable, ModelMissing

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
OPENAI_OPTIONS = ("temperature", "seed", "top_p", "max_tokens", "frequency_penalty", "presence_penalty", "stop")
OLLAMA_ONLY_OPTIONS = ("num_ctx", "num_predict", "keep_alive")  # num_predict becomes max_tokens
# How the schema can be sent, as each server documents it: ``response_format`` {type: json_schema} (OpenAI, vLLM, llama.cpp's
# llama-server, SGLang, LM Studio), ``json_object`` {type: json_object, schema} (llama-cpp-python's server, whose
# response_format accepts only 'text' or 'json_object'), ``structured_outputs`` {json: schema} (vLLM >= 0.12, which
# removed ``guided_json``), ``guided_json`` (vLLM < 0.12), ``none`` (validated afterwards only). The self-test tries the
# configured (or ``auto``) form first, then the others in this order, then none.
FORMS = ("response_format", "json_object", "structured_outputs", "guided_json")


def version_tuple(text: str) -> tuple[int, ...]:
    """'0.12.1rc2' -> (0, 12, 1): the leading numbers of the dotted parts, up to the first part without one."""
    out = []
    for part in text.strip().lstrip("v").split("."):
        match = re.match(r"\d+", part)
        if match is None:
            break
        out.append(int(match.group()))
    return tuple(out)


def auto_form(kind: str, version: str) -> str:
    """The structured-output form a server of this kind and version documents."""
    if kind == "vllm":
        return "structured_outputs" if version_tuple(version) >= (0, 12) else "guided_json"
    if kind == "llama-cpp-python":
        return "json_object"
    return "response_format"


def form_chain(configured: str, kind: str, version: str) -> list[str]:
    """The forms the self-test tries, in order: the configured one (``auto``: the server kind's), the others, none.
    ``guided_json`` on a vLLM that removed it becomes ``structured_outputs`` (vLLM ignores unknown fields silently)."""
    if configured == "none":
        return ["none"]
    first = auto_form(kind, version) if configured == "auto" else configured
    if first == "guided_json" and kind == "vllm" and version_tuple(version) >= (0, 12):
        first = "structured_outputs"
    return [first, *(f for f in FORMS if f != first), "none"]


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


# Every request carries a token limit: a server told nothing generates up to its context, and llama.cpp goes on
# generating for a request whose client has gone (a stopped job) until it reaches the limit. A review answer or a
# narrative needs a few hundred tokens.
DEFAULT_MAX_TOKENS = 2048


def request_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Chat Completions parameters, extra body fields) from ``review.llm.options``: Ollama-only keys are dropped,
    ``num_predict`` becomes ``max_tokens`` (else :data:`DEFAULT_MAX_TOKENS`), anything else (``top_k``,
    ``repetition_penalty``, ...) is passed on."""
    named = {k: v for k, v in options.items() if k in OPENAI_OPTIONS}
    if "max_tokens" not in named:
        named["max_tokens"] = options.get("num_predict") or DEFAULT_MAX_TOKENS
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
        self.models: list[Any] | None = None  # /models as listed when the server was first asked (server_version)
        self.props: dict[str, Any] = {}  # llama.cpp's /props
        self.kind = ""

    def server_version(self) -> str:
        """The server's version where it says (vLLM ``/version``, llama-server ``/props``), after checking it answers;
        what it says about itself is kept for :meth:`describe` (``/props``) and :attr:`kind`."""
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
        found: dict[str, dict[str, Any]] = {}
        for path in ("/version", "/props"):
            try:
                response = httpx.get(root + path, timeout=3.0, headers=headers)
                if response.status_code == 200 and isinstance(body := response.json(), dict):
                    found[path] = body
            except (httpx.HTTPError, ValueError):
                continue
        self.props = found.get("/props", {})
        owners = {str(getattr(m, "owned_by", "")) for m in self.models}
        if self.props.get("build_info") or "modalities" in self.props or "llamacpp" in owners:
            self.kind, version = "llama.cpp", str(self.props.get("build_info") or "unknown")
        elif "vllm" in owners or ("/version" in found and "/props" not in found):
            self.kind, version = "vllm", str(found.get("/version", {}).get("version") or "unknown")
        elif owners == {"me"}:  # llama-cpp-python's server lists its models as owned by "me"
            self.kind, version = "llama-cpp-python", "unknown"
        else:
            self.kind, version = "", str(found.get("/version", {}).get("version") or "unknown")
        return version

    def describe(self, server_version: str) -> ModelInfo:
        """The model as ``/models`` lists it; its id is a hash of the stable fields (vLLM's ``created`` is the request time).
        Its capabilities and context size where the server says: llama.cpp's ``architecture.input_modalities`` and
        ``meta.n_ctx`` (or ``/props``), vLLM's ``max_model_len``."""
        served = {m.id: m for m in (self.models if self.models is not None else self.client.models.list())}
        entry = served.get(self.settings.model)
        if entry is None:
            raise ModelMissing(f"model {self.settings.model!r} is not served at {self.endpoint} (config key review.llm.model); "
                               f"the server lists: {', '.join(sorted(served)) or 'nothing'}")
        listed = entry.model_dump()
        stable = {k: v for k, v in listed.items() if k not in ("created", "permission")}
        model_id = "sha256:" + hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()
        modalities = (listed.get("architecture") or {}).get("input_modalities")
        if modalities is None and isinstance(self.props.get("modalities"), dict):
            modalities = ["text"] + [m for m, on in self.props["modalities"].items() if on and m == "vision"]
        capabilities = None
        if isinstance(modalities, list):
            capabilities = ("completion", *(("vision",) if {"image", "vision"} & set(modalities) else ()))
        context = ((listed.get("meta") or {}).get("n_ctx") or listed.get("max_model_len")
                   or (self.props.get("default_generation_settings") or {}).get("n_ctx"))
        return ModelInfo(self.backend, self.endpoint, server_version, self.settings.model, model_id, capabilities,
                         int(context) if context else None, self.kind)

    def send(self, prompt: str, images: list[bytes], schema: dict[str, Any] | None) -> Reply:
        import openai

        content: Any = prompt
        if images:
            content = [{"type": "text", "text": prompt}, *({"type": "image_url", "image_url": {"url": data_url(i)}} for i in images)]
        named, extra = request_options(self.settings.options)
        if schema is not None:
            if self.structured in ("response_format", "auto"):
                named["response_format"] = {"type": "json_schema",
                                            "json_schema": {"name": "snakescope_answer", "schema": schema, "strict": False}}
            elif self.structured == "json_object":
                named["response_format"] = {"type": "json_object", "schema": schema}
            elif self.structured == "structured_outputs":
                extra["structured_outputs"] = {"json": schema}
            elif self.structured == "guided_json":
                extra["guided_json"] = schema
        started = time.monotonic()
        parts: list[str] = []
        finish, usage = None, {}
        try:
            # streamed: a server stops generating when the stream's reader goes away (a stopped job), which llama.cpp's
            # server does not do for a plain request; the whole answer is still bounded by timeout_s
            stream = self.client.chat.completions.create(model=self.settings.model, messages=[{"role": "user", "content": content}],
                                                         extra_body=extra or None, stream=True,
                                                         stream_options={"include_usage": True}, **named)
            with stream:
                for chunk in stream:
                    if chunk.usage is not None:
                        usage = {"prompt_tokens": chunk.usage.prompt_tokens, "completion_tokens": chunk.usage.completion_tokens}
                    for choice in chunk.choices[:1]:
                        parts.append(choice.delta.content or "")
                        finish = choice.finish_reason or finish
                    if time.monotonic() - started > self.settings.timeout_s:
                        raise TransportFailed(f"no complete answer within review.llm.timeout_s ({self.settings.timeout_s:g} s)")
        except openai.NotFoundError as exc:
            raise ModelMissing(f"model {self.settings.model!r} is not served at {self.endpoint}: {_message(exc)} "
                               "(config key review.llm.model)") from exc
        except openai.APIStatusError as exc:
            raise ServerRefused(exc.status_code, _message(exc), retry_after_seconds(exc.response.headers.get("retry-after"))) from exc
        except openai.APIConnectionError as exc:
            raise TransportFailed(f"{type(exc).__name__}: {exc}") from exc
        except openai.APIError as exc:  # an error event inside the stream
            raise ServerRefused(500, _message(exc)) from exc
        if finish is None and not parts:
            raise ServerRefused(200, "the answer has no choices")
        return Reply("".join(parts), finish, {**usage, "seconds": round(time.monotonic() - started, 3)})


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        return str(inner.get("message", inner) if isinstance(inner, dict) else inner)[:300]
    return str(getattr(exc, "message", exc))[:300]

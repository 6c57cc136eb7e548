"""The self-test of an LLM backend: the server answers, the model exists, it can see an image, and it returns
schema-valid JSON for a tiny probe, in the structured-output form the server takes. Run once per run and endpoint
(rule ``llm_check``; once per watch in watch mode) before any unit is sent; its record goes into provenance. A model
that cannot see images is refused: its reviews would be guesses from the text alone. A text model for the narrative
gets the text probe only (:func:`text_self_test`)."""

from __future__ import annotations

import time
from typing import Any, Callable

from .client import ChatClient, ModelInfo, public_endpoint
from ..core.records import utc_now
from .settings import AnswerInvalid, LLMUnavailable, ModelCannotSee, StructuredOutputRefused

PROBE_SCHEMA = {
    "title": "snakescope self-test probe",
    "type": "object",
    "required": ["brightness"],
    "additionalProperties": False,
    "properties": {"brightness": {"enum": ["bright", "dark"]}},
}
PROBE_PROMPT = ("This is a test of whether you can see images. Look at the attached image: is it mostly bright "
                "(light grey or white) or mostly dark (dark grey or black)? Answer in JSON: {\"brightness\": \"bright\"} "
                "or {\"brightness\": \"dark\"}.")


def probe_png(bright: bool) -> bytes:
    """A 64 x 64 grey PNG with a little texture: near-white or near-black."""
    import numpy as np

    from ..core.rendering import png_bytes

    rng = np.random.default_rng(0)
    level = 215 if bright else 30
    grey = np.clip(level + rng.normal(0, 8, (64, 64)), 0, 255).astype(np.uint8)
    return png_bytes(np.repeat(grey[..., None], 3, axis=2))


def _probe(client: ChatClient) -> dict[str, str]:
    """{'bright': answer, 'dark': answer}: both probes at once (the self-test costs one answer's time, not two)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {expected: pool.submit(client.ask, PROBE_PROMPT, [probe_png(expected == "bright")], PROBE_SCHEMA)
                   for expected in ("bright", "dark")}
        return {expected: future.result()[0]["brightness"] for expected, future in futures.items()}


TEXT_PROBE_SCHEMA = {
    "title": "snakescope text self-test probe",
    "type": "object",
    "required": ["status"],
    "additionalProperties": False,
    "properties": {"status": {"enum": ["ready"]}},
}
TEXT_PROBE_PROMPT = 'This is a test of whether you answer in JSON. Answer exactly: {"status": "ready"}'


def _negotiate(client: ChatClient, info: ModelInfo, probe: Callable[[], Any]) -> tuple[Any, str, str | None]:
    """(probe's answers, the structured-output form that worked, a note on the forms the server refused).

    Ollama takes the schema as ``format``, always. An OpenAI-compatible server is asked in the form its kind documents
    (or the configured one), then along :func:`.openai_api.form_chain` while it refuses the form."""
    if info.backend == "ollama":
        return probe(), "format (enforced by Ollama)", None
    from .openai_api import form_chain

    refused: list[str] = []
    for form in form_chain(client.settings.structured_output, info.server_kind, info.server_version):
        client.structured = form
        try:
            answers = probe()
        except StructuredOutputRefused as exc:
            refused.append(f"{form} ({str(exc).split(': ', 1)[-1][:160]})")
            continue
        if form == "none" and refused:
            form = "none (refused by the server)"
        return answers, form, f"the server refused: {'; '.join(refused)}" if refused else None
    raise AssertionError("the form chain ends with none, which no server refuses")


def _where(info: ModelInfo) -> str:
    kind = f" ({info.server_kind} {info.server_version})" if info.server_kind else ""
    return f"model {info.model!r} on the {info.backend} server at {public_endpoint(info.endpoint)}{kind}"


def _record(info: ModelInfo, started: float, structured: str, note: str | None, sees_images: bool) -> dict[str, Any]:
    return {"passed": True, "checked_at": utc_now(), "seconds": round(time.monotonic() - started, 2), "backend": info.backend,
            "endpoint": public_endpoint(info.endpoint), "server_kind": info.server_kind or None, "server_version": info.server_version,
            "model": info.model, "model_id": info.model_id,
            "capabilities": list(info.capabilities) if info.capabilities is not None else None, "context_size": info.context_size,
            "sees_images": sees_images, "structured_output": structured, "validated_with_jsonschema": True, "note": note}


def skipped_record(info: ModelInfo, structured_output: str) -> dict[str, Any]:
    """What is known of the model when the self-test is switched off (``review.llm.selftest: false``)."""
    return {**_record(info, time.monotonic(), structured_output, "skipped (review.llm.selftest: false)", False),
            "passed": None, "sees_images": None}


def self_test(client: ChatClient, info: ModelInfo) -> dict[str, Any]:
    """The record of a passed self-test; raises :class:`ModelCannotSee` or :class:`LLMUnavailable` with the reason.
    A model the server lists as text-only is refused before any request is sent."""
    started = time.monotonic()
    model = _where(info)
    if info.capabilities is not None and "vision" not in info.capabilities:
        raise ModelCannotSee(f"{model} cannot see images (the server lists its capabilities as {', '.join(info.capabilities)}); "
                             "choose a vision model in config key review.llm.model, e.g. qwen2.5vl:7b")
    try:
        answers, structured, note = _negotiate(client, info, lambda: _probe(client))
    except AnswerInvalid as exc:
        raise LLMUnavailable(f"self-test: {model} gave no valid answer to a tiny image probe: {exc}") from exc
    if any(expected != said for expected, said in answers.items()):
        raise ModelCannotSee(f"{model} does not see the images it is sent; choose a vision model in config key "
                             f"review.llm.model (asked whether a near-white and a near-black test image are bright or dark, "
                             f"it answered {answers['bright']!r} and {answers['dark']!r}: a text-only model, or a server "
                             "that drops images)")
    return _record(info, started, structured, note, True)


def text_self_test(client: ChatClient, info: ModelInfo) -> dict[str, Any]:
    """The self-test of a model that only writes text (``review.llm.summary_model``): it answers a text probe in
    schema-valid JSON. Raises :class:`LLMUnavailable` with the reason."""
    started = time.monotonic()
    try:
        _, structured, note = _negotiate(client, info, lambda: client.ask(TEXT_PROBE_PROMPT, [], TEXT_PROBE_SCHEMA)[0])
    except AnswerInvalid as exc:
        raise LLMUnavailable(f"self-test: {_where(info)} gave no valid answer to a text probe: {exc}") from exc
    return _record(info, started, structured, note, bool(info.capabilities and "vision" in info.capabilities))

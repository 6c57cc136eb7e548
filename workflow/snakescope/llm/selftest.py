"""The start-up self-test of an LLM backend: the server answers, the model exists, it can see an image, and it
returns schema-valid JSON for a tiny probe. Run once per review job before any unit is sent; its record goes
into provenance. A model that cannot see images is refused: its reviews would be guesses from the text alone."""

from __future__ import annotations

import time
from typing import Any

from .client import ChatClient, ModelInfo, public_endpoint
from .prompt import now
from .settings import AnswerInvalid, LLMUnavailable, ModelCannotSee

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


def self_test(client: ChatClient, info: ModelInfo) -> dict[str, Any]:
    """The record of a passed self-test; raises :class:`ModelCannotSee` or :class:`LLMUnavailable` with the reason."""
    started = time.monotonic()
    model = f"model {info.model!r} on the {info.backend} server at {info.endpoint}"
    if info.capabilities is not None and "vision" not in info.capabilities:
        raise ModelCannotSee(f"{model} cannot see images; choose a vision model in config key review.llm.model, "
                             f"e.g. qwen2.5vl:7b (its capabilities: {', '.join(info.capabilities)})")
    structured = "format (enforced by Ollama)" if info.backend == "ollama" else client.settings.structured_output
    note = None
    try:
        answers = _probe(client)
    except AnswerInvalid as exc:
        if not (client.backend == "openai" and client.schema_in_request and "HTTP 400" in str(exc) and structured != "none"):
            raise LLMUnavailable(f"self-test: {model} gave no valid answer to a tiny image probe: {exc}") from exc
        # a server without structured output: ask without it, and validate the answers as always
        client.schema_in_request = False
        note = f"the server refused {structured} ({str(exc)[:200]}); answers are validated after the fact only"
        structured = "none (refused by the server)"
        try:
            answers = _probe(client)
        except AnswerInvalid as again:
            raise LLMUnavailable(f"self-test: {model} gave no valid answer to a tiny image probe: {again}") from again
    if any(expected != said for expected, said in answers.items()):
        raise ModelCannotSee(f"{model} does not see the images it is sent; choose a vision model in config key "
                             f"review.llm.model (asked whether a near-white and a near-black test image are bright or dark, "
                             f"it answered {answers['bright']!r} and {answers['dark']!r}: a text-only model, or a server "
                             "that drops images)")
    return {"passed": True, "checked_at": now(), "seconds": round(time.monotonic() - started, 2), "backend": info.backend,
            "endpoint": public_endpoint(info.endpoint), "server_version": info.server_version, "model": info.model, "model_id": info.model_id,
            "capabilities": list(info.capabilities) if info.capabilities is not None else None, "sees_images": True,
            "structured_output": structured, "validated_with_jsonschema": True, "note": note}

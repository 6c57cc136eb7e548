"""Config section ``review.llm`` as one typed object, and the errors every backend raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

BACKENDS = ("ollama", "openai")  # review.backend values with an LLM reviewer
SCOPES = ("all", "flagged", "flagged_and_audit")


class LLMUnavailable(RuntimeError):
    """No server can be used (unreachable, no such model, model cannot see images); the message says what to do."""


class ModelMissing(LLMUnavailable):
    """The server answers but does not serve the model."""


class ModelCannotSee(LLMUnavailable):
    """The model answers but ignores or refuses images (the start-up self-test)."""


class AnswerInvalid(RuntimeError):
    """Every attempt gave an invalid, truncated or schema-violating answer."""


class StructuredOutputRefused(AnswerInvalid):
    """The server refused the way the JSON schema was sent (the self-test then tries the next way)."""


@dataclass(frozen=True)
class LLMSettings:
    """``review.llm`` (see config/README.md), with ``backend`` taken from ``review.backend``."""

    backend: str = "ollama"
    endpoint: str = ""
    api_key_env: str = ""
    structured_output: str = "auto"
    model: str = "qwen2.5vl:7b"
    options: dict[str, Any] = field(default_factory=lambda: {"temperature": 0, "seed": 0, "num_ctx": 8192})
    keep_alive: str | float = "15m"
    timeout_s: float = 300.0
    retries: int = 2
    images_per_request: int = 1
    max_concurrency: int = 4  # requests in flight per review job (Ollama: OLLAMA_NUM_PARALLEL; vLLM batches many)
    server: str = "connect"
    on_unreachable: str = "fallback"
    pull: bool = False
    selftest: bool = True
    scope: str = "all"
    audit_fraction: float = 0.1
    audit_seed: int = 0
    prompt: str = "config/prompts/review_v1.txt"
    summary_prompt: str = "config/prompts/summary_v2.txt"
    summary_model: str = ""  # a text model for the run's narrative (same server); empty: the review model writes it
    questions: tuple[str, ...] = ()
    refine: dict[str, Any] = field(default_factory=lambda: {"enabled": True, "max_iterations": 3,
                                                             "split_min_distance": [0.15, 1.5], "min_object_area_fraction": [0.05, 0.5]})

    @classmethod
    def from_config(cls, section: dict[str, Any], backend: str = "ollama") -> "LLMSettings":
        values = {**dict(section), "backend": backend}
        if "questions" in values:
            values["questions"] = tuple(values["questions"])
        if "refine" in values:
            values["refine"] = {**cls().refine, **values["refine"]}
        if values["backend"] not in BACKENDS:
            raise ValueError(f"review.backend {backend!r} is not an LLM backend ({', '.join(BACKENDS)})")
        return cls(**values)

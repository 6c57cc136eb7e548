"""The run's narrative: a text-only call to the LLM reviewer, or a fixed template over the aggregated tables when no
LLM is used; either way every number in it is checked against the data it was given."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ...core.records import write_json
from ...llm.guardrails import check_numbers
from ...llm.prompt import ReviewCache, now, prompt_version, render_prompt, sha256
from ...llm.settings import AnswerInvalid, LLMSettings, LLMUnavailable


def rules_summary(data: dict[str, Any]) -> str:
    """The no-LLM narrative: a fixed template over the aggregated tables."""
    v = data["verdicts"]
    parts = [f"{data['units']} image units were analysed: {v.get('pass', 0)} passed, {v.get('warn', 0)} warned and "
             f"{v.get('fail', 0)} failed review; {data['failed_inputs']} inputs or steps failed."]
    if data["issues"]:
        top = ", ".join(f"{k} ({n})" for k, n in sorted(data["issues"].items(), key=lambda kv: -kv[1])[:4])
        parts.append(f"Most frequent issues: {top}.")
    for condition, agg in data["conditions"].items():
        if agg.get("median_count") is not None:
            size = (f"median diameter {agg['median_diameter_um']} µm" if agg.get("median_diameter_um") is not None
                    else "no pixel size, so no diameter in µm")
            parts.append(f"{condition}: {agg['units']} units, median {agg['median_count']} nuclei per field, {size}.")
    return " ".join(parts)


def write_run_summary(aggregates: dict[str, Any], settings: LLMSettings | None, cache_dir: str | Path,
                      out_path: str | Path) -> dict[str, Any]:
    """The dataset's narrative: written by the LLM (``settings`` given) or the rule template, numbers checked."""
    from ...llm.client import public_endpoint
    from ...llm.backends import connect

    record: dict[str, Any] = {"backend": "deterministic", "uses_llm": False, "data": aggregates}
    text = None
    if settings is not None:
        template = Path(settings.summary_prompt).read_text(encoding="utf-8")
        prompt = render_prompt(template, aggregates)
        try:
            with connect(settings) as (client, info):
                cache = ReviewCache(cache_dir)
                key = cache.key([], prompt, info.backend, settings.model, info.model_id, settings.options, None)
                cached = cache.get(key)
                text = cached["answer"] if cached else client.ask(prompt, [], None)[0]
                if not cached:
                    cache.put(key, {"answer": text, "answered_at": now(), "attempts": 1})
                record.update(backend=info.backend, uses_llm=True, provenance={
                    "backend": info.backend, "endpoint": public_endpoint(info.endpoint), "server_version": info.server_version,
                    "model": settings.model, "model_id": info.model_id, "options": settings.options,
                    "prompt_file": settings.summary_prompt, "prompt_version": prompt_version(settings.summary_prompt),
                    "prompt_sha256": sha256(prompt), "cache_hit": cached is not None})
        except (LLMUnavailable, AnswerInvalid) as exc:
            if settings.on_unreachable == "fail":
                raise
            record["llm_error"] = str(exc)[:500]
    if text is None:
        text = rules_summary(aggregates)
    checked, mismatched = check_numbers(text, aggregates)
    record.update(text=text, numbers_checked=checked, numbers_mismatched=mismatched)
    write_json(out_path, record)
    return record


def run_summary(*, aggregates: str, run_summary: str, settings: dict[str, Any], llm_runtime: dict[str, Any], cache_dir: str,
                prompt: str | None = None) -> None:
    """Rule ``run_summary``: the narrative of the run, by the LLM when one reviews (``review.backend``), numbers checked."""
    from ...llm.settings import BACKENDS
    from ...core.records import read_json

    backend = settings.get("backend", "deterministic")
    llm = None
    if backend in BACKENDS:
        llm = LLMSettings.from_config({**settings.get("llm", {}), **llm_runtime, **({"summary_prompt": prompt} if prompt else {})},
                                      backend)
    try:
        record = write_run_summary(read_json(aggregates), llm, cache_dir, run_summary)
    except (LLMUnavailable, AnswerInvalid) as exc:
        raise SystemExit(f"snakescope: run summary: {exc} (review.llm.on_unreachable: fail)") from None
    print(f"run summary ({record['backend']}): {len(record['numbers_mismatched'])} unchecked number(s)", file=sys.stderr)

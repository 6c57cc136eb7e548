"""The run's narrative: a text-only call to the LLM reviewer, or a fixed template over the aggregated tables when no
LLM is used; either way every number in it is checked against the data it was given."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ...core.records import write_json
from ...llm.guardrails import check_numbers, narrative_problem
from ...core.records import utc_now
from ...llm.prompt import ReviewCache, prompt_version, render_prompt, sha256
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


def narrative_data(aggregates: dict[str, Any]) -> dict[str, Any]:
    """What the narrative is written from: the run's results, without this run's bookkeeping of LLM requests (their
    cost and warnings change when answers come from the cache, and would make an unchanged run ask again)."""
    llm = {k: v for k, v in (aggregates.get("llm") or {}).items() if k not in ("cost", "warnings")}
    return {**aggregates, "llm": llm} if "llm" in aggregates else aggregates


NARRATIVE_SCHEMA = {
    "title": "snakescope run summary",
    "type": "object",
    "required": ["narrative"],
    "additionalProperties": False,
    "properties": {"narrative": {"type": "string", "minLength": 40, "maxLength": 1000}},  # 3 to 6 sentences
}


def write_run_summary(aggregates: dict[str, Any], settings: LLMSettings | None, cache_dir: str | Path,
                      out_path: str | Path, checked: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dataset's narrative: written by the LLM (``settings`` given) or the rule template, numbers checked.

    The model is asked only when it passed the run's self-test (``checked``, rule ``llm_check``: the text self-test
    of ``review.llm.summary_model``, else the review model's); the narrative comes back as schema-valid JSON (the
    server's grammar, where it has one, keeps a small model from wandering off). Cached answers contact no server."""
    from ...llm.client import public_endpoint
    from ...llm.backends import connect

    record: dict[str, Any] = {"backend": "deterministic", "uses_llm": False, "data": aggregates}
    text = None
    if settings is not None and checked is not None and checked.get("passed") is False:
        record["llm_not_asked"] = f"model {checked.get('model')!r} did not pass the run's self-test: {str(checked.get('error'))[:400]}"
        settings = None
    if settings is not None:
        template = Path(settings.summary_prompt).read_text(encoding="utf-8")
        prompt = render_prompt(template, narrative_data(aggregates))
        try:
            cache = ReviewCache(cache_dir)
            model_id = (checked or {}).get("model_id")
            key = cache.key([], prompt, settings.backend, settings.model, model_id, settings.options, NARRATIVE_SCHEMA) if model_id else None
            cached = cache.get(key) if key else None
            usage = None
            if cached:
                text, info = cached["answer"], None
            else:
                with connect(settings) as (client, info):
                    form = str((checked or {}).get("structured_output") or settings.structured_output)
                    client.structured = "none" if form.startswith("none") else form
                    key = cache.key([], prompt, info.backend, settings.model, info.model_id, settings.options, NARRATIVE_SCHEMA)
                    cached = cache.get(key)  # without a self-test record the model id is known only now
                    if cached:
                        text = cached["answer"]
                    else:
                        text = client.ask(prompt, [], NARRATIVE_SCHEMA)[0]["narrative"].strip()
                        usage = client.last_usage
                        if problem := narrative_problem(text):
                            record["llm_usage"] = usage
                            raise AnswerInvalid(f"the narrative of model {settings.model!r} was not used: {problem}: "
                                                f"{text[:160]!r}")
                        cache.put(key, {"answer": text, "answered_at": utc_now(), "attempts": 1})
            record.update(backend=settings.backend, uses_llm=True, provenance={
                "backend": settings.backend, "endpoint": public_endpoint(info.endpoint) if info else checked.get("endpoint"),
                "server_version": info.server_version if info else checked.get("server_version"),
                "model": settings.model, "model_id": info.model_id if info else model_id, "options": settings.options,
                "structured_output": (checked or {}).get("structured_output") if info is None else client.structured,
                "prompt_file": settings.summary_prompt, "prompt_version": prompt_version(settings.summary_prompt),
                "prompt_sha256": sha256(prompt), "cache_hit": cached is not None, "usage": usage})
        except (LLMUnavailable, AnswerInvalid) as exc:
            if settings.on_unreachable == "fail":
                raise
            text = None
            record["llm_error"] = str(exc)[:500]
    if text is None:
        text = rules_summary(aggregates)
    checked_numbers, mismatched = check_numbers(text, aggregates)
    record.update(text=text, numbers_checked=checked_numbers, numbers_mismatched=mismatched)
    write_json(out_path, record)
    return record


def run_summary(*, aggregates: str, run_summary: str, settings: dict[str, Any], llm_runtime: dict[str, Any], cache_dir: str,
                prompt: str | None = None, llm_check: str | None = None) -> None:
    """Rule ``run_summary``: the narrative of the run, by the LLM when one reviews (``review.backend``) and passed the
    run's self-test, numbers checked."""
    from dataclasses import replace

    from ...llm.settings import BACKENDS
    from ...core.records import read_json

    backend = settings.get("backend", "deterministic")
    llm, checked = None, None
    if backend in BACKENDS:
        llm = LLMSettings.from_config({**settings.get("llm", {}), **llm_runtime, **({"summary_prompt": prompt} if prompt else {})},
                                      backend)
        record = read_json(llm_check) if llm_check else {}
        if llm.summary_model:
            llm, checked = replace(llm, model=llm.summary_model), record.get("summary")
        else:
            checked = record.get("review")
    try:
        record = write_run_summary(read_json(aggregates), llm, cache_dir, run_summary, checked)
    except (LLMUnavailable, AnswerInvalid) as exc:
        raise SystemExit(f"snakescope: run summary: {exc} (review.llm.on_unreachable: fail)") from None
    print(f"run summary ({record['backend']}): {len(record['numbers_mismatched'])} unchecked number(s)"
          + (f"; {record['llm_not_asked']}" if record.get("llm_not_asked") else ""), file=sys.stderr)

"""One batch's LLM reviews: which units the model sees (scope and audit), the requests in flight, the checks,
the critique-driven refinement, and the review records."""

from __future__ import annotations

import hashlib
import sys
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..core.records import read_json, write_json
from ..llm.client import ChatClient, ModelInfo, public_endpoint
from ..llm.backends import connect
from ..llm.guardrails import check_claims, combine, merged_actions
from ..core.records import utc_now
from ..llm.prompt import ReviewCache, fill_answers, prompt_version, render_prompt, review_images, sha256, unit_data
from ..llm.selftest import self_test, skipped_record
from ..llm.settings import AnswerInvalid, LLMSettings, LLMUnavailable
from ..core.layout import schema_path

ANSWER_SCHEMA_PATH = schema_path("mllm_answer")
INPUTS_FOLDER = "llm_inputs"  # what each unit sent: its PNG(s) and prompt (provenance, and the fine-tuning export)


def audit_draw(seed: int, unit_id: str) -> float:
    """A number in [0, 1) fixed by the seed and the unit id: the same units are audited whatever the batch size."""
    return int(hashlib.sha256(f"{seed}:{unit_id}".encode()).hexdigest()[:12], 16) / 16**12


def llm_selection(rules_reviews: list[dict[str, Any]], settings: LLMSettings) -> dict[str, str]:
    """Why each unit goes to the LLM, or not: ``all`` (scope all), ``flagged`` (the rules warned or failed it),
    ``audit`` (the rules passed it; drawn for the audit), ``not_selected``."""
    out = {}
    for review in rules_reviews:
        uid = review["unit_id"]
        if settings.scope == "all":
            out[uid] = "all"
        elif review["verdict"] != "pass":
            out[uid] = "flagged"
        elif settings.scope == "flagged_and_audit" and audit_draw(settings.audit_seed, uid) < settings.audit_fraction:
            out[uid] = "audit"
        else:
            out[uid] = "not_selected"
    return out


CONTEXT_WARNING_FRACTION = 0.9  # a prompt this close to the model's context leaves the answer little room


def ask_timed(client: ChatClient, prompt: str, images: list[bytes], schema: dict[str, Any] | None) -> tuple[str, str, Any, Any]:
    """:meth:`ChatClient.ask` in a worker thread: (started_at, answered_at, (answer, attempts, errors) or the AnswerInvalid,
    what the answer cost)."""
    started = utc_now()
    try:
        result: Any = client.ask(prompt, images, schema)
    except AnswerInvalid as exc:
        result = exc
    return started, utc_now(), result, client.last_usage


def context_warning(usage: dict[str, Any] | None, context_size: int | None) -> str | None:
    """A warning when the prompt (images included, as the server counted its tokens) nears the model's context."""
    prompt = (usage or {}).get("prompt_tokens")
    if not prompt or not context_size or prompt < CONTEXT_WARNING_FRACTION * context_size:
        return None
    return (f"the prompt took {prompt} of the model's {context_size} context tokens (the server's count, images included): "
            "answers may be cut short; raise the server's context (Ollama: review.llm.options.num_ctx) or send smaller images")


def collect_answers(futures: dict[Any, str], pool: Any) -> dict[str, tuple[str, str, Any]]:
    """{unit_id: ask_timed's result} once all are in. A server that cannot be used at all (:class:`LLMUnavailable`)
    stops the batch: the requests not yet sent are cancelled and the first such error raised."""
    try:
        done, pending = wait(futures, return_when=FIRST_EXCEPTION) if futures else (set(), set())
        failed = [f for f in done if f.exception() is not None]
        if failed:
            for future in pending:
                future.cancel()
            raise failed[0].exception()  # type: ignore[misc]
        return {uid: future.result() for future, uid in futures.items()}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def rules_only(rules: dict[str, Any], status: str, selection: str | None, why: str) -> dict[str, Any]:
    """The rule-based review as the unit's review, saying why the LLM did not decide it."""
    record = {**rules, "status": status, "second_opinion": {"verdict": rules["verdict"], "issues": rules["issues"]},
              "summary": f"{why}: {rules['summary']}"[:2000]}
    if selection:
        record["llm_selection"] = selection
    return record


def run_record(info: Any, settings: LLMSettings, checked: dict[str, Any]) -> dict[str, Any]:
    return {"backend": info.backend, "endpoint": public_endpoint(info.endpoint), "server_kind": info.server_kind or None,
            "server_version": info.server_version, "model": info.model, "model_id": info.model_id,
            "context_size": info.context_size, "selftest": checked, "scope": settings.scope,
            "audit_fraction": settings.audit_fraction if settings.scope == "flagged_and_audit" else None,
            "structured_output": checked.get("structured_output", settings.structured_output)}


def recorded_info(checked: dict[str, Any]) -> ModelInfo:
    """The model as the run's self-test recorded it: enough for the cache keys, with no server contact."""
    return ModelInfo(checked["backend"], checked["endpoint"], checked["server_version"], checked["model"], checked["model_id"],
                     tuple(checked["capabilities"]) if checked.get("capabilities") is not None else None,
                     checked.get("context_size"), checked.get("server_kind") or "")


class LLMSession:
    """The model a review job (or a whole watch) talks to: the self-test's record, and a client connected on first use.

    Given the run's self-test record (rule ``llm_check``), nothing is sent until an answer is not in the cache: an
    unchanged rerun contacts no server. Without one, the session connects and self-tests at once (watch mode, and
    callers outside the workflow)."""

    def __init__(self, settings: LLMSettings, checked: dict[str, Any] | None = None, log_path: Path | None = None) -> None:
        self.settings, self.log_path = settings, log_path
        self._stack = ExitStack()
        self._client: ChatClient | None = None
        if checked is None:
            self._connect()
            self.checked = (self_test(self._client, self.info) if settings.selftest  # type: ignore[arg-type]
                            else skipped_record(self.info, settings.structured_output))
        else:
            self.checked, self.info = checked, recorded_info(checked)
        self.run = run_record(self.info, settings, self.checked)

    def _connect(self) -> None:
        self._client, self.info = self._stack.enter_context(connect(self.settings, self.log_path))

    @property
    def client(self) -> ChatClient:
        """The connected client, with the structured-output form the self-test settled."""
        if self._client is None:
            recorded = self.info
            self._connect()
            if self.info.model_id != recorded.model_id:
                raise LLMUnavailable(f"model {self.settings.model!r} at {self.info.endpoint} changed since the run's self-test "
                                     f"({recorded.model_id[:19]} then, {self.info.model_id[:19]} now); rerun with "
                                     "--forcerun llm_check")
            form = str(self.checked.get("structured_output") or self.settings.structured_output)
            self._client.structured = "none" if form.startswith("none") else form  # type: ignore[union-attr]
        return self._client  # type: ignore[return-value]

    def close(self) -> None:
        self._stack.close()


@contextmanager
def llm_session(settings: LLMSettings, log_path: Path | None = None, checked: dict[str, Any] | None = None) -> Iterator[LLMSession]:
    """An :class:`LLMSession` for the duration of the block (``ollama serve`` stopped after it, if it was started)."""
    session = LLMSession(settings, checked, log_path)
    try:
        yield session
    finally:
        session.close()


def check_run(settings: LLMSettings, summary: LLMSettings | None = None) -> dict[str, Any]:
    """Rule ``llm_check``'s record: the review model's self-test (``review``) and, when a separate text model writes the
    narrative, its text self-test (``summary``). A failure is recorded as ``passed: false`` with the reason (the
    review jobs then fall back to the rules without asking again); ``LLMUnavailable`` is raised only with
    ``on_unreachable: fail``."""
    from ..llm.selftest import text_self_test

    record: dict[str, Any] = {"checked_at": utc_now()}
    for role, these in (("review", settings), ("summary", summary)):
        if these is None:
            continue
        try:
            with connect(these) as (client, info):
                if role == "review":
                    record[role] = self_test(client, info) if these.selftest else skipped_record(info, these.structured_output)
                else:
                    record[role] = text_self_test(client, info)
        except LLMUnavailable as exc:
            if these.on_unreachable == "fail":
                raise
            record[role] = {"passed": False, "model": these.model, "backend": these.backend, "error": str(exc)[:1000]}
    return record


def llm_review_units(units: list[dict[str, Any]], context: dict[str, Any], settings: LLMSettings, cache_dir: str | Path,
                     out_dir: Path, count_tolerance: float,
                     session: LLMSession | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Review units with the model; ``context[unit_id]`` holds rules review, metrics, summary, paths, expected range.

    ``session``: an open :func:`llm_session` to reuse; without one, a session is opened for these units.
    Returns (schema-shaped reviews in unit order, the run's LLM record: backend, model, self-test, scope).
    Raises :class:`LLMUnavailable` when no server can be used at all.
    """
    if session is None:
        with llm_session(settings, out_dir / "llm-server.log") as opened:
            return llm_review_units(units, context, settings, cache_dir, out_dir, count_tolerance, opened)
    import tifffile

    from ..core.blocks import is_large
    from ..core.channels import select_channels
    from ..core.images import read_unit
    from .instances import calibrated
    from ..core.rendering import large_view, scale_bar_um

    template = Path(settings.prompt).read_text(encoding="utf-8")
    schema = read_json(ANSWER_SCHEMA_PATH)
    cache = ReviewCache(cache_dir)
    selection = llm_selection([context[u["unit_id"]]["rules"] for u in units], settings)
    inputs = out_dir / INPUTS_FOLDER
    inputs.mkdir(parents=True, exist_ok=True)
    reviews = []
    info, checked, run = session.info, session.checked, dict(session.run)
    # 1. what each unit sends (read, render, prompt, cache key), in unit order; each request leaves as soon as
    #    its unit is ready, up to max_concurrency in flight; answers are matched to units, not to arrival order
    prepared: dict[str, dict[str, Any]] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, settings.max_concurrency))
    futures: dict[Any, str] = {}
    try:
        for unit in units:
            uid = unit["unit_id"]
            ctx = context[uid]
            if ctx.get("labels_path") is None or selection[uid] == "not_selected":
                continue
            pixel = calibrated((unit["pixel_size_um"]["y"], unit["pixel_size_um"]["x"]))
            if is_large(unit.get("shape")):  # the model sees a reduced view anyway: read it a block at a time
                image, edges, factor = large_view(unit, ctx["channels"], ctx["labels_path"], 512)
                images = review_images(image, None, pixel[1] * factor if pixel else None, settings.images_per_request, edges)
                field_shape = tuple(unit["shape"][-2:])
            else:
                image = select_channels(read_unit(unit["image_path"]), unit["channel_names"], ctx["channels"])[0]  # as imported
                labels = tifffile.imread(ctx["labels_path"])
                images = review_images(image, labels, pixel[1] if pixel else None, settings.images_per_request)
                field_shape = image.shape
            questions = "; ".join(f"({i + 1}) {q}" for i, q in enumerate(settings.questions)) or "(none)"
            prompt = render_prompt(template, unit_data(unit, ctx["metrics"], ctx["summary"], ctx["expected"], ctx["line"], ctx["rules"]),
                                   scale_bar_um=(f"{scale_bar_um(field_shape, pixel[1]):g} µm" if pixel else "none (image not calibrated; sizes in pixels)"), questions=questions,
                                   taxonomy=", ".join(schema["properties"]["issues"]["items"]["properties"]["type"]["enum"]))
            key = cache.key(images, prompt, info.backend, settings.model, info.model_id, settings.options, schema)
            sent = [f"{INPUTS_FOLDER}/{uid}.{i}.png" for i in range(len(images))]
            for name, data in zip(sent, images):
                (out_dir / name).write_bytes(data)
            (inputs / f"{uid}.prompt.txt").write_text(prompt, encoding="utf-8")
            prepared[uid] = {"prompt": prompt, "key": key, "cached": cache.get(key), "sent": sent}
            if prepared[uid]["cached"] is None:
                futures[pool.submit(ask_timed, session.client, prompt, images, schema)] = uid
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    # 2. every answer, or the first error that makes the server unusable (the requests not yet sent are cancelled)
    answers = collect_answers(futures, pool)
    # 3. checks and the review record, in unit order (the critique's re-segmentation is the refinement stage's)
    base_provenance = {"backend": info.backend, "endpoint": run["endpoint"], "server_version": info.server_version,
                       "model": settings.model, "model_id": info.model_id, "options": settings.options,
                       "structured_output": run["structured_output"], "selftest_passed_at": checked.get("checked_at"),
                       "prompt_file": settings.prompt, "prompt_version": prompt_version(settings.prompt),
                       "prompt_template_sha256": sha256(template)}
    if info.backend == "ollama":
        base_provenance["keep_alive"] = settings.keep_alive
    for unit in units:
        uid = unit["unit_id"]
        ctx = context[uid]
        rules = ctx["rules"]
        if selection[uid] == "not_selected":
            reviews.append(rules_only(rules, "rules_only", "not_selected",
                                      f"not sent to the LLM (review.llm.scope: {settings.scope}; the rules passed it)"))
            continue
        if uid not in prepared:  # nothing to look at: failed upstream
            reviews.append(rules_only(rules, "unreviewed", None, "not sent to the LLM"))
            continue
        job = prepared[uid]
        prompt, key, cached = job["prompt"], job["key"], job["cached"]
        provenance = {**base_provenance, "prompt_sha256": sha256(prompt), "cache_key": key, "cache_hit": cached is not None,
                      "sent_images": job["sent"], "sent_prompt": f"{INPUTS_FOLDER}/{uid}.prompt.txt"}
        if cached is not None:
            answer, attempts, errors = cached["answer"], 0, []
            provenance.update(answered_at=cached["answered_at"], attempts=cached["attempts"])
        else:
            started, answered, result, usage = answers[uid]
            provenance["usage"] = usage
            if warning := context_warning(usage, info.context_size):
                provenance["context_warning"] = warning
                run.setdefault("warnings", []).append(f"{uid}: {warning}")
                print(f"[review] {uid}: WARNING {warning}", file=sys.stderr)
            if isinstance(result, AnswerInvalid):
                print(f"[review] {uid}: unreviewed by the LLM: {result}", file=sys.stderr)
                record = rules_only(rules, "unreviewed", selection[uid],
                                    f"LLM answer invalid after {settings.retries + 1} attempts ({result}); rules only")
                record["reviewer"] = {**rules["reviewer"], "provenance": {**provenance, "errors": str(result)}}
                reviews.append(record)
                continue
            answer, attempts, errors = result
            cache.put(key, {"answer": answer, "answered_at": answered, "attempts": attempts, "provenance": provenance})
            provenance.update(started_at=started, answered_at=answered, attempts=attempts, failed_attempts=errors)
        write_json(inputs / f"{uid}.answer.json", answer)  # the model's own answer, before any check (fine-tuning export)
        provenance["answer"] = f"{INPUTS_FOLDER}/{uid}.answer.json"
        flags = check_claims(answer, rules, ctx["metrics"], ctx["summary"], count_tolerance)
        summary = ctx["summary"]
        verdict, issues = combine(rules, answer, flags)
        reviews.append({
            "unit_id": uid,
            "reviewer": {"backend": info.backend, "name": settings.model, "version": info.model_id.removeprefix("sha256:")[:12],
                         "uses_llm": True, "provenance": provenance},
            "status": "reviewed",
            "llm_selection": selection[uid],
            "verdict": verdict,
            "llm_verdict": answer["verdict"],
            "issues": issues,
            "count_check": {"segmented": (summary or {}).get("object_count"), "estimated": answer["estimated_count"],
                            "agrees": not any(f["check"] == "object count" for f in flags),
                            "comment": answer["critique"]["comment"][:500]},
            "critique": answer["critique"],
            "answers": fill_answers(answer, settings.questions),
            "suggested_actions": merged_actions(rules["suggested_actions"], answer["suggested_actions"]),
            "confidence": float(answer["confidence"]),
            "summary": answer["summary"][:2000],
            "flags": flags,
            "second_opinion": {"verdict": rules["verdict"], "issues": rules["issues"]},
        })
        print(f"[review] {uid}: {verdict} (LLM {answer['verdict']}, rules {rules['verdict']}, "
              f"{len(flags)} flag(s){', cached' if cached else ''})", file=sys.stderr)
    attempted = [r for r in reviews if r["unit_id"] in prepared]
    if settings.on_unreachable == "fail" and attempted and not any(r["status"] == "reviewed" for r in attempted):
        # the server answers, but nothing it said was usable: with on_unreachable: fail that is no success either
        raise LLMUnavailable(f"the LLM gave no valid answer for any of {len(attempted)} unit(s): {attempted[0]['summary'][:300]}")
    write_json(out_dir / "llm_run.json", run)
    return reviews, run


def fallback_reviews(rules_reviews: list[dict[str, Any]], reason: str) -> list[dict[str, Any]]:
    """Rule-based reviews labelled as the fallback for an unreachable LLM."""
    return [rules_only(r, "fallback", None, f"LLM reviewer unavailable ({reason[:300]}); rule-based review only") for r in rules_reviews]

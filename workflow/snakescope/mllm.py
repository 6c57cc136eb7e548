"""MLLM review with a local Ollama vision model: server, prompt, call, validation, cache, guardrails, refinement.

The deterministic reviewer (:mod:`snakescope.review`) always runs too: it is the second opinion the
model's claims are checked against, and the fallback when no server answers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import string
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

from .records import LABELS_SUFFIX, read_json, write_json

ANSWER_SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "mllm_answer.schema.json"
SEVERITY = {"pass": 0, "warn": 1, "fail": 2}
MIN_GAIN = 0.05  # a refinement must improve the score by this much to replace the original segmentation
DEFAULT_HOST = "127.0.0.1:11434"


class OllamaUnavailable(RuntimeError):
    """No Ollama server answers (or none could be started); the message says where and what to do."""


class ModelMissing(OllamaUnavailable):
    """The server answers but does not have the model; the message gives the `ollama pull` command."""


class AnswerInvalid(RuntimeError):
    """Every attempt gave an invalid, truncated or schema-violating answer."""


@dataclass(frozen=True)
class OllamaSettings:
    """Config section ``review.ollama`` (see config/README.md)."""

    host: str = ""
    model: str = "qwen2.5vl:7b"
    options: dict[str, Any] = field(default_factory=lambda: {"temperature": 0, "seed": 0, "num_ctx": 8192})
    keep_alive: str = "15m"
    timeout_s: float = 300.0
    retries: int = 2
    images_per_request: int = 1
    max_concurrency: int = 4  # requests in flight per review job (Ollama: OLLAMA_NUM_PARALLEL; vLLM batches many)
    server: str = "connect"
    on_unreachable: str = "fallback"
    pull: bool = False
    prompt: str = "config/prompts/review_v1.txt"
    summary_prompt: str = "config/prompts/summary_v1.txt"
    questions: tuple[str, ...] = ()
    refine: dict[str, Any] = field(default_factory=lambda: {"enabled": True, "max_iterations": 3,
                                                             "split_min_distance": [0.15, 1.5], "min_object_area_fraction": [0.05, 0.5]})

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> "OllamaSettings":
        values = dict(section)
        if "questions" in values:
            values["questions"] = tuple(values["questions"])
        if "refine" in values:
            values["refine"] = {**cls().refine, **values["refine"]}
        return cls(**values)


def normalise_host(host: str) -> str:
    """``host[:port]`` or a URL -> ``scheme://host:port`` (as the ollama client does: port 11434 unless a URL says otherwise)."""
    text = host.strip().rstrip("/") or DEFAULT_HOST
    default_port = 11434
    if "://" not in text:
        text = "http://" + text
    elif not urlsplit(text).port:
        default_port = {"http": 80, "https": 443}.get(urlsplit(text).scheme, 11434)
    parts = urlsplit(text)
    return f"{parts.scheme}://{parts.hostname or '127.0.0.1'}:{parts.port or default_port}{parts.path}"


def resolve_host(settings: OllamaSettings) -> str:
    """Config host, else ``$OLLAMA_HOST``, else 127.0.0.1:11434."""
    return normalise_host(settings.host or os.environ.get("OLLAMA_HOST", "") or DEFAULT_HOST)


def server_version(host: str, timeout: float = 3.0) -> str | None:
    """The server's version from ``GET /api/version``, or None when nothing answers."""
    import httpx

    try:
        response = httpx.get(f"{host}/api/version", timeout=timeout)
        response.raise_for_status()
        return str(response.json().get("version", "unknown"))
    except (httpx.HTTPError, ValueError):
        return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def ollama_server(settings: OllamaSettings, log_path: str | Path | None = None) -> Iterator[tuple[str, str]]:
    """Yield (host URL, server version) of a usable server.

    ``server: connect`` uses the server at the configured host. ``server: start`` uses it if it answers,
    else starts ``ollama serve`` on a free loopback port (with the caller's ``OLLAMA_MODELS``) for the
    duration of the block, and stops it after.
    """
    host = resolve_host(settings)
    version = server_version(host)
    if version is not None:
        yield host, version
        return
    if settings.server != "start":
        raise OllamaUnavailable(
            f"no Ollama server answers at {host} (config key review.ollama.host or $OLLAMA_HOST). "
            "Start one with `ollama serve`, or set review.ollama.server: start to start it inside the job")
    binary = shutil.which("ollama")
    if binary is None:
        raise OllamaUnavailable(f"no Ollama server answers at {host} and there is no `ollama` binary on PATH to start one "
                                "(review.ollama.server: start)")
    port = _free_port()
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}"}
    log = open(log_path or os.devnull, "ab")  # noqa: SIM115 - closed below
    process = subprocess.Popen([binary, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    local = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while (version := server_version(local, timeout=1.0)) is None:
            if process.poll() is not None or time.time() > deadline:
                raise OllamaUnavailable(f"`{binary} serve` on 127.0.0.1:{port} did not answer within 60 s "
                                        f"(exit code {process.poll()})")
            time.sleep(0.2)
        print(f"[ollama] started {binary} serve on 127.0.0.1:{port} (version {version})", file=sys.stderr)
        yield local, version
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def model_digest(client: Any, settings: OllamaSettings, host: str) -> str:
    """The model's digest from ``/api/tags``; pulls it only when ``review.ollama.pull`` is true."""
    wanted = {settings.model, f"{settings.model}:latest"} if ":" not in settings.model else {settings.model}
    for attempt in range(2):
        for entry in client.list().models:
            if entry.model in wanted:
                return str(entry.digest)
        if attempt == 0 and settings.pull:
            print(f"[ollama] pulling {settings.model} (review.ollama.pull: true)", file=sys.stderr)
            client.pull(settings.model)
            continue
        break
    raise ModelMissing(f"model {settings.model!r} is not on the Ollama server at {host} (config key review.ollama.model); "
                       f"run: OLLAMA_HOST={urlsplit(host).netloc} ollama pull {settings.model}")


# --- prompt ------------------------------------------------------------------------------------

def _sha256(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def data_block(data: dict[str, Any]) -> str:
    """JSON for the prompt's <data> block; '<' and '>' are escaped so text cannot close the block."""
    return json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False, default=str).replace("<", "\\u003c").replace(">", "\\u003e")


def render_prompt(template: str, data: dict[str, Any], **fields_: Any) -> str:
    """Fill a ``string.Template`` prompt: ``$data`` gets the delimited JSON, other fields their text."""
    return string.Template(template).substitute(data=data_block(data), **fields_)


def unit_data(unit: dict[str, Any], metrics: dict[str, float] | None, summary: dict[str, Any] | None,
              expected: dict[str, Any], line: str, rules_review: dict[str, Any]) -> dict[str, Any]:
    """What the model reads besides the image: metadata, metrics, counts, sizes, expected range."""
    keep = ("snr", "blur", "focus_laplacian", "percent_saturated", "foreground_fraction", "background", "noise", "max")
    return {
        "unit_id": unit["unit_id"],
        "file_name": Path(unit.get("source_path", "")).name,
        "scene": unit.get("scene_name"),
        "pixel_size_um": unit.get("pixel_size_um", {}).get("x"),
        "sample_sheet_metadata": unit.get("metadata", {}),
        "quality_metrics": {k: round(float(metrics[k]), 4) for k in keep if metrics and k in metrics},
        "segmentation": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in (summary or {}).items()},
        "expected_nucleus_diameter_um": {"cell_line": line, "min": expected.get("min"), "max": expected.get("max")},
        "rule_based_issues": [i["type"] for i in rules_review["issues"]],
    }


# --- the call ----------------------------------------------------------------------------------

def ask(client: Any, settings: OllamaSettings, prompt: str, images: list[bytes], schema: dict[str, Any] | None) -> tuple[Any, int, list[str]]:
    """Ask once plus ``retries`` times; returns (answer, attempts, errors of failed attempts).

    With a schema, the answer must parse as JSON and validate; otherwise it is the reply text.
    Raises :class:`ModelMissing` on 404, :class:`OllamaUnavailable` when the server cannot be reached
    on any attempt, :class:`AnswerInvalid` when every answer was invalid.
    """
    import httpx
    import jsonschema
    import ollama

    errors: list[str] = []
    transport_only = True
    for attempt in range(1, settings.retries + 2):
        message: dict[str, Any] = {"role": "user", "content": prompt}
        if images:
            message["images"] = images
        try:
            response = client.chat(model=settings.model, messages=[message], format=schema, options=settings.options,
                                   keep_alive=settings.keep_alive)
        except ollama.ResponseError as exc:
            if exc.status_code == 404:
                raise ModelMissing(f"model {settings.model!r}: {exc.error}; run: ollama pull {settings.model}") from exc
            transport_only = False
            errors.append(f"attempt {attempt}: HTTP {exc.status_code}: {exc.error}")
            continue
        except (ConnectionError, httpx.TransportError) as exc:
            errors.append(f"attempt {attempt}: {type(exc).__name__}: {exc}")
            continue
        transport_only = False
        content = response.message.content or ""
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
                          f"done_reason={response.done_reason})")
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
            errors.append(f"attempt {attempt}: answer violates the schema at {where}: {exc.message[:200]}")
    if transport_only:
        raise OllamaUnavailable("; ".join(errors))
    raise AnswerInvalid("; ".join(errors))


class ReviewCache:
    """Answers on disk, keyed by image content, prompt, model digest and options."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder) / "ollama-reviews"

    @staticmethod
    def key(images: list[bytes], prompt: str, model: str, digest: str, options: dict[str, Any], schema: Any) -> str:
        return _sha256(json.dumps({"images": [_sha256(i) for i in images], "prompt": _sha256(prompt), "model": model,
                                   "digest": digest, "options": options, "schema": _sha256(json.dumps(schema, sort_keys=True))},
                                  sort_keys=True))

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.folder / key[:2] / f"{key}.json"
        return read_json(path) if path.is_file() else None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        write_json(self.folder / key[:2] / f"{key}.json", entry)


# --- guardrails and the combined verdict ---------------------------------------------------------

def check_claims(answer: dict[str, Any], rules: dict[str, Any], metrics: dict[str, float] | None,
                 summary: dict[str, Any] | None, count_tolerance: float) -> list[dict[str, str]]:
    """Flags where the model's claims disagree with the measurements or the rule-based reviewer."""
    flags = []
    segmented = (summary or {}).get("object_count")
    estimated = answer["estimated_count"]
    if segmented is not None and abs(estimated - segmented) > max(2, count_tolerance * max(estimated, segmented)):
        flags.append({"check": "object count", "llm_says": f"{estimated} nuclei",
                      "numbers_say": f"{segmented} segmented objects (tolerance ±{count_tolerance:.0%} or 2)"})
    claimed = {i["type"] for i in answer["issues"]}
    measured = {i["type"]: i for i in rules["issues"]}
    metric_text = {
        "out_of_focus": lambda m: f"blur {m.get('blur', float('nan')):.2f} (0 sharp, 1 blurred)",
        "saturated": lambda m: f"{m.get('percent_saturated', float('nan')):.2f}% saturated pixels",
        "empty_field": lambda m: f"foreground fraction {m.get('foreground_fraction', float('nan')):.4f}",
        "low_signal": lambda m: f"SNR {m.get('snr', float('nan')):.1f}",
        "object_size_out_of_range": lambda m: f"median diameter {(summary or {}).get('diameter_um_median') or 0:.1f} µm",
    }
    for kind, describe in metric_text.items():
        says = describe(metrics or {})
        if kind in claimed and kind not in measured:
            flags.append({"check": kind, "llm_says": f"reports {kind}", "numbers_say": f"{says}: within thresholds"})
        elif kind in measured and kind not in claimed:
            flags.append({"check": kind, "llm_says": f"does not report {kind}", "numbers_say": measured[kind]["evidence"]})
    if abs(SEVERITY[answer["verdict"]] - SEVERITY[rules["verdict"]]) == 2:  # pass vs fail
        flags.append({"check": "verdict", "llm_says": answer["verdict"], "numbers_say": f"rule-based verdict {rules['verdict']}"})
    return flags


def combine(rules: dict[str, Any], answer: dict[str, Any], flags: list[dict[str, str]]) -> tuple[str, list[dict[str, str]]]:
    """Final verdict and issues. Rule (documented in config/README.md): the worse of the two verdicts;
    a 'pass' with any disagreement flag becomes 'warn'. Issues are the union, the more severe kept per type."""
    verdict = max(rules["verdict"], answer["verdict"], key=SEVERITY.__getitem__)
    if flags and verdict == "pass":
        verdict = "warn"
    issues: dict[str, dict[str, str]] = {}
    for source, items in (("metrics", rules["issues"]), ("LLM", answer["issues"])):
        for issue in items:
            tagged = {**issue, "evidence": f"{source}: {issue['evidence']}"[:500]}
            current = issues.get(issue["type"])
            if current is None or SEVERITY[issue["severity"]] > SEVERITY[current["severity"]]:
                issues[issue["type"]] = tagged
    return verdict, list(issues.values())


# --- critique that acts --------------------------------------------------------------------------

def refinement_direction(answer: dict[str, Any], summary: dict[str, Any] | None) -> int:
    """+1: split more, -1: split less, 0: leave the segmentation alone.

    Acts only when the critique names the problem (merged or split objects, or an under/over-segmentation
    issue) *and* the model's count points the same way. A count disagreement alone is flagged, not acted
    on: vision models miscount crowded fields, and the refinement must not chase a wrong count.
    """
    segmented = (summary or {}).get("object_count") or 0
    estimated = answer["estimated_count"]
    critique = answer["critique"]
    claimed = {i["type"] for i in answer["issues"]}
    if (critique["merged"] > 0 or "under_segmentation" in claimed) and estimated > segmented:
        return 1
    if (critique["split"] > 0 or "over_segmentation" in claimed) and estimated < segmented:
        return -1
    return 0


def refine_segmentation(probability: Any, intensity: Any, pixel: tuple[float, float], base: Any, target: int,
                        expected: dict[str, Any], refine: dict[str, Any], direction: int, unit_id: str) -> dict[str, Any]:
    """Bounded search over post-processing settings towards the model's count estimate.

    Each attempt changes ``split_min_distance`` (x0.6 to split more, x1.5 to split less; within
    ``refine.split_min_distance``) and, when splitting less, raises ``min_object_area_fraction`` (within its
    range). Score (lower is better): relative count error to the model's estimate, plus the fraction of
    objects outside the expected diameter range, plus the fraction of non-convex objects (solidity < 0.9,
    the shape of merged nuclei). The model's count alone is not trusted: a change must also keep the
    objects plausible, and must beat the original by MIN_GAIN. Returns every attempt and the best.
    """
    from .segmentation import segment_unit

    lo_p, hi_p = refine["split_min_distance"]
    lo_a, hi_a = refine["min_object_area_fraction"]

    def score(objects: list[dict[str, Any]]) -> float:
        n = len(objects)
        if not n:
            return abs(n - target) / max(target, 1) + 2.0
        sized = [o["equivalent_diameter_um"] for o in objects if o["equivalent_diameter_um"] is not None]
        outside = sum(not expected["min"] <= d <= expected["max"] for d in sized) / n  # uncalibrated: not checked
        merged_looking = sum(o["solidity"] < 0.9 for o in objects) / n  # two touching nuclei make a non-convex object
        return abs(n - target) / max(target, 1) + outside + merged_looking

    settings = base
    labels, objects, summary = segment_unit(probability, intensity, pixel, settings, unit_id)
    attempts = [{"settings": asdict(settings), "object_count": len(objects), "score": round(score(objects), 4)}]
    best = (attempts[0]["score"], settings, labels, objects, summary)
    for _ in range(int(refine["max_iterations"])):
        if direction > 0:
            new_p = max(lo_p, round(settings.split_min_distance * 0.6, 4))
            settings = replace(settings, split_touching=True, split_min_distance=new_p)
        else:
            new_p = min(hi_p, round(settings.split_min_distance * 1.5, 4))
            settings = replace(settings, split_min_distance=new_p,
                               min_object_area_fraction=min(hi_a, max(lo_a, round(settings.min_object_area_fraction * 1.5, 4))))
        if asdict(settings) == attempts[-1]["settings"]:
            break  # at the bound
        labels, objects, summary = segment_unit(probability, intensity, pixel, settings, unit_id)
        attempts.append({"settings": asdict(settings), "object_count": len(objects), "score": round(score(objects), 4)})
        if attempts[-1]["score"] < best[0] - MIN_GAIN:
            best = (attempts[-1]["score"], settings, labels, objects, summary)
    return {"attempts": attempts, "best_settings": asdict(best[1]), "labels": best[2], "objects": best[3], "summary": best[4],
            "improved": best[1] != base, "target_count": target}


# --- batch --------------------------------------------------------------------------------------

def prompt_version(path: str | Path) -> str:
    return Path(path).stem


def review_images(image: Any, labels: Any, pixel_um: float, per_request: int) -> list[bytes]:
    """PNG bytes the model sees: one two-panel image (raw | outlines), or the two panels separately."""
    from .rendering import overlay_png, png_bytes, rgb_panel

    if per_request >= 2:
        return [png_bytes(rgb_panel(image, None, pixel_um, 512)), png_bytes(rgb_panel(image, labels, pixel_um, 512))]
    return [overlay_png(image, labels, pixel_um)]


def fill_answers(answer: dict[str, Any], questions: tuple[str, ...]) -> list[dict[str, str]]:
    """One answer per configured question, in order; a question the model skipped is 'unsure'."""
    given = {a["question"].strip().lower(): a for a in answer.get("answers", [])}
    out = []
    for index, question in enumerate(questions):
        match = given.get(question.strip().lower())
        if match is None and index < len(answer.get("answers", [])):
            match = answer["answers"][index]
        out.append({"question": question, "answer": match["answer"] if match else "unsure",
                    "evidence": (match["evidence"] if match else "not answered by the model")[:500]})
    return out


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def llm_review_units(units: list[dict[str, Any]], context: dict[str, Any], settings: OllamaSettings, cache_dir: str | Path,
                     out_dir: Path, postprocess: Any, count_tolerance: float) -> list[dict[str, Any]]:
    """Review units with the model; `context[unit_id]` holds rules review, metrics, summary, paths, expected range.

    Returns schema-shaped reviews. Raises OllamaUnavailable when no server can be used at all.
    """
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import ollama
    import tifffile

    from .acquisition import read_unit
    from .inference import select_channels
    from .rendering import overlay_png, scale_bar_um
    from .segmentation import OBJECT_COLUMNS, calibrated, write_labels

    template = Path(settings.prompt).read_text(encoding="utf-8")
    schema = read_json(ANSWER_SCHEMA_PATH)
    cache = ReviewCache(cache_dir)
    reviews = []
    refined_rows: list[dict[str, Any]] = []
    with ollama_server(settings, out_dir / "ollama-serve.log") as (host, version):
        client = ollama.Client(host=host, timeout=settings.timeout_s)
        digest = model_digest(client, settings, host)
        # 1. what each unit sends (read, render, prompt, cache key), in unit order; each request leaves as soon as
        #    its unit is ready, up to max_concurrency in flight; answers are matched to units, not to arrival order
        prepared: dict[str, dict[str, Any]] = {}
        pool = ThreadPoolExecutor(max_workers=max(1, settings.max_concurrency))
        futures: dict[Any, str] = {}
        try:
            for unit in units:
                ctx = context[unit["unit_id"]]
                if ctx.get("labels_path") is None:
                    continue
                pixel = calibrated((unit["pixel_size_um"]["y"], unit["pixel_size_um"]["x"]))
                image = select_channels(read_unit(unit["image_path"]), unit["channel_names"], ctx["channels"])[0]
                labels = tifffile.imread(ctx["labels_path"])
                images = review_images(image, labels, pixel[1] if pixel else None, settings.images_per_request)
                questions = "; ".join(f"({i + 1}) {q}" for i, q in enumerate(settings.questions)) or "(none)"
                prompt = render_prompt(template, unit_data(unit, ctx["metrics"], ctx["summary"], ctx["expected"], ctx["line"], ctx["rules"]),
                                       scale_bar_um=(f"{scale_bar_um(image.shape, pixel[1]):g} µm" if pixel else "none (image not calibrated; sizes in pixels)"), questions=questions,
                                       taxonomy=", ".join(schema["properties"]["issues"]["items"]["properties"]["type"]["enum"]))
                key = cache.key(images, prompt, settings.model, digest, settings.options, schema)
                prepared[unit["unit_id"]] = {"pixel": pixel, "image": image, "prompt": prompt, "key": key, "cached": cache.get(key)}
                if prepared[unit["unit_id"]]["cached"] is None:
                    futures[pool.submit(ask_timed, client, settings, prompt, images, schema)] = unit["unit_id"]
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        # 2. every answer, or the first error that makes the server unusable (the requests not yet sent are cancelled)
        answers = collect_answers(futures, pool)
        # 3. checks, refinement and the review record, in unit order
        base_provenance = {"model": settings.model, "model_digest": digest, "ollama_version": version, "host": host,
                           "options": settings.options, "keep_alive": settings.keep_alive,
                           "prompt_file": settings.prompt, "prompt_version": prompt_version(settings.prompt),
                           "prompt_template_sha256": _sha256(template)}
        for unit in units:
            ctx = context[unit["unit_id"]]
            rules = ctx["rules"]
            if unit["unit_id"] not in prepared:  # nothing to look at: failed upstream
                reviews.append({**rules, "status": "unreviewed", "second_opinion": {"verdict": rules["verdict"], "issues": rules["issues"]},
                                "summary": f"not sent to the LLM: {rules['summary']}"})
                continue
            job = prepared[unit["unit_id"]]
            pixel, image, prompt, key, cached = job["pixel"], job["image"], job["prompt"], job["key"], job["cached"]
            provenance = {**base_provenance, "prompt_sha256": _sha256(prompt), "cache_key": key, "cache_hit": cached is not None}
            if cached is not None:
                answer, attempts, errors = cached["answer"], 0, []
                provenance.update(answered_at=cached["answered_at"], attempts=cached["attempts"])
            else:
                started, answered, result = answers[unit["unit_id"]]
                try:
                    if isinstance(result, Exception):
                        raise result
                    answer, attempts, errors = result
                except AnswerInvalid as exc:
                    print(f"[review] {unit['unit_id']}: unreviewed by the LLM: {exc}", file=sys.stderr)
                    reviews.append({**rules, "status": "unreviewed",
                                    "reviewer": {**rules["reviewer"], "provenance": {**provenance, "errors": str(exc)}},
                                    "second_opinion": {"verdict": rules["verdict"], "issues": rules["issues"]},
                                    "summary": f"LLM answer invalid after {settings.retries + 1} attempts ({exc}); rules only: {rules['summary']}"[:2000]})
                    continue
                cache.put(key, {"answer": answer, "answered_at": answered, "attempts": attempts, "provenance": provenance})
                provenance.update(started_at=started, answered_at=answered, attempts=attempts, failed_attempts=errors)
            flags = check_claims(answer, rules, ctx["metrics"], ctx["summary"], count_tolerance)
            refinement: dict[str, Any] = {"applied": False}
            summary = ctx["summary"]
            direction = refinement_direction(answer, summary)
            if settings.refine.get("enabled", True) and direction and ctx.get("probability_path"):
                probability = np.load(ctx["probability_path"]).astype(np.float32)
                result = refine_segmentation(probability, image, pixel, postprocess, answer["estimated_count"], ctx["expected"],
                                             settings.refine, direction, unit["unit_id"])
                refinement = {"applied": result["improved"], "direction": "split more" if direction > 0 else "split less",
                              "target_count": result["target_count"], "attempts": result["attempts"],
                              "best_settings": result["best_settings"]}
                if result["improved"]:
                    summary = result["summary"]
                    refinement["summary"] = summary
                    write_labels(out_dir / f"{unit['unit_id']}{LABELS_SUFFIX}", result["labels"], unit)
                    (out_dir / f"{unit['unit_id']}.overlay.png").write_bytes(overlay_png(image, result["labels"], pixel[1] if pixel else None))
                    refined_rows.extend(result["objects"])
                    flags = check_claims(answer, rules, ctx["metrics"], summary, count_tolerance)
            verdict, issues = combine(rules, answer, flags)
            reviews.append({
                "unit_id": unit["unit_id"],
                "reviewer": {"backend": "ollama", "name": settings.model, "version": digest[:12], "uses_llm": True,
                             "provenance": provenance},
                "status": "reviewed",
                "verdict": verdict,
                "llm_verdict": answer["verdict"],
                "issues": issues,
                "count_check": {"segmented": (summary or {}).get("object_count"), "estimated": answer["estimated_count"],
                                "agrees": not any(f["check"] == "object count" for f in flags),
                                "comment": answer["critique"]["comment"][:500]},
                "critique": answer["critique"],
                "answers": fill_answers(answer, settings.questions),
                "suggested_actions": answer["suggested_actions"] or rules["suggested_actions"],
                "confidence": float(answer["confidence"]),
                "summary": answer["summary"][:2000],
                "flags": flags,
                "second_opinion": {"verdict": rules["verdict"], "issues": rules["issues"]},
                "refinement": refinement,
            })
            print(f"[review] {unit['unit_id']}: {verdict} (LLM {answer['verdict']}, rules {rules['verdict']}, "
                  f"{len(flags)} flag(s){', cached' if cached else ''})", file=sys.stderr)
    attempted = [r for r in reviews if r["unit_id"] in prepared]
    if settings.on_unreachable == "fail" and attempted and not any(r["status"] == "reviewed" for r in attempted):
        # the server answers, but nothing it said was usable: with on_unreachable: fail that is no success either
        raise OllamaUnavailable(f"the LLM gave no valid answer for any of {len(attempted)} unit(s): {attempted[0]['summary'][:300]}")
    import csv

    with open(out_dir / "refined_objects.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=OBJECT_COLUMNS)
        writer.writeheader()
        writer.writerows(refined_rows)
    return reviews


def ask_timed(client: Any, settings: OllamaSettings, prompt: str, images: list[bytes],
              schema: dict[str, Any] | None) -> tuple[str, str, Any]:
    """:func:`ask` in a worker thread: (started_at, answered_at, (answer, attempts, errors) or the AnswerInvalid)."""
    started = now()
    try:
        result: Any = ask(client, settings, prompt, images, schema)
    except AnswerInvalid as exc:
        result = exc
    return started, now(), result


def collect_answers(futures: dict[Any, str], pool: Any) -> dict[str, tuple[str, str, Any]]:
    """{unit_id: ask_timed's result} once all are in. A server that cannot be used at all (:class:`OllamaUnavailable`,
    :class:`ModelMissing`) stops the batch: the requests not yet sent are cancelled and the first such error raised."""
    from concurrent.futures import FIRST_EXCEPTION, wait

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


def fallback_reviews(rules_reviews: list[dict[str, Any]], reason: str) -> list[dict[str, Any]]:
    """Rule-based reviews labelled as the fallback for an unreachable LLM."""
    return [{**r, "status": "fallback", "summary": f"LLM reviewer unavailable ({reason[:300]}); rule-based review only: {r['summary']}"[:2000]}
            for r in rules_reviews]


# --- run summary ---------------------------------------------------------------------------------

NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:[.,]\d+)?(?![\w])")


def numeric_leaves(data: Any) -> list[float]:
    if isinstance(data, bool):
        return []
    if isinstance(data, (int, float)):
        return [float(data)]
    if isinstance(data, dict):
        return [v for value in data.values() for v in numeric_leaves(value)]
    if isinstance(data, (list, tuple)):
        return [v for value in data for v in numeric_leaves(value)]
    return []


def check_numbers(text: str, data: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(numbers found in ``data``, numbers not found). A quoted number matches a value of the data rounded
    to the quoted precision (so 12.3 matches 12.28); percentages are checked like any number."""
    allowed = numeric_leaves(data)
    checked, mismatched = [], []
    for match in NUMBER.finditer(text):
        token = match.group(0).replace(",", ".")
        value = float(token)
        decimals = len(token.split(".")[1]) if "." in token else 0
        ok = any(round(a, decimals) == round(value, decimals) or (decimals == 0 and round(a) == value) for a in allowed)
        (checked if ok else mismatched).append(match.group(0))
    return checked, mismatched


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


def write_run_summary(aggregates: dict[str, Any], backend: str, settings: OllamaSettings | None, cache_dir: str | Path,
                      out_path: str | Path, on_unreachable: str = "fallback") -> dict[str, Any]:
    """The dataset's narrative: written by the LLM (text-only call) or the rule template, numbers checked."""
    import ollama

    record: dict[str, Any] = {"backend": "deterministic", "uses_llm": False, "data": aggregates}
    text = None
    if backend == "ollama" and settings is not None:
        template = Path(settings.summary_prompt).read_text(encoding="utf-8")
        prompt = render_prompt(template, aggregates)
        try:
            with ollama_server(settings) as (host, version):
                client = ollama.Client(host=host, timeout=settings.timeout_s)
                digest = model_digest(client, settings, host)
                cache = ReviewCache(cache_dir)
                key = cache.key([], prompt, settings.model, digest, settings.options, None)
                cached = cache.get(key)
                text = cached["answer"] if cached else ask(client, settings, prompt, [], None)[0]
                if not cached:
                    cache.put(key, {"answer": text, "answered_at": now(), "attempts": 1})
                record.update(backend="ollama", uses_llm=True, provenance={
                    "model": settings.model, "model_digest": digest, "ollama_version": version, "options": settings.options,
                    "prompt_file": settings.summary_prompt, "prompt_version": prompt_version(settings.summary_prompt),
                    "prompt_sha256": _sha256(prompt), "cache_hit": cached is not None})
        except (OllamaUnavailable, AnswerInvalid) as exc:
            if on_unreachable == "fail":
                raise
            record["llm_error"] = str(exc)[:500]
    if text is None:
        text = rules_summary(aggregates)
    checked, mismatched = check_numbers(text, aggregates)
    record.update(text=text, numbers_checked=checked, numbers_mismatched=mismatched)
    write_json(out_path, record)
    return record

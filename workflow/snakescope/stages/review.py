"""Stage 5, review: a deterministic reviewer (no LLM) over quality metrics, measurements and expected ranges.

It writes the same schema-validated JSON shape as the LLM reviewer, so either can feed the report.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..llm.settings import BACKENDS as LLM_BACKENDS  # review.backend values where a vision model reviews
from ..core.channels import model_channel_name
from ..core.knowledge import expected_diameter, load_knowledge_base
from ..core.settings import RELATIVE_CHECKS, ReviewThresholds
from ..core.records import LABELS_SUFFIX, read_json, write_json
from ..core.layout import schema_path

SCHEMA_PATH = schema_path("review")


def load_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    return read_json(path)


_VALIDATORS: dict[str, Any] = {}


def validate_review(review: dict[str, Any], schema: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` if a review does not match the schema (the schema is checked once,
    not per review: that check cost 80 ms a review)."""
    import json

    import jsonschema

    key = json.dumps(schema, sort_keys=True)
    if key not in _VALIDATORS:
        jsonschema.Draft202012Validator.check_schema(schema)
        _VALIDATORS[key] = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(_VALIDATORS[key].iter_errors(review))
    if error is not None:
        raise error


def _issue(kind: str, severity: str, evidence: str) -> dict[str, str]:
    return {"type": kind, "severity": severity, "evidence": evidence}


def relative_position(metric: str, value: float, reference: dict[str, Any] | None) -> float | None:
    """Robust z-score of ``value`` against the run's own fields: (value - median) / (1.4826 MAD)."""
    if not reference or metric not in reference or metric not in RELATIVE_CHECKS:
        return None
    ref = reference[metric]
    transform, _, floor = RELATIVE_CHECKS[metric]
    if transform == "log":
        if value <= 0:
            return None
        value = float(np.log(value))
    return (value - ref["median"]) / max(ref["mad"], floor)


def _relative_text(metric: str, value: float, reference: dict[str, Any] | None) -> str:
    z = relative_position(metric, value, reference)
    if z is None:
        return ""
    side = "below" if z < 0 else "above"
    scope = reference[metric].get("scope", "this run")
    return f"; {abs(z):.1f} MAD {side} the median of {scope} ({reference[metric]['n']} fields)"


def no_data(m: dict[str, float], t: ReviewThresholds, objects: int | None = None) -> str | None:
    """Why a field holds no image data (the evidence of a ``no_data`` issue), or None: mostly NaN/inf pixels, or
    one value nearly everywhere (98 % of the pixels or more, the 1st and 99th percentiles equal) with no object
    segmented, as a blank or stuck camera frame gives. Real fields with a black background (up to 86 % of the pixels
    at zero in DSB2018) and sparse fields with nuclei stay ``empty_field`` or pass."""
    bad = m.get("percent_non_finite") or 0.0
    if bad >= t.no_data_percent:
        return f"{bad:.1f}% of the pixels are NaN or infinite (no_data_percent {t.no_data_percent:g}): no image to measure"
    if "max" in m and "min" in m and m["max"] <= m["min"]:
        return f"every pixel has the value {m['max']:g}: a constant frame holds no image"
    if "p99" in m and "p01" in m and m["p99"] <= m["p01"] and not objects:
        return (f"at least 98% of the pixels have the value {m['median']:g} (1st and 99th percentiles equal) and no object "
                "was segmented: a blank or stuck frame")
    return None


def quality_issues(m: dict[str, float], t: ReviewThresholds, reference: dict[str, Any] | None = None,
                   objects: int | None = None) -> list[dict[str, str]]:
    """Issues that follow from one channel's quality metrics; each check stands on its own.

    Absolute limits (calibrated on real fields) decide; a field that is an extreme outlier of its own
    run (``outlier_mad`` robust SDs on the bad side, for SNR and blur) is flagged too. The evidence
    gives both the value and its place in the run. ``objects``: how many objects the segmentation kept (after
    its contrast test, which removes the noise a model finds in an empty field). A field with little foreground
    fails as empty only when none were kept; with some it is a warning to look at: a few real nuclei in a large
    field (a cytotoxic well on a 2048² camera: eight BBBC039-sized nuclei are 0.2 % of it) are a result to keep,
    a speck of debris alone is not, and the numbers cannot tell them apart.
    """
    missing = no_data(m, t, objects)
    if missing:
        return [_issue("no_data", "fail", missing)]  # nothing else can be measured on it
    issues = []
    clipped = m["percent_saturated"] >= t.saturated_percent_warn
    blur = m.get("blur")
    blur_z = relative_position("blur", blur, reference) if blur is not None and np.isfinite(blur) else None
    blurred = blur is not None and np.isfinite(blur) and (blur >= t.blur_warn or (blur_z is not None and blur_z >= t.outlier_mad))
    snr_z = relative_position("snr", m["snr"], reference)
    # defocus spreads the signal, so a blurred field is dimmer than its run: only the absolute limit counts then
    dim = m["snr"] < t.snr_warn or (snr_z is not None and snr_z <= -t.outlier_mad and not blurred)
    # one account per field: a clipped field is neither empty (its clipped pixels are signal the foreground test can
    # miss) nor dim (clipping lowers the measured SNR; more exposure would make it worse); a field whose few objects
    # are dim is dim, not empty
    if m["foreground_fraction"] <= t.empty_foreground_fraction and not clipped:
        evidence = f"foreground fraction {m['foreground_fraction']:.4f} <= {t.empty_foreground_fraction}"
        if not objects:
            issues.append(_issue("empty_field", "fail", evidence + ("; no object with nucleus contrast segmented" if objects == 0 else "")))
            return issues  # signal, focus and saturation are meaningless on an empty field
        if not dim:
            issues.append(_issue("empty_field", "warn", f"{evidence}, but {objects} object(s) with nucleus contrast were segmented: "
                                                        "a few cells (keep them: e.g. a cytotoxic well) or debris; look before excluding it"))
    if clipped:
        sev = "fail" if m["percent_saturated"] >= t.saturated_percent_fail else "warn"
        issues.append(_issue("saturated", sev, f"{m['percent_saturated']:.2f}% of pixels at the maximum value {m['max']:.0f} "
                                                f"(warn >= {t.saturated_percent_warn}%, fail >= {t.saturated_percent_fail}%)"
                                                + (f"; its signal-to-noise ({m['snr']:.1f}) is not measured reliably on clipped "
                                                   "pixels" if dim else "")))
    elif dim:
        sev = "fail" if m["snr"] < t.snr_fail else "warn"
        issues.append(_issue("low_signal", sev, f"signal-to-noise {m['snr']:.1f} (warn < {t.snr_warn:g}, fail < {t.snr_fail:g})"
                                                + _relative_text("snr", m["snr"], reference)))
    if blurred:
        sev = "fail" if blur >= t.blur_fail else "warn"
        issues.append(_issue("out_of_focus", sev, f"blur {blur:.2f} (0 sharp, 1 blurred; warn >= {t.blur_warn:g}, "
                                                  f"fail >= {t.blur_fail:g})" + _relative_text("blur", blur, reference)))
    return issues


def segmentation_issues(summary: dict[str, Any], diameters: list[float], expected: dict[str, Any], t: ReviewThresholds) -> list[dict[str, str]]:
    """Issues that follow from the objects.

    Merged nuclei: objects of more than twice the field's median object area, or non-convex ones
    (relative to the field itself, so it works at any magnification and without calibration).
    Sizes against the knowledge base's expected range only when the unit is calibrated.
    """
    issues = []
    count = summary.get("object_count") or 0
    if count == 0:
        return issues
    large = summary.get("fraction_large") or 0.0
    low_solidity = summary.get("fraction_low_solidity") or 0.0
    lo, hi = float(expected["min"]), float(expected["max"])
    too_big = sum(d > hi for d in diameters) / count if diameters else 0.0
    too_small = sum(d < lo for d in diameters) / count if diameters else 0.0
    if diameters and too_big + too_small >= t.size_out_of_range_fraction:
        issues.append(_issue("object_size_out_of_range", "warn",
                             f"{100 * (too_big + too_small):.0f}% of {count} objects outside {lo:g}-{hi:g} µm (median {summary['diameter_um_median']:.1f} µm)"))
    if large >= t.large_object_fraction or low_solidity >= t.low_solidity_fraction:
        issues.append(_issue("under_segmentation", "warn",
                             f"{100 * large:.0f}% of objects over twice the field's median object area, {100 * low_solidity:.0f}% non-convex "
                             f"(solidity < 0.85): touching nuclei may be merged"))
    if too_small >= t.size_out_of_range_fraction:
        issues.append(_issue("over_segmentation", "warn", f"{100 * too_small:.0f}% of objects smaller than {lo:g} µm: nuclei may be split or debris counted"))
    return issues


ACTIONS = {
    "out_of_focus": ("refocus", "re-run autofocus or check the focus offset, then re-acquire"),
    "saturated": ("reduce_exposure", "lower exposure time or gain until no pixel reaches the maximum"),
    "low_signal": ("increase_exposure", "increase exposure or excitation, or check the staining"),
    "empty_field": ("skip_field", "no cells in this field; skip it or move to a field with cells"),
    "no_data": ("reacquire", "the field holds no image data (a blank, stuck or NaN frame): check the camera and light path, then re-acquire"),
    "under_segmentation": ("adjust_segmentation", "lower postprocess.split_min_distance to split touching nuclei"),
    "over_segmentation": ("adjust_segmentation", "raise postprocess.split_min_distance or min_object_area_fraction"),
    "object_size_out_of_range": ("check_sample", "check pixel size metadata, magnification and cell line"),
}


def review_unit(unit: dict[str, Any], metrics: dict[str, float] | None, summary: dict[str, Any] | None, diameters: list[float],
                knowledge_base: dict[str, Any], thresholds: ReviewThresholds, cell_line_column: str = "cell_line",
                failure: str | None = None, reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """Review one unit by fixed rules; the result follows ``review.schema.json``.

    ``reference``: the run's median and MAD of the model channel's metrics (:func:`run_reference`).
    """
    issues: list[dict[str, str]] = []
    if failure:
        issues.append(_issue("processing_failed", "fail", failure))
    if metrics is not None:
        issues += quality_issues(metrics, thresholds, reference, summary.get("object_count") if summary else None)
    line, expected = expected_diameter(unit.get("metadata", {}), knowledge_base, cell_line_column)
    # the objects of an empty, very dim or blurred field say nothing about the sample or the segmentation
    if summary is not None and not any((i["type"] in ("empty_field", "low_signal") and i["severity"] == "fail")
                                       or i["type"] in ("out_of_focus", "no_data") for i in issues):
        issues += segmentation_issues(summary, diameters, expected, thresholds)
    severities = {i["severity"] for i in issues}
    verdict = "fail" if "fail" in severities else "warn" if issues else "pass"
    actions = []
    for issue in issues:
        if issue["type"] == "empty_field" and issue["severity"] == "warn":
            continue  # a field with a few cells: not for skipping unasked
        if issue["type"] in ACTIONS and ACTIONS[issue["type"]][0] not in [a["action"] for a in actions]:
            action, detail = ACTIONS[issue["type"]]
            actions.append({"action": action, "detail": detail, "decided_by": "measurements"})
    count = summary.get("object_count") if summary else None
    if summary and summary.get("length_unit") == "px":
        line = f"{line} (not checked: the image has no pixel size, sizes are in pixels)"
    described = ", ".join(f"{i['type']} ({i['severity']})" for i in issues) or "no issues"
    return {
        "unit_id": unit["unit_id"],
        "reviewer": {"backend": "deterministic", "name": "snakescope rules", "version": __version__, "uses_llm": False,
                     "provenance": {"thresholds": thresholds.__dict__, "cell_line": line, "expected_diameter_um": expected}},
        "verdict": verdict,
        "issues": issues,
        "count_check": {"segmented": count, "estimated": None, "agrees": None,
                        "comment": "rule-based review: no independent count estimate (needs the MLLM reviewer)"},
        "suggested_actions": actions or [{"action": "none", "detail": "no action needed", "decided_by": "measurements"}],
        "confidence": 1.0 if not issues else 0.8,
        "summary": f"{verdict}: {described}; {count if count is not None else 'no'} objects segmented; expected nucleus diameter for {line}: {expected['min']}-{expected['max']} µm.",
    }


def review_one(unit: dict[str, Any], metrics: dict[str, float] | None, summary: dict[str, Any] | None, diameters: list[float],
               knowledge_base: dict[str, Any], thresholds: ReviewThresholds, cell_line_column: str, failure: str | None,
               reference: dict[str, Any] | None, labels_path: Path, channels: tuple[str | int, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """One unit's rule-based review, and what the vision model's review of it needs (its context for
    :func:`.llm_review.llm_review_units`): the review stage and watch mode both review a field through here."""
    review = review_unit(unit, metrics, summary, diameters, knowledge_base, thresholds, cell_line_column, failure, reference)
    line, expected = expected_diameter(unit.get("metadata", {}), knowledge_base, cell_line_column)
    labels = labels_path if labels_path.is_file() and not failure else None
    return review, {"rules": review, "metrics": metrics, "summary": summary, "expected": expected, "line": line,
                    "channels": channels, "labels_path": labels}


def review_batch(import_manifest: str | Path, quality_json: str | Path, inference_manifest: str | Path,
                 postprocess_dir: str | Path, knowledge_base_path: str | Path, settings: dict[str, Any],
                 channels: tuple[str | int, ...], out_dir: str | Path, schema_path: str | Path = SCHEMA_PATH,
                 cache_dir: str | Path = ".snakescope-cache", reference_path: str | Path | None = None,
                 llm_check: dict[str, Any] | None = None) -> dict[str, Any]:
    """Review every imported unit of a batch (failed ones included, as failed); validate each review.

    The rule-based review always runs. With an LLM backend (``ollama``, ``openai``) the vision model reviews too, its claims
    checked against the rules and the numbers; when no server can be used the rule-based reviews are
    written, labelled as the fallback (or the job fails, with ``on_unreachable: fail``). ``llm_check``: the run's
    self-test record (rule ``llm_check``); with it the server is contacted only for answers not in the cache, and a
    failed self-test means the fallback at once. Without it the job connects and self-tests itself.
    """
    import csv

    imported = read_json(import_manifest)
    quality = read_json(quality_json)
    inference = read_json(inference_manifest)
    post = read_json(Path(postprocess_dir) / "summary.json")
    knowledge_base = load_knowledge_base(knowledge_base_path)
    thresholds = ReviewThresholds.from_config(settings.get("thresholds", {}))
    schema = load_schema(schema_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    diameters: dict[str, list[float]] = {}
    with open(Path(postprocess_dir) / "objects.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["equivalent_diameter_um"] not in ("", None):  # uncalibrated: sizes in pixels only
                diameters.setdefault(row["unit_id"], []).append(float(row["equivalent_diameter_um"]))
    failed = {f["unit_id"]: f"{f['stage']}: {f['reason']}" for f in quality["failures"] + inference["failures"] + post["failures"]}
    column = settings.get("cell_line_column", "cell_line")
    references = read_json(reference_path) if reference_path else {}
    rules_reviews, context = [], {}
    for unit in imported["units"]:
        uid = unit["unit_id"]
        channel = model_channel_name(unit, channels)
        metrics = quality["metrics"].get(uid, {}).get(channel)
        summary = post["summaries"].get(uid)
        reference = unit_reference(references, unit.get("metadata", {}).get(references.get("plate_column", "")), channel)
        review, context[uid] = review_one(unit, metrics, summary, diameters.get(uid, []), knowledge_base, thresholds, column,
                                          failed.get(uid), reference, Path(postprocess_dir) / f"{uid}{LABELS_SUFFIX}", channels)
        rules_reviews.append(review)
    doc: dict[str, Any] = {"batch": imported["batch"], "backend": "deterministic", "uses_llm": False}
    reviews = rules_reviews
    if settings.get("backend", "deterministic") in LLM_BACKENDS:
        from ..methods.llm_review import fallback_reviews, llm_review_units, llm_session
        from ..llm.settings import LLMSettings, LLMUnavailable

        llm = LLMSettings.from_config(settings.get("llm", {}), settings["backend"])
        checked = (llm_check or {}).get("review")
        try:
            if checked is not None and checked.get("passed") is False:
                raise LLMUnavailable(f"the run's self-test failed: {checked.get('error')}")
            with llm_session(llm, out / "llm-server.log", checked) as session:
                reviews, doc["llm"] = llm_review_units(imported["units"], context, llm, cache_dir, out, thresholds.count_tolerance,
                                                       session)
            doc.update(backend=llm.backend, uses_llm=True)
        except LLMUnavailable as exc:
            if llm.on_unreachable == "fail":
                raise
            print(f"[review {imported['batch']}] LLM reviewer unavailable, using the rule-based fallback: {exc}", file=sys.stderr)
            reviews = fallback_reviews(rules_reviews, str(exc))
            doc.update(backend="deterministic (fallback)", llm_error=str(exc))
    for review in reviews:
        validate_review(review, schema)
        print(f"[review {imported['batch']}] {review['unit_id']}: {review['verdict']}", file=sys.stderr)
    doc["reviews"] = reviews
    write_json(out / "reviews.json", doc)
    return doc


def unit_reference(doc: dict[str, Any], plate: str | None, channel: str) -> dict[str, Any] | None:
    """The reference a unit is compared with: its plate's (when that has enough fields), else the run's."""
    plate_ref = doc.get("plates", {}).get(plate, {}).get(channel) if plate else None
    if plate_ref:
        return {metric: {**values, "scope": f"plate {plate}"} for metric, values in plate_ref.items()}
    return doc.get("channels", {}).get(channel)


def llm_settings(settings: dict[str, Any], llm_runtime: dict[str, Any], **files: str | None) -> Any:
    """``review.llm`` as :class:`LLMSettings` from the rule's params (what changes answers) and the config's runtime keys
    (where the server is); ``files``: prompt paths the rule gives as inputs."""
    from ..llm.settings import LLMSettings

    given = {k: v for k, v in files.items() if v}
    return LLMSettings.from_config({**settings.get("llm", {}), **llm_runtime, **given}, settings["backend"])


def run_llm_check(*, llm_check: str, settings: dict[str, Any], llm_runtime: dict[str, Any]) -> None:
    """Rule ``llm_check``: the run's LLM self-test, once per run and endpoint -> ``review/llm_check.json``; the review
    jobs and the run summary read it instead of probing the server each. A failure is recorded (and the run falls back
    to the rules), or stops the run with ``on_unreachable: fail``."""
    from dataclasses import replace

    from ..methods.llm_review import check_run
    from ..llm.settings import LLMUnavailable

    llm = llm_settings(settings, llm_runtime)
    summary = replace(llm, model=llm.summary_model) if llm.summary_model else None
    try:
        record = check_run(llm, summary)
    except LLMUnavailable as exc:
        raise SystemExit(f"snakescope: {exc} (review.llm.on_unreachable: fail)") from None
    write_json(llm_check, record)
    for role, checked in record.items():
        if isinstance(checked, dict):
            state = {True: "passed", False: f"FAILED: {checked.get('error')}", None: "skipped"}[checked.get("passed")]
            print(f"[llm_check] {role} model {checked.get('model')!r} ({checked.get('structured_output', '-')}): {state}",
                  file=sys.stderr)


def run_review(*, imported: str, quality: str, reference: str, inference: str, segmentation: str, knowledge_base: str,
               schema: str, review: str, settings: dict[str, Any], channels: tuple[str | int, ...], llm_runtime: dict[str, Any],
               cache_dir: str, prompt: str | None = None, llm_check: str | None = None) -> None:
    """Rule ``review``: every unit of a batch reviewed by the rules, and by the vision model when configured ->
    ``review/<batch>/``. ``llm_runtime``: the ``review.llm`` keys that do not change answers (server, timeouts)."""
    from ..core.layout import manifest
    from ..llm.settings import LLMUnavailable
    from ..core.progress import stage_progress

    llm = {**settings.get("llm", {}), **llm_runtime, **({"prompt": prompt} if prompt else {})}
    try:
        doc = review_batch(manifest(imported), quality, manifest(inference), segmentation, knowledge_base, {**settings, "llm": llm},
                           channels, review, schema, cache_dir, reference, read_json(llm_check) if llm_check else None)
    except LLMUnavailable as exc:
        raise SystemExit(f"snakescope: {exc} (review.llm.on_unreachable: fail)") from None
    stage_progress("review", doc, len(doc["reviews"]))

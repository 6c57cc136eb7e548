"""Stage 6c, report: one self-contained HTML page per dataset (inline CSS, JS, SVG plots and WebP images).

Static sections (summary, narrative, plots, aggregates, provenance) are rendered here with every string
HTML-escaped. The large, interactive parts (units table, gallery, flags, actions, failures) are embedded as
one JSON document and drawn by the page's script with ``textContent`` only, paginated so that a report of
thousands of units opens quickly. Nothing is fetched from the network.
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from ...core.settings import ReportSettings
from ...core.records import json_safe, read_csv, read_json, utc_now
from .tables import USABLE_VERDICTS

UNIT_COLUMNS = ["unit_id", "verdict", "issues", "flags", "object_count", "llm_estimated_count", "diameter_um_median",
                "diameter_px_median", "density_per_mm2", "snr", "blur", "percent_saturated", "foreground_fraction", "pixel_size_x_um",
                "status", "review_status", "llm_selection", "refined", "overruled"]
PLOT_TITLES = {
    "counts_by_condition": "Objects per image", "diameters_by_condition": "Object diameters",
    "quality_snr": "Signal to noise", "quality_focus": "Focus", "quality_saturation": "Saturation",
    "quality_foreground": "Foreground (empty fields)", "plate_map": "Plate map",
}


def e(value: Any) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    if value is None:
        return ""
    if isinstance(value, float):
        return html.escape(f"{value:.4g}")
    return html.escape(str(value), quote=True)


def script_json(data: Any) -> str:
    """JSON safe inside <script type="application/json">: no '<', '>' or '&' can end the element."""
    return json.dumps(json_safe(data), separators=(",", ":"), default=str, allow_nan=False).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def typed(value: str | None) -> Any:
    """CSV text to a JSON value: numbers as numbers, empty as null, booleans as booleans."""
    if value is None or value == "":
        return None
    if value in ("True", "False"):
        return value == "True"
    try:
        number = float(value)
    except ValueError:
        return value
    if not math.isfinite(number):
        return None  # "nan", "inf" in a table: no value (shown as n/a), never a NaN in the page's JSON
    return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else round(number, 6)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def stage_timings(benchmarks: Path, batches: list[str] | None = None) -> list[dict[str, Any]]:
    """Per rule: jobs, summed wall time and CPU time, and peak memory, from Snakemake's benchmark files
    (benchmarks/<rule>/*.tsv).

    Only this run's batches (and run-level ``run.tsv``) count, so files left by batches no longer in the sample
    sheet do not; a job that was not rerun counts with the time it took when it made its outputs."""
    out = []
    if not benchmarks.is_dir():
        return out
    wanted = None if batches is None else {f"{b}.tsv" for b in batches} | {"run.tsv"}
    for rule_dir in sorted(p for p in benchmarks.iterdir() if p.is_dir()):
        seconds, cpu, rss, jobs = 0.0, 0.0, 0.0, 0
        for tsv in sorted(rule_dir.glob("*.tsv")):
            if wanted is not None and tsv.name not in wanted:
                continue
            for row in read_csv(tsv, delimiter="\t"):
                seconds += float(row.get("s") or 0)
                memory, used = typed(row.get("max_rss")), typed(row.get("cpu_time"))
                rss = max(rss, memory if isinstance(memory, (int, float)) else 0)
                cpu += used if isinstance(used, (int, float)) else 0
                jobs += 1
        if jobs:
            out.append({"rule": rule_dir.name, "jobs": jobs, "seconds": round(seconds, 1), "cpu_s": round(cpu, 1),
                        "peak_rss_mb": round(rss, 1)})
    return out


BACKEND_NAMES = {"ollama": "Ollama", "openai": "an OpenAI-compatible server"}


def llm_provenance(reviews: list[dict[str, Any]], run_summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Distinct (backend, model, id, server version, options, prompt) combinations that answered, with unit counts."""
    seen: dict[str, dict[str, Any]] = {}
    records = [(r["reviewer"].get("provenance") or {}, "unit review") for r in reviews if r["reviewer"].get("uses_llm")]
    if run_summary.get("uses_llm"):
        records.append((run_summary.get("provenance") or {}, "run summary"))
    for prov, purpose in records:
        entry = {"purpose": purpose, "backend": prov.get("backend"), "endpoint": prov.get("endpoint"), "model": prov.get("model"),
                 "model_id": prov.get("model_id"), "server_version": prov.get("server_version"), "options": prov.get("options"),
                 "prompt_file": prov.get("prompt_file"), "prompt_version": prov.get("prompt_version"),
                 "prompt_template_sha256": prov.get("prompt_template_sha256")}
        key = json.dumps(entry, sort_keys=True, default=str)
        seen.setdefault(key, {**entry, "answers": 0, "cache_hits": 0})
        seen[key]["answers"] += 1
        seen[key]["cache_hits"] += bool(prov.get("cache_hit"))
    return list(seen.values())


def _commit(git: dict[str, Any] | None) -> str:
    if not git:
        return "not a git checkout"
    return git["commit"] + (" (with uncommitted changes)" if git.get("uncommitted_changes") else "")


def _kv_table(pairs: list[tuple[str, Any]], klass: str = "kv") -> str:
    return f"<table class='{klass}'><tbody>" + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in pairs) + "</tbody></table>"


def _static_table(rows: list[dict[str, Any]], columns: list[str], table_id: str = "") -> str:
    ident = f" id='{e(table_id)}'" if table_id else ""
    head = "".join(f"<th>{e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{e(row.get(c))}</td>" for c in columns) + "</tr>" for row in rows)
    return f"<table class='static'{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _duration(seconds: float) -> str:
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {sec:02d} s" if minutes else f"{sec} s"


def condition_rows(aggregates: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per condition of ``aggregates.json``: verdict counts, median count and diameter over the usable
    fields, and the same over all fields."""
    return [{"condition": c, "units": a["units"], "pass": a["verdicts"].get("pass", 0), "warn": a["verdicts"].get("warn", 0),
             "fail": a["verdicts"].get("fail", 0), "unreviewed": a["verdicts"].get("unreviewed", 0),
             "usable": a.get("usable_units", a["units"]),
             "median objects": a["median_count"], "median diameter (µm)": a["median_diameter_um"],
             "all fields: median objects": a.get("all_fields", {}).get("median_count"),
             "all fields: median diameter (µm)": a.get("all_fields", {}).get("median_diameter_um")}
            for c, a in aggregates.get("conditions", {}).items()]


def refinement_line(refinement: dict[str, Any] | None) -> str | None:
    """One line on the critique-driven re-run of post-processing, for the detail view."""
    if not refinement:
        return None
    kept = ", ".join(f"{k} {v}" for k, v in sorted((refinement.get("best_settings") or {}).items()))
    return (f"{'applied' if refinement.get('applied') else 'not applied (no attempt beat the original)'}: "
            f"{refinement.get('direction', '')} towards {refinement.get('target_count')} objects, "
            f"{len(refinement.get('attempts') or [])} attempt(s)" + (f"; kept {kept}" if refinement.get("applied") and kept else ""))


def metric_labels(thresholds: dict[str, Any] | None = None) -> dict[str, str]:
    """What the detail view calls each number: its meaning, unit and the threshold it was judged against."""
    from dataclasses import asdict

    from ...core.settings import ReviewThresholds

    t = asdict(ReviewThresholds.from_config(thresholds or {}))
    return {
        "snr": f"SNR, (signal − background) / noise (warn < {t['snr_warn']:g}, fail < {t['snr_fail']:g}, or {t['outlier_mad']:g} MAD below the run)",
        "blur": f"blur, 0 sharp to 1 blurred (warn ≥ {t['blur_warn']:g}, fail ≥ {t['blur_fail']:g}, or {t['outlier_mad']:g} MAD above the run)",
        "percent_saturated": f"saturated pixels, % (warn ≥ {t['saturated_percent_warn']:g}, fail ≥ {t['saturated_percent_fail']:g})",
        "foreground_fraction": f"foreground fraction (empty field ≤ {t['empty_foreground_fraction']:g})",
        "background": "background, grey levels",
        "background_unevenness": "uneven background, rise as a fraction of the contrast (taken out before analysis)",
        "noise": "pixel noise SD, grey levels", "object_count": "objects",
        "density_per_mm2": "density, objects per mm²", "diameter_um_median": "median equivalent diameter, µm",
        "area_um2_median": "median area, µm²", "diameter_px_median": "median equivalent diameter, px",
        "fraction_large": f"objects over twice the median area, fraction (under-segmentation ≥ {t['large_object_fraction']:g})",
        "fraction_low_solidity": f"non-convex objects, fraction (under-segmentation ≥ {t['low_solidity_fraction']:g})",
    }


def corrections_html(corrections: dict[str, Any]) -> str:
    """The human-review section: corrections applied in this run, whom they overruled, and agreement rates."""
    applied = corrections.get("applied") or 0
    rows = []
    names = {"human_rules": ("person", "rules"), "human_llm": ("person", "LLM"), "llm_rules": ("LLM", "rules")}
    for key, (a, b) in names.items():
        stats = (corrections.get("agreement") or {}).get(key) or {}
        if stats.get("units"):
            rows.append({"between": f"{a} and {b}", "units judged by both": stats["units"], "agree": stats["agree"],
                         "agreement": f"{100 * stats['rate']:.0f} %"})
    overruled = corrections.get("overruled") or {}
    text = (f"<p id='corrections-applied'>{applied} verdict(s) corrected by a person (file {e(corrections.get('file'))}); "
            f"overruled: the rules {overruled.get('rules', 0)}, the LLM {overruled.get('LLM', 0)}, both {overruled.get('both', 0)}; "
            f"the person agreed with the machine on {overruled.get('none', 0)}.</p>" if applied else
            "<p class='muted' id='corrections-applied'>No corrections by a person in this run (config <code>review.corrections</code>).</p>")
    unknown = corrections.get("unknown_units") or []
    if unknown:
        text += f"<p class='bad'>The corrections name {len(unknown)} unit(s) this run does not have: {e(', '.join(unknown[:10]))}</p>"
    table = _static_table(rows, list(rows[0]), "agreement-table") if rows else ""
    return f"<section id='human-review'><h2>Human review</h2>{text}{table}</section>"


def report_data(units: list[dict[str, str]], reviews: list[dict[str, Any]], gallery: dict[str, dict[str, Any]],
                failures: list[dict[str, str]], actions: dict[str, Any], settings: ReportSettings,
                aggregates: dict[str, Any] | None = None, answers: list[dict[str, str]] | None = None,
                thresholds: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON document the page's script draws its tables, gallery and detail views from."""
    labels = metric_labels(thresholds)
    meta_columns = [c for c in (units[0] if units else {}) if c.startswith("meta_")]
    columns = [c for c in UNIT_COLUMNS if any(u.get(c) not in (None, "") for u in units) or c in ("unit_id", "verdict")]
    with_details = len(units) <= settings.detail_images_max_units
    by_unit = {r["unit_id"]: r for r in reviews}
    unit_rows, details, thumbnails, thumbnails_own = [], {}, {}, {}
    for unit in units:
        uid = unit["unit_id"]
        row = {c: typed(unit.get(c)) for c in columns + meta_columns}
        row["verdict"] = unit.get("verdict") or "unreviewed"
        unit_rows.append(row)
        images = gallery.get(uid, {})
        if images.get("thumbnail"):
            thumbnails[uid] = images["thumbnail"]
        if images.get("thumbnail_own"):
            thumbnails_own[uid] = images["thumbnail_own"]
        review = by_unit.get(uid, {})
        details[uid] = {
            "image": images.get("detail") if with_details else None,
            "overlay_file": unit.get("overlay") or "",
            "source": unit.get("source_path"), "scene": unit.get("scene"), "batch": unit.get("batch"),
            "size": f"{unit.get('width')} x {unit.get('height')} px", "channels": unit.get("channels"),
            "metrics": {label: typed(unit.get(k)) for k, label in labels.items()},
            "scale_bar": f"{images['scale_bar_um']:g} µm" if images.get("scale_bar_um") else None,
            "pixel_size": (f"{unit.get('pixel_size_x_um')} x {unit.get('pixel_size_y_um')} µm" if unit.get("pixel_size_x_um")
                           else "unknown: sizes in pixels") + f" ({unit.get('pixel_size_origin') or 'origin not recorded'})",
            "reviewer": (review.get("reviewer") or {}).get("name"), "status": review.get("status"),
            "llm_verdict": review.get("llm_verdict"),
            "rules_verdict": (review.get("second_opinion") or {}).get("verdict"),
            "summary": review.get("summary"), "issues": review.get("issues", []), "flags": review.get("flags", []),
            "actions": review.get("suggested_actions", []), "count_check": review.get("count_check"),
            "critique": review.get("critique"), "answers": review.get("answers", []),
            "refinement": refinement_line(review.get("refinement")),
            "human": ({"verdict": unit.get("human_verdict"), "comment": unit.get("human_comment") or "",
                       "machine_verdict": unit.get("machine_verdict"), "overruled": unit.get("overruled"),
                       "issues": [i for i in (unit.get("issues") or "").split(";") if i]}
                      if unit.get("human_verdict") else None),
        }
    flags = [{"unit_id": r["unit_id"], "check": f["check"], "llm_says": f["llm_says"], "numbers_say": f["numbers_say"]}
             for r in reviews for f in r.get("flags", [])]
    action_rows = [{"unit_id": a["unit_id"], "verdict": a["verdict"], "plate": a["position"]["plate"], "well": a["position"]["well"],
                    "actions": ", ".join(x["action"] for x in a["actions"]),
                    "why": "; ".join(i["evidence"] for i in a["issues"]), "suggestion": "; ".join(x["detail"] for x in a["actions"])}
                   for a in actions.get("units", [])]
    return {
        # well, treatment and the other sample-sheet columns next to the unit id, where a screener looks first
        "columns": columns[:2] + meta_columns + columns[2:], "units": unit_rows, "thumbnails": thumbnails, "thumbnails_own": thumbnails_own,
        "details": details,
        "detail_images": with_details, "page_size": settings.page_size, "flags": flags, "actions": action_rows,
        "failures": [{k: f.get(k) for k in ("stage", "source_path", "sample_id", "unit_id", "reason")} for f in failures],
        "conditions": condition_rows(aggregates or {}),
        "answers": [{k: typed(v) if k in ("yes", "no", "unsure") else v for k, v in a.items()} for a in answers or []],
    }


def render_html(info: dict[str, Any], data: dict[str, Any], plots: dict[str, str]) -> str:
    """The whole page. ``info`` holds the static facts (dataset, model, versions, summary, aggregates)."""
    units = data["units"]
    verdicts = Counter(u["verdict"] for u in units)
    reviews = info["reviews"]
    uses_llm = any(r["reviewer"].get("uses_llm") for r in reviews)
    fallback = [r for r in reviews if r.get("status") == "fallback"]
    run_summary = info.get("run_summary") or {}
    model = info.get("model") or {}
    timings = info.get("timings") or []
    llm = info.get("llm") or []
    failures = data["failures"]
    total_seconds = sum(t["seconds"] for t in timings)
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'><link rel='icon' href='data:,'>",
             f"<title>snakescope report: {e(info['dataset'])}</title><style>{template('report.css')}</style></head><body>",
             "<nav><a href='#summary'>Summary</a><a href='#flags'>Flags</a><a href='#actions'>Acquisition actions</a>"
             "<a href='#plots'>Plots</a><a href='#conditions'>Conditions</a><a href='#units'>Units</a>"
             "<a href='#gallery'>Gallery</a><a href='#failures'>Failures</a><a href='#warnings'>Warnings</a><a href='#provenance'>Provenance</a></nav><main>",
             f"<h1>snakescope report: {e(info['dataset'])}</h1>",
             f"<p class='muted'>generated {e(info['generated'])} · snakescope {e(info['version'])}</p>"]
    # -- review backend, said plainly
    llm_info = info["aggregates"].get("llm") or {}
    rules_only = [r for r in reviews if r.get("status") == "rules_only"]
    if uses_llm:
        names = sorted({f"{r['reviewer']['name']} via {BACKEND_NAMES.get(r['reviewer']['backend'], r['reviewer']['backend'])}"
                        for r in reviews if r["reviewer"].get("uses_llm")})
        parts.append(f"<div class='banner llm' id='review-backend'><b>Review backend: LLM reviewer "
                     f"{e(', '.join(names))}</b>, checked against the measurements and a rule-based second opinion; "
                     "disagreements are listed under Flags.</div>")
    if rules_only:
        scope = ", ".join(sorted({str(run.get("scope")) for run in llm_info.get("runs", [])})) or "flagged"
        audit = llm_info.get("audit") or {}
        audit_text = (f" Audit: {audit['units']} unit(s) the rules passed were also sent to the LLM; it agreed with the rules "
                      f"on {audit['agreed']} of them." if audit.get("units") else "")
        parts.append(f"<div class='banner rules' id='review-scope'><b>{len(rules_only)} of {len(reviews)} unit(s) were not sent "
                     f"to the LLM (review.llm.scope: {e(scope)}): the rules passed them and their verdicts are the rules'.</b>"
                     f"{e(audit_text)} The Units table's <code>llm_selection</code> column says which units the LLM saw and why.</div>")
    if fallback:
        parts.append(f"<div class='banner rules' id='review-fallback'><b>{len(fallback)} unit(s) were reviewed by the rule-based "
                     "fallback because the LLM reviewer was unavailable — no LLM was used for them.</b> "
                     f"Reason: {e(fallback[0]['summary'][:300])}</div>")
    unreviewed = [r for r in reviews if r.get("status") == "unreviewed"]  # an LLM run whose LLM did not answer for them
    if unreviewed:
        invalid = [r for r in unreviewed if not r.get("summary", "").startswith("not sent to the LLM")]
        reason = (invalid or unreviewed)[0].get("summary", "")[:300]
        lead = (f"{len(unreviewed)} of {len(reviews)} unit(s) were not reviewed by the LLM" if uses_llm else
                f"No unit was reviewed by the LLM: all {len(unreviewed)} attempted unit(s) stayed unreviewed")
        parts.append(f"<div class='banner rules' id='review-unreviewed'><b>{e(lead)}; the rules alone decided their verdicts.</b> "
                     f"{len(invalid)} had no valid answer after the retries, {len(unreviewed) - len(invalid)} had no image to send "
                     f"(failed upstream). First reason: {e(reason)}</div>")
    elif not uses_llm and not fallback:
        parts.append("<div class='banner rules' id='review-backend'><b>Review backend: deterministic rules — no LLM was used.</b> "
                     "Verdicts come from fixed thresholds on quality metrics and object measurements "
                     "(config section <code>review</code>), not from a vision model.</div>")
    # -- summary cards
    cards = [("units", len(units), ""), ("pass", verdicts.get("pass", 0), "pass"), ("warn", verdicts.get("warn", 0), "warn"),
             ("fail", verdicts.get("fail", 0), "fail"),
             *([("reviewed by the LLM", sum(1 for r in reviews if r["reviewer"].get("uses_llm")), ""),
                ("not reviewed by the LLM", len(unreviewed) + len(fallback), "warn" if unreviewed or fallback else "")]
               if uses_llm or unreviewed or fallback else [("reviewed by the LLM", 0, "")]),
             *([("rules only (LLM scope)", len(rules_only), "")] if rules_only else []),
             *([("audit: LLM agrees with the rules", f"{llm_info['audit']['agreed']}/{llm_info['audit']['units']}",
                 "" if llm_info["audit"]["agreed"] == llm_info["audit"]["units"] else "warn")]
               if (llm_info.get("audit") or {}).get("units") else []),
             ("failed inputs / steps", len(failures), "fail" if failures else ""),
             ("disagreement flags", len(data["flags"]), "warn" if data["flags"] else ""),
             ("to re-acquire", len(data["actions"]), "warn" if data["actions"] else ""),
             ("compute time (sum of jobs)", _duration(total_seconds) if timings else "n/a", "")]
    parts.append("<section id='summary'><h2>Summary</h2><div class='cards'>" + "".join(
        f"<div class='card-n {klass}'><div class='n'>{e(value)}</div><div>{e(label)}</div></div>" for label, value, klass in cards)
        + "</div>")
    parts.append(_kv_table([
        ("segmentation model", f"{model.get('name')} ({model.get('source')})"), ("model digest", model.get("digest")),
        ("weight format", model.get("weight_format")), ("model test (bioimageio.core)", (model.get("test") or {}).get("status")),
        ("reviewer", ", ".join(sorted({r['reviewer']['name'] for r in reviews})) or "none"),
        ("conditions", f"{len(info['aggregates'].get('conditions', {}))} (column '{info['aggregates'].get('condition_column')}')"),
        ("segmentations refined by critique", info["aggregates"].get("refined_units", 0)),
    ]))
    if run_summary.get("text"):
        who = "written by the LLM" if run_summary.get("uses_llm") else "rule-based template, no LLM"
        mismatched = run_summary.get("numbers_mismatched") or []
        check = (f"<p class='bad' id='narrative-check'>Numbers not found in the tables: {e(', '.join(map(str, mismatched)))}</p>" if mismatched
                 else f"<p class='muted' id='narrative-check'>All {len(run_summary.get('numbers_checked', []))} numbers quoted were "
                      "checked against the tables.</p>")
        parts.append(f"<h3 id='narrative'>Narrative ({e(who)})</h3><blockquote>{e(run_summary['text'])}</blockquote>{check}")
    parts.append("</section>")
    # -- flags, actions
    parts.append(f"<section id='flags'><h2>Disagreement flags ({len(data['flags'])})</h2><p class='muted'>Where the reviewer's "
                 "claims and the measurements disagree (its count against the segmentation, its focus/saturation/empty/signal "
                 "claims against the metrics, sizes against the knowledge base). Each flag turns a pass into a warn.</p>"
                 + ("<div class='dt' data-table='flags'></div>" if data["flags"] else "<p>None.</p>") + "</section>")
    counts = (info.get("actions_doc") or {}).get("counts", {})
    parts.append(f"<section id='actions'><h2>Acquisition actions ({len(data['actions'])} unit(s))</h2>"
                 "<p class='muted'>Units with verdict warn or fail and an action at the microscope. The same list, for a "
                 "microscope-control script, is <code>tables/acquisition_actions.json</code> "
                 "(shape: <code>workflow/schemas/acquisition_actions.schema.json</code>).</p>"
                 + ("<p>" + " · ".join(f"<b>{e(k)}</b>: {e(v)}" for k, v in sorted(counts.items())) + "</p>" if counts else "")
                 + ("<div class='dt' data-table='actions'></div>" if data["actions"] else "<p>None.</p>") + "</section>")
    # -- plots
    parts.append("<section id='plots'><h2>Plots</h2><p class='muted'>Hover a dot or well for the unit. Red: flagged by "
                 "the review. Dashed: the warn threshold (config <code>review.thresholds</code>).</p><div class='plots'>")
    for name, svg in plots.items():
        parts.append(f"<figure id='plot-{e(name)}'><figcaption>{e(PLOT_TITLES.get(name, name))}</figcaption>{svg}</figure>")
    parts.append("</div></section>")
    # -- conditions and answers (tables drawn by the script)
    usable_verdicts = ", ".join(info["aggregates"].get("usable_verdicts", USABLE_VERDICTS))
    parts.append(f"<section id='conditions'><h2>Per condition ({e(info['aggregates'].get('condition_column'))})</h2>"
                 f"<p class='muted' id='statistics-rule'>Medians and the per-condition plots count the usable fields only: "
                 f"verdict {e(usable_verdicts)} (config <code>report.usable_verdicts</code>). The columns "
                 "'all fields: …' include every field, failed ones too.</p>"
                 "<div class='dt' data-table='conditions' id='conditions-table'></div>")
    parts.append("<h3 id='answers'>Answers to the dataset's questions</h3>" + (
        "<div class='dt' data-table='answers' id='answers-table'></div>" if data["answers"]
        else "<p class='muted'>No questions were asked (config <code>review.llm.questions</code>, LLM backend only).</p>")
        + "</section>")
    # -- units and gallery (drawn by the script)
    corrections = info["aggregates"].get("corrections") or {}
    parts.append(corrections_html(corrections))
    parts.append(f"<section id='units'><h2>Units ({len(units)})</h2><div class='controls'>"
                 "<input id='unit-filter' type='search' placeholder='filter: any text, e.g. DMSO, out_of_focus, A03' size='40'>"
                 "<select id='verdict-filter'><option value=''>all verdicts</option><option>pass</option><option>warn</option>"
                 "<option>fail</option><option>unreviewed</option></select>"
                 "<span class='muted'>filters apply to the table and the gallery · click a header to sort · "
                 "click a unit for its detail</span></div>"
                 "<div class='controls' id='corrections-bar'><span id='corrections-count' class='muted'></span>"
                 "<button id='corrections-export'>Export corrections (JSON)</button>"
                 "<button id='corrections-clear'>Forget the page's corrections</button>"
                 "<span class='muted'>Correct a verdict in a unit's detail view; export, then set the file as config "
                 "<code>review.corrections</code> and rerun: verdicts, statistics and acquisition actions follow it.</span></div>"
                 "<div class='dt' data-table='units'></div></section>")
    parts.append("<section id='gallery'><h2>Gallery</h2><p class='muted'>Thumbnails: the model's input channel with "
                 "segmentation outlines (yellow), in one contrast shared by the run's fields per channel (black at the run's "
                 "median background, white above its median nuclear signal), so dim, empty and clipped fields stand out. "
                 "The detail view shows raw and outlined side by side, scale bar bottom right.</p>"
                 "<label class='controls'><input type='checkbox' id='own-contrast'> each field in its own contrast</label>"
                 "<div class='pager' id='gallery-pager'></div><div class='gallery' id='gallery-cards'></div></section>")
    parts.append(f"<section id='failures'><h2>Failed inputs and steps ({len(failures)})</h2>"
                 + ("<div class='dt' data-table='failures'></div>" if failures else "<p>None: every input was processed.</p>")
                 + "</section>")
    warnings = data.get("warnings") or []
    parts.append(f"<section id='warnings'><h2>Warnings ({len(warnings)})</h2>"
                 + ("<p class='muted'>Processed, but check these: missing or overridden pixel sizes (such units are "
                    "measured in pixels), data a reader returned that needed a correction.</p>"
                    "<div class='dt' data-table='warnings'></div>" if warnings else "<p>None.</p>")
                 + "</section>")
    # -- provenance
    parts.append("<section id='provenance'><h2>Provenance</h2>")
    parts.append("<h3>Segmentation model (bioimage.io)</h3>" + _kv_table([
        ("name", model.get("name")), ("source", model.get("source")), ("model digest (sha256 over id, weight format, weights' sha256 and tensor ids)", model.get("digest")),
        ("weights sha256 (from the model's description)", model.get("weights_sha256") or "not stated by the model"),
        ("weight format", model.get("weight_format")), ("test_model", (model.get("test") or {}).get("status"))]))
    parts.append("<h3>LLM reviewer</h3>" + (_static_table(
        [{**x, "options": json.dumps(x["options"], sort_keys=True)} for x in llm],
        ["purpose", "backend", "endpoint", "model", "model_id", "server_version", "options", "prompt_file", "prompt_version",
         "prompt_template_sha256", "answers", "cache_hits"], "llm-provenance") if llm else "<p>No LLM was used in this run.</p>"))
    if llm_info.get("runs"):
        parts.append("<h4>Self-test and scope</h4><p class='muted'>Once per run and endpoint, before any unit is sent (rule "
                     "llm_check): the server answers, the model exists and is not listed as text-only, it tells a near-white "
                     "from a near-black test image (a model that cannot see images is refused) and it answers schema-valid "
                     "JSON in the structured-output form the server takes.</p>" + _static_table(
                         llm_info["runs"], ["backend", "endpoint", "server_kind", "server_version", "model", "model_id",
                                            "context_size", "selftest", "structured_output", "selftest_note", "scope",
                                            "audit_fraction", "batches"], "llm-selftest"))
    if cost := llm_info.get("cost"):
        parts.append(f"<p id='llm-cost'>Cost of the review requests this run, as the server counted them: {cost['requests']} "
                     f"request(s), {cost['prompt_tokens']} prompt tokens (images included), {cost['completion_tokens']} "
                     f"completion tokens, {cost['seconds']} s waiting for answers; {cost['cached']} answer(s) from the cache "
                     "cost nothing.</p>")
    for warning in llm_info.get("warnings") or []:
        parts.append(f"<p class='bad llm-warning'>{e(warning)}</p>")
    if timings:
        parts.append("<h3>Compute per stage</h3><p class='muted'>From Snakemake's benchmark files (wall and CPU time summed over "
                     "jobs; peak resident memory of one job).</p>" + _static_table(timings, ["rule", "jobs", "seconds", "cpu_s", "peak_rss_mb"], "timings"))
    packages = (info.get("software") or {}).get("packages", {})
    parts.append("<h3>Software versions</h3>" + _kv_table(
        [("snakescope", (info.get("software") or {}).get("snakescope")),
         ("workflow commit", _commit((info.get("software") or {}).get("workflow_git"))),
         ("python", (info.get("software") or {}).get("python")),
         *((name, version or "not installed") for name, version in sorted(packages.items()))]))
    parts.append("<details><summary>Parameters (the run's full config)</summary><pre>"
                 + e(json.dumps(info.get("params"), indent=1, sort_keys=True, default=str)) + "</pre></details></section>")
    parts.append("</main><dialog id='detail'><button id='detail-close' aria-label='close'>×</button><div id='detail-body'></div></dialog>")
    parts.append(f"<script type='application/json' id='report-data'>{script_json(data)}</script>")
    parts.append(f"<script>{template('report.js')}</script></body></html>")
    return "\n".join(parts)


def write_report(tables_dir: str | Path, plots_dir: str | Path, gallery_files: list[str | Path], model_check: str | Path,
                 pipeline_info: str | Path, dataset: str, out_html: str | Path, settings: ReportSettings,
                 benchmarks: str | Path | None = None, batches: list[str] | None = None) -> dict[str, Any]:
    """Read the tables, plots, gallery images and provenance; write the page atomically. Returns size facts."""
    from ... import __version__

    tables, info_dir = Path(tables_dir), Path(pipeline_info)
    units = read_csv(tables / "units.csv")
    reviews = read_jsonl(tables / "reviews.jsonl")
    failures = read_csv(tables / "failures.csv")
    warnings = read_csv(tables / "warnings.csv") if (tables / "warnings.csv").is_file() else []
    gallery: dict[str, dict[str, Any]] = {}
    for path in gallery_files:
        doc = read_json(path)
        gallery.update(doc["images"])
        failures += doc["failures"]
    actions = read_json(tables / "acquisition_actions.json")
    run_summary_path = tables / "run_summary.json"
    run_summary = read_json(run_summary_path) if run_summary_path.is_file() else {}
    plots = {p.stem: p.read_text(encoding="utf-8") for p in sorted(Path(plots_dir).glob("*.svg"))}
    from .plots import PLOT_NAMES

    plots = {name: plots[name] for name in PLOT_NAMES if name in plots} | {k: v for k, v in plots.items() if k not in PLOT_NAMES}
    info = {
        "dataset": dataset, "version": __version__,
        "generated": utc_now(),
        "model": read_json(model_check), "software": read_json(info_dir / "software_versions.json"),
        "params": read_json(info_dir / "params.json"), "run_summary": run_summary, "reviews": reviews,
        "aggregates": read_json(tables / "aggregates.json"), "answers": read_csv(tables / "answers.csv"),
        "actions_doc": actions, "llm": llm_provenance(reviews, run_summary),
        "timings": stage_timings(Path(benchmarks), batches) if benchmarks else [],
    }
    data = report_data(units, reviews, gallery, failures, actions, settings, info["aggregates"], info["answers"],
                       (info["params"].get("review") or {}).get("thresholds"))
    data["dataset"] = dataset
    data["warnings"] = [{k: w.get(k) for k in ("stage", "source_path", "unit_id", "warning")} for w in warnings]
    page = render_html(info, data, plots)
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    shutil.move(tmp, out)
    size = os.path.getsize(out)
    return {"units": len(units), "bytes": size, "bytes_per_unit": size / max(1, len(units)),
            "detail_images": data["detail_images"]}


TEMPLATES = Path(__file__).resolve().parent / "templates"


def template(name: str) -> str:
    """A file of the page (``templates/report.css``, ``templates/report.js``), inlined into the report."""
    return (TEMPLATES / name).read_text(encoding="utf-8")



def run_report(*, tables: list[str], plots: list[str], gallery: list[str], run_summary: str, model_check: str, params: str,
               versions: str, html: str, dataset: str, batches: list[str], settings: ReportSettings) -> None:
    """Rule ``report``: the self-contained HTML page from the tables, plots, gallery images and provenance."""
    import sys

    results = Path(html).parents[1]
    facts = write_report(Path(tables[0]).parent, Path(plots[0]).parent, gallery, model_check, Path(params).parent, dataset,
                         html, settings, results / "benchmarks", batches)
    print(f"report: {Path(html).resolve()} ({facts['units']} units, {facts['bytes'] / 1e6:.1f} MB, "
          f"{facts['bytes_per_unit'] / 1024:.1f} KiB per unit)", file=sys.stderr)

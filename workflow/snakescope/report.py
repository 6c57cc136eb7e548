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
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .configuration import settings_from_section
from .records import json_safe, read_json
from .tables import read_csv

UNIT_COLUMNS = ["unit_id", "verdict", "issues", "flags", "object_count", "llm_estimated_count", "diameter_um_median",
                "diameter_px_median", "density_per_mm2", "snr", "blur", "percent_saturated", "foreground_fraction", "pixel_size_x_um",
                "status", "refined", "overruled"]
PLOT_TITLES = {
    "counts_by_condition": "Objects per image", "diameters_by_condition": "Object diameters",
    "quality_snr": "Signal to noise", "quality_focus": "Focus", "quality_saturation": "Saturation",
    "quality_foreground": "Foreground (empty fields)", "plate_map": "Plate map",
}


@dataclass(frozen=True)
class ReportSettings:
    """Config section ``report`` (the page part)."""

    page_size: int = 50
    detail_images_max_units: int = 1000
    plate_column: str = "plate"
    well_column: str = "well"

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> "ReportSettings":
        return settings_from_section(cls, section)


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
    """Per rule: jobs, summed wall time and peak memory, from Snakemake's benchmark files (benchmarks/<rule>/*.tsv).

    Only this run's batches (and run-level ``run.tsv``) count, so files left by batches no longer in the sample
    sheet do not; a job that was not rerun counts with the time it took when it made its outputs."""
    out = []
    if not benchmarks.is_dir():
        return out
    wanted = None if batches is None else {f"{b}.tsv" for b in batches} | {"run.tsv"}
    for rule_dir in sorted(p for p in benchmarks.iterdir() if p.is_dir()):
        seconds, rss, jobs = 0.0, 0.0, 0
        for tsv in sorted(rule_dir.glob("*.tsv")):
            if wanted is not None and tsv.name not in wanted:
                continue
            for row in read_csv(tsv, delimiter="\t"):
                seconds += float(row.get("s") or 0)
                memory = typed(row.get("max_rss"))
                rss = max(rss, memory if isinstance(memory, (int, float)) else 0)
                jobs += 1
        if jobs:
            out.append({"rule": rule_dir.name, "jobs": jobs, "seconds": round(seconds, 1), "peak_rss_mb": round(rss, 1)})
    return out


def llm_provenance(reviews: list[dict[str, Any]], run_summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Distinct (model, digest, server version, options, prompt) combinations that answered, with unit counts."""
    seen: dict[str, dict[str, Any]] = {}
    records = [(r["reviewer"].get("provenance") or {}, "unit review") for r in reviews if r["reviewer"].get("uses_llm")]
    if run_summary.get("uses_llm"):
        records.append((run_summary.get("provenance") or {}, "run summary"))
    for prov, purpose in records:
        entry = {"purpose": purpose, "model": prov.get("model"), "model_digest": prov.get("model_digest"),
                 "ollama_version": prov.get("ollama_version"), "options": prov.get("options"),
                 "prompt_file": prov.get("prompt_file"), "prompt_version": prov.get("prompt_version"),
                 "prompt_template_sha256": prov.get("prompt_template_sha256")}
        key = json.dumps(entry, sort_keys=True, default=str)
        seen.setdefault(key, {**entry, "answers": 0, "cache_hits": 0})
        seen[key]["answers"] += 1
        seen[key]["cache_hits"] += bool(prov.get("cache_hit"))
    return list(seen.values())


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

    from .review import ReviewThresholds

    t = asdict(ReviewThresholds.from_config(thresholds or {}))
    return {
        "snr": f"SNR, (signal − background) / noise (warn < {t['snr_warn']:g}, fail < {t['snr_fail']:g}, or {t['outlier_mad']:g} MAD below the run)",
        "blur": f"blur, 0 sharp to 1 blurred (warn ≥ {t['blur_warn']:g}, fail ≥ {t['blur_fail']:g}, or {t['outlier_mad']:g} MAD above the run)",
        "percent_saturated": f"saturated pixels, % (warn ≥ {t['saturated_percent_warn']:g}, fail ≥ {t['saturated_percent_fail']:g})",
        "foreground_fraction": f"foreground fraction (empty field ≤ {t['empty_foreground_fraction']:g})",
        "background": "background, grey levels", "noise": "pixel noise SD, grey levels", "object_count": "objects",
        "density_per_mm2": "density, objects per mm²", "diameter_um_median": "median equivalent diameter, µm",
        "area_um2_median": "median area, µm²", "diameter_px_median": "median equivalent diameter, px",
        "fraction_large": f"objects over twice the median area, fraction (under-segmentation ≥ {t['large_object_fraction']:g})",
        "fraction_low_solidity": f"non-convex objects, fraction (under-segmentation ≥ {t['low_solidity_fraction']:g})",
    }


def corrections_html(corrections: dict[str, Any], uses_llm: bool) -> str:
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
             f"<title>snakescope report: {e(info['dataset'])}</title><style>{STYLE}</style></head><body>",
             "<nav><a href='#summary'>Summary</a><a href='#flags'>Flags</a><a href='#actions'>Acquisition actions</a>"
             "<a href='#plots'>Plots</a><a href='#conditions'>Conditions</a><a href='#units'>Units</a>"
             "<a href='#gallery'>Gallery</a><a href='#failures'>Failures</a><a href='#warnings'>Warnings</a><a href='#provenance'>Provenance</a></nav><main>",
             f"<h1>snakescope report: {e(info['dataset'])}</h1>",
             f"<p class='muted'>generated {e(info['generated'])} · snakescope {e(info['version'])}</p>"]
    # -- review backend, said plainly
    if uses_llm:
        names = sorted({r["reviewer"]["name"] for r in reviews if r["reviewer"].get("uses_llm")})
        parts.append(f"<div class='banner llm' id='review-backend'><b>Review backend: Ollama vision model "
                     f"{e(', '.join(names))}</b>, checked against the measurements and a rule-based second opinion; "
                     "disagreements are listed under Flags.</div>")
    if fallback:
        parts.append(f"<div class='banner rules' id='review-fallback'><b>{len(fallback)} unit(s) were reviewed by the rule-based "
                     "fallback because the LLM reviewer was unavailable — no LLM was used for them.</b> "
                     f"Reason: {e(fallback[0]['summary'][:300])}</div>")
    elif not uses_llm:
        parts.append("<div class='banner rules' id='review-backend'><b>Review backend: deterministic rules — no LLM was used.</b> "
                     "Verdicts come from fixed thresholds on quality metrics and object measurements "
                     "(config section <code>review</code>), not from a vision model.</div>")
    # -- summary cards
    cards = [("units", len(units), ""), ("pass", verdicts.get("pass", 0), "pass"), ("warn", verdicts.get("warn", 0), "warn"),
             ("fail", verdicts.get("fail", 0), "fail"), ("unreviewed", verdicts.get("unreviewed", 0), ""),
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
    usable_verdicts = ", ".join(info["aggregates"].get("usable_verdicts", ["pass", "warn"]))
    parts.append(f"<section id='conditions'><h2>Per condition ({e(info['aggregates'].get('condition_column'))})</h2>"
                 f"<p class='muted' id='statistics-rule'>Medians and the per-condition plots count the usable fields only: "
                 f"verdict {e(usable_verdicts)} (config <code>report.usable_verdicts</code>). The columns "
                 "'all fields: …' include every field, failed ones too.</p>"
                 "<div class='dt' data-table='conditions' id='conditions-table'></div>")
    parts.append("<h3 id='answers'>Answers to the dataset's questions</h3>" + (
        "<div class='dt' data-table='answers' id='answers-table'></div>" if data["answers"]
        else "<p class='muted'>No questions were asked (config <code>review.ollama.questions</code>, LLM backend only).</p>")
        + "</section>")
    # -- units and gallery (drawn by the script)
    corrections = info["aggregates"].get("corrections") or {}
    parts.append(corrections_html(corrections, uses_llm))
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
    parts.append("<h3>LLM reviewer (Ollama)</h3>" + (_static_table(
        [{**x, "options": json.dumps(x["options"], sort_keys=True)} for x in llm],
        ["purpose", "model", "model_digest", "ollama_version", "options", "prompt_file", "prompt_version",
         "prompt_template_sha256", "answers", "cache_hits"], "llm-provenance") if llm else "<p>No LLM was used in this run.</p>"))
    if timings:
        parts.append("<h3>Compute per stage</h3><p class='muted'>From Snakemake's benchmark files (wall time summed over "
                     "jobs; peak resident memory of one job).</p>" + _static_table(timings, ["rule", "jobs", "seconds", "peak_rss_mb"], "timings"))
    packages = (info.get("software") or {}).get("packages", {})
    parts.append("<h3>Software versions</h3>" + _kv_table(
        [("python", (info.get("software") or {}).get("python")),
         *((name, version or "not installed") for name, version in sorted(packages.items()))]))
    parts.append("<details><summary>Parameters (the run's full config)</summary><pre>"
                 + e(json.dumps(info.get("params"), indent=1, sort_keys=True, default=str)) + "</pre></details></section>")
    parts.append("</main><dialog id='detail'><button id='detail-close' aria-label='close'>×</button><div id='detail-body'></div></dialog>")
    parts.append(f"<script type='application/json' id='report-data'>{script_json(data)}</script>")
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(parts)


def write_report(tables_dir: str | Path, plots_dir: str | Path, gallery_files: list[str | Path], model_check: str | Path,
                 pipeline_info: str | Path, dataset: str, out_html: str | Path, settings: ReportSettings,
                 benchmarks: str | Path | None = None, batches: list[str] | None = None) -> dict[str, Any]:
    """Read the tables, plots, gallery images and provenance; write the page atomically. Returns size facts."""
    from . import __version__

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
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
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


STYLE = """
:root{--pass:#d9f2d9;--warn:#fff0c2;--fail:#f8d0d0}
body{font-family:system-ui,sans-serif;margin:0;color:#222}
nav{position:sticky;top:0;background:#2b3a4a;padding:.4em 1em;z-index:5} nav a{color:#fff;margin-right:1.2em;text-decoration:none;font-size:.9em}
main{padding:0 1.5em 3em;max-width:1500px} h1{margin:.6em 0 .1em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.muted{color:#666;font-size:.9em} .bad{color:#a00;font-weight:bold}
.banner{padding:.6em 1em;border-radius:6px;margin:1em 0} .banner.rules{background:#fff4d6;border:1px solid #e0b84c}
.banner.llm{background:#e6f2ff;border:1px solid #6aa0d8}
.cards{display:flex;flex-wrap:wrap;gap:8px;margin:.5em 0} .card-n{border:1px solid #ccc;border-radius:6px;padding:.4em .8em;min-width:90px;font-size:.85em}
.card-n .n{font-size:1.6em;font-weight:bold} .card-n.pass{background:var(--pass)} .card-n.warn{background:var(--warn)} .card-n.fail{background:var(--fail)}
blockquote{background:#f7f7f7;border-left:4px solid #6aa0d8;margin:.5em 0;padding:.6em 1em;white-space:pre-wrap}
table{border-collapse:collapse;font-size:.82em;margin:.4em 0} th,td{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f3f3f3} table.kv th{width:16em} .dt{overflow-x:auto} .dt th{cursor:pointer;white-space:nowrap} .dt th.sorted-asc::after{content:' ▲'} .dt th.sorted-desc::after{content:' ▼'}
tr.pass td.v,span.pass{background:var(--pass)} tr.warn td.v,span.warn{background:var(--warn)} tr.fail td.v,span.fail{background:var(--fail)}
td.link{color:#0645ad;cursor:pointer;text-decoration:underline}
.controls{display:flex;gap:.8em;align-items:center;flex-wrap:wrap;margin:.4em 0} .pager{margin:.4em 0;font-size:.85em}
.pager button{margin:0 .2em} .plots{display:flex;flex-wrap:wrap;gap:12px} figure{margin:0;border:1px solid #eee;padding:4px}
figcaption{font-size:.8em;color:#555} figure svg{max-width:100%;height:auto} .gallery{display:flex;flex-wrap:wrap;gap:8px}
.card{border:1px solid #ccc;border-radius:6px;padding:5px;width:172px;font-size:.75em;cursor:pointer;background:#fff}
.card img{width:160px;height:160px;object-fit:contain;background:#111;display:block;image-rendering:pixelated}
.card .noimg{width:160px;height:160px;background:#eee;display:flex;align-items:center;justify-content:center;color:#666}
.card ul{margin:.2em 0;padding-left:1.1em} .badge{display:inline-block;padding:0 5px;border-radius:4px;font-weight:bold;border:1px solid #bbb}
.id{font-weight:bold;word-break:break-all} dialog{max-width:min(1100px,95vw);max-height:92vh;overflow:auto;border-radius:8px}
dialog img{width:100%;max-width:900px;image-rendering:pixelated} #detail-close{float:right;font-size:1.4em;border:none;background:none;cursor:pointer}
pre{white-space:pre-wrap;font-size:.8em;background:#f7f7f7;padding:.5em}
section,h2,h3{scroll-margin-top:3em} .detail-nav button{margin-right:.4em} fieldset{margin:.8em 0;border:1px solid #ccc;border-radius:6px}
"""

SCRIPT = r"""
(function(){
'use strict';
var D = JSON.parse(document.getElementById('report-data').textContent);
function el(tag, attrs, text){ var n = document.createElement(tag); if (attrs) for (var k in attrs) n.setAttribute(k, attrs[k]);
  if (text !== undefined && text !== null) n.textContent = String(text); return n; }
function fmt(v){ if (v === null || v === undefined) return ''; if (typeof v === 'number' && !Number.isInteger(v)) return String(+v.toPrecision(4));
  return String(v); }
function cmp(a, b){ var an = a === null || a === undefined || a === '', bn = b === null || b === undefined || b === '';
  if (an || bn) return an && bn ? 0 : an ? 1 : -1;
  if (typeof a === 'number' && typeof b === 'number') return a - b; return String(a).localeCompare(String(b), undefined, {numeric: true}); }
function pager(host, state, total, redraw){
  host.textContent = ''; var pages = Math.max(1, Math.ceil(total / state.size)); state.page = Math.min(state.page, pages - 1);
  var first = el('button', null, '«'), prev = el('button', null, '‹'), next = el('button', null, '›'), last = el('button', null, '»');
  first.onclick = function(){ state.page = 0; redraw(); }; prev.onclick = function(){ state.page = Math.max(0, state.page - 1); redraw(); };
  next.onclick = function(){ state.page = Math.min(pages - 1, state.page + 1); redraw(); }; last.onclick = function(){ state.page = pages - 1; redraw(); };
  var start = total ? state.page * state.size + 1 : 0, end = Math.min(total, (state.page + 1) * state.size);
  var sizes = el('select', {'class': 'page-size', 'aria-label': 'rows per page'});
  [25, 50, 100, 500, 'all'].forEach(function(s){ var o = el('option', {value: s}, s === 'all' ? 'all' : s + ' per page');
    if ((s === 'all' && state.size >= 1e9) || s === state.size) o.selected = true; sizes.appendChild(o); });
  sizes.onchange = function(){ state.size = sizes.value === 'all' ? 1e9 : +sizes.value; state.page = 0; redraw(); };
  [first, prev].forEach(function(b){ b.disabled = state.page === 0; host.appendChild(b); });
  host.appendChild(el('span', {'class': 'range'}, start + '–' + end + ' of ' + total));
  [next, last].forEach(function(b){ b.disabled = state.page >= pages - 1; host.appendChild(b); });
  host.appendChild(sizes);
  return [start ? start - 1 : 0, end];
}
function DataTable(host, columns, rowsFn, opts){
  opts = opts || {}; var state = {page: 0, size: opts.size || D.page_size || 50, key: null, desc: false};
  var top = el('div', {'class': 'pager'}), table = el('table'), thead = el('thead'), tbody = el('tbody');
  var filter = null;
  if (opts.filter) { filter = el('input', {type: 'search', placeholder: 'filter', 'class': 'table-filter'});
    filter.oninput = function(){ state.page = 0; redraw(); }; host.appendChild(filter); }
  host.appendChild(top); table.appendChild(thead); table.appendChild(tbody); host.appendChild(table);
  var tr = el('tr'); columns.forEach(function(c){ var th = el('th', {'data-key': c}, c.replace(/^meta_/, ''));
    th.onclick = function(){ state.desc = state.key === c ? !state.desc : false; state.key = c; state.page = 0; redraw(); }; tr.appendChild(th); });
  thead.appendChild(tr);
  function rows(){ var r = rowsFn(); if (filter && filter.value) { var q = filter.value.toLowerCase();
      r = r.filter(function(x){ return columns.some(function(c){ return fmt(x[c]).toLowerCase().indexOf(q) >= 0; }); }); }
    if (state.key) { var k = state.key, s = state.desc ? -1 : 1; r = r.slice().sort(function(a, b){ return s * cmp(a[k], b[k]); }); }
    return r; }
  // a numeric column without a value (a NaN upstream, a metric that does not apply) says n/a
  var numeric = {}; columns.forEach(function(c){ numeric[c] = rows().some(function(x){ return typeof x[c] === 'number'; }); });
  function redraw(){
    var r = rows(), span = pager(top, state, r.length, redraw); tbody.textContent = '';
    Array.prototype.forEach.call(thead.rows[0].cells, function(th){ th.className = th.dataset.key === state.key ? (state.desc ? 'sorted-desc' : 'sorted-asc') : ''; });
    r.slice(span[0], span[1]).forEach(function(x){
      var row = el('tr', x.verdict ? {'class': x.verdict} : null);
      columns.forEach(function(c){ var td = el('td', null, x[c] === null && numeric[c] ? 'n/a' : fmt(x[c]));
        if (c === 'verdict') td.className = 'v';
        if (c === 'unit_id' && D.details[x[c]]) { td.className = 'link'; td.onclick = function(){ showDetail(x[c]); }; }
        row.appendChild(td); });
      tbody.appendChild(row); });
    if (opts.onchange) opts.onchange(r);
  }
  this.redraw = redraw; redraw();
}
var unitFilter = document.getElementById('unit-filter'), verdictFilter = document.getElementById('verdict-filter');
function filteredUnits(){
  var q = (unitFilter.value || '').toLowerCase(), v = verdictFilter.value;
  return D.units.filter(function(u){ if (v && u.verdict !== v) return false; if (!q) return true;
    return D.columns.some(function(c){ return fmt(u[c]).toLowerCase().indexOf(q) >= 0; }); });
}
var galleryState = {page: 0, size: D.page_size || 50}, galleryRows = D.units, ownContrast = document.getElementById('own-contrast');
ownContrast.addEventListener('change', function(){ drawGallery(); });
function drawGallery(){
  var host = document.getElementById('gallery-cards'), span = pager(document.getElementById('gallery-pager'), galleryState, galleryRows.length, drawGallery);
  host.textContent = '';
  var meta = D.columns.filter(function(c){ return c.indexOf('meta_') === 0; });
  galleryRows.slice(span[0], span[1]).forEach(function(u){
    var card = el('div', {'class': 'card', 'data-unit': u.unit_id, tabindex: 0});
    var head = el('div'); head.appendChild(el('span', {'class': 'badge ' + u.verdict}, u.verdict)); head.appendChild(document.createTextNode(' '));
    head.appendChild(el('span', {'class': 'id'}, u.unit_id)); card.appendChild(head);
    var src = (ownContrast.checked && D.thumbnails_own[u.unit_id]) || D.thumbnails[u.unit_id];
    if (src) card.appendChild(el('img', {src: src, alt: 'unit ' + u.unit_id, loading: 'lazy', width: 160, height: 160}));
    else card.appendChild(el('div', {'class': 'noimg'}, 'no image'));
    card.appendChild(el('div', null, (u.object_count === null || u.object_count === undefined ? '–' : u.object_count) + ' objects · ' +
      meta.map(function(c){ return fmt(u[c]); }).filter(Boolean).join(' · ')));
    var issues = fmt(u.issues); if (issues) { var ul = el('ul'); issues.split(';').forEach(function(i){ ul.appendChild(el('li', null, i)); }); card.appendChild(ul); }
    card.onclick = function(){ showDetail(u.unit_id); };
    card.onkeydown = function(ev){ if (ev.key === 'Enter') showDetail(u.unit_id); };
    host.appendChild(card);
  });
}
function kvTable(pairs){ var t = el('table', {'class': 'kv'}); pairs.forEach(function(p){ if (p[1] === null || p[1] === undefined || p[1] === '') return;
  var r = el('tr'); r.appendChild(el('th', null, p[0])); r.appendChild(el('td', null, p[1] === null ? 'n/a' : fmt(p[1]))); t.appendChild(r); }); return t; }
function list(title, items, line){ var box = el('div'); if (!items || !items.length) return box; box.appendChild(el('h4', null, title));
  var ul = el('ul'); items.forEach(function(i){ ul.appendChild(el('li', null, line(i))); }); box.appendChild(ul); return box; }
function showDetail(uid){
  var d = D.details[uid], u = D.units.find(function(x){ return x.unit_id === uid; }), body = document.getElementById('detail-body');
  body.textContent = '';
  // previous / next within the units the filters show (arrow keys too)
  var shown = filteredUnits().map(function(x){ return x.unit_id; }), at = shown.indexOf(uid);
  var nav = el('div', {'class': 'detail-nav'});
  [['‹ previous', at - 1, 'detail-prev'], ['next ›', at + 1, 'detail-next']].forEach(function(b){
    var button = el('button', {id: b[2]}, b[0]); button.disabled = at < 0 || b[1] < 0 || b[1] >= shown.length;
    button.onclick = function(){ showDetail(shown[b[1]]); }; nav.appendChild(button); });
  nav.appendChild(el('span', {'class': 'muted'}, at >= 0 ? ' ' + (at + 1) + ' of ' + shown.length : ''));
  body.appendChild(nav);
  var h = el('h3'); h.appendChild(el('span', {'class': 'badge ' + u.verdict}, u.verdict)); h.appendChild(document.createTextNode(' ' + uid)); body.appendChild(h);
  var src = d.image || D.thumbnails[uid];
  if (src) body.appendChild(el('img', {src: src, alt: 'detail of unit ' + uid, id: 'detail-image'}));
  if (!d.image) body.appendChild(el('p', {'class': 'muted'}, 'Detail images are embedded for reports of up to report.detail_images_max_units units; the full overlay is ' + d.overlay_file));
  body.appendChild(el('p', {'class': 'muted'}, 'Left: the input channel in the run\'s shared contrast (a dim field looks dim); ' +
    'right: segmentation outlines on the field\'s own contrast. ' +
    (d.scale_bar ? 'Scale bar (white, bottom right): ' + d.scale_bar + '.' : 'No scale bar: the image has no pixel size.')));
  if (d.summary) body.appendChild(el('blockquote', null, d.summary));
  body.appendChild(kvTable([['source', d.source], ['scene', d.scene], ['image', d.size], ['pixel size', d.pixel_size], ['channels', d.channels], ['reviewer', d.reviewer],
    ['review status', d.status], ['LLM verdict', d.llm_verdict], ['rules verdict', d.rules_verdict],
    ['count: segmented / estimated by the LLM', d.count_check && d.count_check.estimated !== null ? fmt(d.count_check.segmented) + ' / ' + fmt(d.count_check.estimated) : null]]
    .concat(Object.keys(d.metrics).map(function(k){ return [k, d.metrics[k] === null ? 'n/a' : d.metrics[k]]; }))
    .concat(D.columns.filter(function(c){ return c.indexOf('meta_') === 0; }).map(function(c){ return [c.slice(5), u[c]]; }))));
  body.appendChild(list('Issues', d.issues, function(i){ return i.type + ' (' + i.severity + '): ' + i.evidence; }));
  body.appendChild(list('Flags (reviewer vs numbers)', d.flags, function(f){ return f.check + ': reviewer says ' + f.llm_says + ' / numbers say ' + f.numbers_say; }));
  body.appendChild(list('Suggested actions', d.actions, function(a){ return a.action + ': ' + a.detail; }));
  if (d.critique) body.appendChild(list('Critique of the segmentation', [d.critique], function(c){ return 'merged ' + c.merged + ', split ' + c.split + ', missed ' + c.missed + ', artefacts ' + c.artefacts + '. ' + c.comment; }));
  body.appendChild(list('Answers', d.answers, function(a){ return a.question + ' — ' + a.answer + ': ' + a.evidence; }));
  if (d.refinement) body.appendChild(list('Refinement of the segmentation by the critique', [d.refinement], function(r){ return r; }));
  if (d.human) body.appendChild(list('Corrected by a person', [d.human], function(h){ return 'verdict ' + h.verdict + ' (machine: ' +
    h.machine_verdict + '; overruled: ' + h.overruled + ')' + (h.comment ? ': ' + h.comment : ''); }));
  body.appendChild(correctionForm(uid, d, u));
  var dlg = document.getElementById('detail'); if (!dlg.open) dlg.showModal();
}
document.getElementById('detail-close').onclick = function(){ document.getElementById('detail').close(); };
document.addEventListener('keydown', function(ev){
  if (!document.getElementById('detail').open || /INPUT|SELECT|TEXTAREA/.test((ev.target || {}).tagName || '')) return;
  var b = document.getElementById(ev.key === 'ArrowLeft' ? 'detail-prev' : ev.key === 'ArrowRight' ? 'detail-next' : '');
  if (b && !b.disabled) { ev.preventDefault(); b.click(); } });
document.getElementById('detail').addEventListener('click', function(ev){ if (ev.target === this) this.close(); });
var tables = {};
document.querySelectorAll('.dt[data-table]').forEach(function(host){
  var name = host.dataset.table;
  if (name === 'units') tables.units = new DataTable(host, D.columns, filteredUnits, {onchange: function(r){ galleryRows = r; galleryState.page = 0; drawGallery(); }});
  else { var rows = D[name] || []; tables[name] = new DataTable(host, rows.length ? Object.keys(rows[0]) : [], function(){ return rows; }, {filter: true}); }
});
function refilter(){ tables.units.redraw(); }
unitFilter.addEventListener('input', refilter); verdictFilter.addEventListener('change', refilter);
// -- corrections by a person: kept in this browser (localStorage) until exported as a file for review.corrections
var STORE = 'snakescope-corrections:' + D.dataset, memory = {};
function loadPage(){ try { return JSON.parse(window.localStorage.getItem(STORE) || '{}'); } catch (err) { return memory; } }
function savePage(c){ memory = c; try { window.localStorage.setItem(STORE, JSON.stringify(c)); } catch (err) { /* memory only */ } updateCount(); }
function runCorrections(){ var out = {}; Object.keys(D.details).forEach(function(uid){ var h = D.details[uid].human;
  if (h) out[uid] = {unit_id: uid, verdict: h.verdict, issues: h.issues, comment: h.comment, machine_verdict: h.machine_verdict}; }); return out; }
function updateCount(){ var n = Object.keys(loadPage()).length, r = Object.keys(runCorrections()).length;
  document.getElementById('corrections-count').textContent = n + ' correction(s) made in this page' + (r ? ', ' + r + ' from this run\'s file' : ''); }
function correctionForm(uid, d, u){
  var box = el('fieldset', {id: 'correction-form'}), mine = loadPage()[uid] || (d.human ? runCorrections()[uid] : null);
  box.appendChild(el('legend', null, 'Your review of this unit'));
  var verdict = el('select', {id: 'correction-verdict'});
  [['', 'keep the machine\'s verdict (' + u.verdict + ')'], ['pass', 'pass'], ['warn', 'warn'], ['fail', 'fail']].forEach(function(o){
    var opt = el('option', {value: o[0]}, o[1]); if (mine && mine.verdict === o[0]) opt.selected = true; verdict.appendChild(opt); });
  var issues = el('input', {id: 'correction-issues', size: 30, placeholder: 'issues, comma-separated (e.g. debris)'});
  issues.value = mine && mine.issues ? mine.issues.join(', ') : '';
  var comment = el('input', {id: 'correction-comment', size: 50, placeholder: 'comment (e.g. actually fine)'});
  comment.value = mine ? mine.comment || '' : '';
  var save = el('button', {id: 'correction-save'}, 'Save correction'), state = el('span', {'class': 'muted', id: 'correction-state'});
  save.onclick = function(){ var all = loadPage();
    if (!verdict.value) { delete all[uid]; state.textContent = 'no correction'; }
    else { all[uid] = {unit_id: uid, verdict: verdict.value, comment: comment.value.trim(), machine_verdict: d.human ? d.human.machine_verdict : u.verdict,
      issues: issues.value.split(',').map(function(s){ return s.trim(); }).filter(function(s){ return s; }),
      created: new Date().toISOString()}; state.textContent = 'saved in this browser; export to use it'; }
    savePage(all); };
  [verdict, issues, comment, save, state].forEach(function(n){ box.appendChild(n); box.appendChild(document.createTextNode(' ')); });
  return box;
}
document.getElementById('corrections-export').onclick = function(){
  var merged = runCorrections(), page = loadPage(); Object.keys(page).forEach(function(k){ merged[k] = page[k]; });
  var doc = {format: 'snakescope-corrections', version: 1, dataset: D.dataset, exported: new Date().toISOString(),
             corrections: Object.keys(merged).sort().map(function(k){ return merged[k]; })};
  var url = URL.createObjectURL(new Blob([JSON.stringify(doc, null, 1)], {type: 'application/json'}));
  var a = el('a', {href: url, download: 'corrections-' + (D.dataset || 'snakescope') + '.json'}); document.body.appendChild(a); a.click();
  setTimeout(function(){ URL.revokeObjectURL(url); a.remove(); }, 1000); };
document.getElementById('corrections-clear').onclick = function(){ savePage({}); };
updateCount();
window.snakescopeReport = {units: D.units.length, showDetail: showDetail};
})();
"""

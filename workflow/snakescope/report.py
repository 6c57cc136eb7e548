"""Stage 6, report: machine-readable tables of units, objects, reviews and failures, and a self-contained HTML page."""

from __future__ import annotations

import base64
import csv
import html
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from .records import read_json, write_json
from .review import model_channel_name

METRIC_COLUMNS = ["snr", "focus_laplacian", "power_log_log_slope", "focus_normalized_variance", "percent_saturated",
                  "percent_minimal", "foreground_fraction", "background", "noise", "mean", "max"]
SUMMARY_COLUMNS = ["object_count", "density_per_mm2", "diameter_um_median", "diameter_um_p10", "diameter_um_p90",
                   "area_um2_median", "fraction_low_solidity"]


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _merge_objects(out, batches: list[str], results: Path, refined_units: dict[str, Path]) -> None:
    """objects.csv of every batch, with the rows of refined units taken from the review's refined_objects.csv."""
    from .segmentation import OBJECT_COLUMNS

    writer = csv.DictWriter(out, fieldnames=OBJECT_COLUMNS)
    writer.writeheader()
    for batch in batches:
        for row in _read_csv(results / "segmentation" / batch / "objects.csv"):
            if row["unit_id"] not in refined_units:
                writer.writerow(row)
        refined = results / "review" / batch / "refined_objects.csv"
        if refined.is_file():
            writer.writerows(r for r in _read_csv(refined) if r["unit_id"] in refined_units)


def condition_aggregates(units: list[dict[str, Any]], reviews: list[dict[str, Any]], condition_column: str) -> dict[str, Any]:
    """Per condition: units, verdicts, median count and diameter, and the answers to the dataset's questions."""
    import statistics

    by_unit = {r["unit_id"]: r for r in reviews}
    groups: dict[str, list[dict[str, Any]]] = {}
    for unit in units:
        groups.setdefault(unit.get(f"meta_{condition_column}") or "(none)", []).append(unit)
    out: dict[str, Any] = {}
    for condition, members in sorted(groups.items()):
        counts = [float(u["object_count"]) for u in members if u.get("object_count") not in (None, "")]
        diameters = [float(u["diameter_um_median"]) for u in members if u.get("diameter_um_median") not in (None, "")]
        answers: dict[str, Counter] = {}
        for unit in members:
            for answer in by_unit.get(unit["unit_id"], {}).get("answers", []):
                answers.setdefault(answer["question"], Counter())[answer["answer"]] += 1
        out[condition] = {
            "units": len(members),
            "verdicts": dict(Counter(u.get("verdict") or "unreviewed" for u in members)),
            "median_count": round(statistics.median(counts), 1) if counts else None,
            "median_diameter_um": round(statistics.median(diameters), 1) if diameters else None,
            "answers": {q: dict(c) for q, c in answers.items()},
        }
    return out


def build_tables(batches: list[str], results: Path, channels: tuple[str | int, ...], out_dir: str | Path,
                 condition_column: str = "treatment") -> dict[str, Any]:
    """Merge every batch's stage outputs into units.csv, objects.csv, reviews.csv/.jsonl, failures.csv,
    answers.csv (questions per condition) and aggregates.json (the numbers the run summary may quote)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    units, failures, reviews = [], [], []
    refined_units: dict[str, Path] = {}
    review_backends = Counter()
    for batch in batches:
        imported = read_json(results / "import" / batch / "manifest.json")
        quality = read_json(results / "quality" / f"{batch}.json")
        inference = read_json(results / "inference" / batch / "manifest.json")
        post = read_json(results / "segmentation" / batch / "summary.json")
        review_doc = read_json(results / "review" / batch / "reviews.json")
        review_backends[review_doc["backend"]] += 1
        reviewed = {r["unit_id"]: r for r in review_doc["reviews"]}
        failures += imported["failures"] + quality["failures"] + inference["failures"] + post["failures"]
        failed_units = {f["unit_id"] for f in quality["failures"] + inference["failures"] + post["failures"]}
        for unit in imported["units"]:
            uid = unit["unit_id"]
            metrics = quality["metrics"].get(uid, {}).get(model_channel_name(unit, channels), {})
            review = reviewed.get(uid, {})
            refinement = review.get("refinement") or {}
            summary = refinement.get("summary") if refinement.get("applied") else post["summaries"].get(uid, {})
            overlay = results / "review" / batch / f"{uid}.overlay.png"
            if refinement.get("applied"):
                refined_units[uid] = overlay
            elif not (overlay := results / "segmentation" / batch / f"{uid}.overlay.png").is_file():
                overlay = None
            units.append({
                "unit_id": uid, "sample_id": unit["sample_id"], "batch": batch, "scene": unit["scene_name"],
                "source_path": unit["source_path"], "status": "failed" if uid in failed_units else "ok",
                "pixel_size_x_um": unit["pixel_size_um"]["x"], "pixel_size_y_um": unit["pixel_size_um"]["y"],
                "height": unit["shape"][-2], "width": unit["shape"][-1], "channels": "|".join(unit["channel_names"]),
                **{f"meta_{k}": v for k, v in unit["metadata"].items()},
                **{m: metrics.get(m) for m in METRIC_COLUMNS},
                **{k: (summary or {}).get(k) for k in SUMMARY_COLUMNS},
                "verdict": review.get("verdict"),
                "issues": ";".join(i["type"] for i in review.get("issues", [])),
                "review_backend": review.get("reviewer", {}).get("backend"),
                "review_status": review.get("status", "reviewed" if review else None),
                "llm_verdict": review.get("llm_verdict"),
                "llm_estimated_count": (review.get("count_check") or {}).get("estimated"),
                "flags": len(review.get("flags", [])),
                "refined": bool(refinement.get("applied")),
                "overlay": str(overlay) if overlay else "",
            })
            if review:
                reviews.append(review)
    with open(out / "objects.csv", "w", newline="", encoding="utf-8") as handle:
        _merge_objects(handle, batches, results, refined_units)
    columns = list(dict.fromkeys(k for row in units for k in row))
    _write_csv(out / "units.csv", units, columns)
    _write_csv(out / "failures.csv", failures, ["stage", "source_path", "sample_id", "unit_id", "reason"])
    review_rows = [{
        "unit_id": r["unit_id"], "backend": r["reviewer"]["backend"], "uses_llm": r["reviewer"].get("uses_llm", False),
        "status": r.get("status", "reviewed"), "verdict": r["verdict"], "llm_verdict": r.get("llm_verdict"),
        "rules_verdict": (r.get("second_opinion") or {}).get("verdict", r["verdict"]),
        "issues": ";".join(f"{i['type']}:{i['severity']}" for i in r["issues"]),
        "evidence": " | ".join(i["evidence"] for i in r["issues"]),
        "flags": " | ".join(f"{f['check']}: LLM {f['llm_says']} / numbers {f['numbers_say']}" for f in r.get("flags", [])),
        "actions": ";".join(a["action"] for a in r["suggested_actions"]), "confidence": r["confidence"],
        "segmented_count": r["count_check"]["segmented"], "estimated_count": r["count_check"]["estimated"],
        "summary": r["summary"],
    } for r in reviews]
    _write_csv(out / "reviews.csv", review_rows, list(review_rows[0]) if review_rows else ["unit_id"])
    with open(out / "reviews.jsonl", "w", encoding="utf-8") as handle:
        for review in reviews:
            handle.write(json.dumps(review, sort_keys=True) + "\n")
    conditions = condition_aggregates(units, reviews, condition_column)
    answer_rows = [{"condition": c, "question": q, "yes": n.get("yes", 0), "no": n.get("no", 0), "unsure": n.get("unsure", 0)}
                   for c, agg in conditions.items() for q, n in agg["answers"].items()]
    _write_csv(out / "answers.csv", answer_rows, ["condition", "question", "yes", "no", "unsure"])
    issues = Counter(i["type"] for r in reviews for i in r["issues"])
    aggregates = {
        "units": len(units), "failed_inputs": len(failures),
        "verdicts": dict(Counter(u["verdict"] or "unreviewed" for u in units)),
        "issues": dict(issues), "condition_column": condition_column, "conditions": conditions,
        "review_backends": dict(review_backends),
        "flags": sum(len(r.get("flags", [])) for r in reviews), "refined_units": len(refined_units),
    }
    write_json(out / "aggregates.json", aggregates)
    return {"units": len(units), "failures": len(failures), "reviews": len(reviews)}


# --- HTML --------------------------------------------------------------------------------------

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{margin-bottom:.2em} .muted{color:#666} .banner{padding:.6em 1em;border-radius:6px;margin:1em 0}
.banner.rules{background:#fff4d6;border:1px solid #e0b84c} .banner.llm{background:#e6f2ff;border:1px solid #6aa0d8}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0} th,td{border:1px solid #ddd;padding:3px 6px;text-align:left}
th{background:#f3f3f3;cursor:pointer} .pass{background:#d9f2d9} .warn{background:#fff0c2} .fail{background:#f8d0d0}
.failed{background:#f8d0d0} .gallery{display:flex;flex-wrap:wrap;gap:10px} .card{border:1px solid #ccc;border-radius:6px;padding:6px;width:270px;font-size:.8em}
.card img{width:100%;image-rendering:pixelated} .badge{display:inline-block;padding:1px 6px;border-radius:4px;font-weight:bold}
code{font-size:.85em} details{margin:.5em 0}
"""

SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function(th, col){
  th.addEventListener('click', function(){
    var body = th.closest('table').tBodies[0]; var rows = Array.from(body.rows);
    var asc = th.dataset.asc !== 'true'; th.dataset.asc = asc;
    rows.sort(function(a, b){
      var x = a.cells[col].textContent, y = b.cells[col].textContent, nx = parseFloat(x), ny = parseFloat(y);
      var r = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y); return asc ? r : -r; });
    rows.forEach(function(r){ body.appendChild(r); });
  });
});
"""


def _e(value: Any) -> str:
    """Escape any value for HTML text or attribute context."""
    if value is None:
        return ""
    if isinstance(value, float):
        return html.escape(f"{value:.4g}")
    return html.escape(str(value), quote=True)


def _table(rows: list[dict[str, Any]], columns: list[str], cls: str = "sortable", row_class: str | None = None) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = []
    for row in rows:
        klass = f' class="{_e(row.get(row_class))}"' if row_class and row.get(row_class) else ""
        body.append(f"<tr{klass}>" + "".join(f"<td>{_e(_num(row.get(c)))}</td>" for c in columns) + "</tr>")
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _num(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value) if value and any(ch.isdigit() for ch in value) and "." in value else value
        except ValueError:
            return value
    return value


def render_html(tables_dir: str | Path, results: Path, batches: list[str], info: dict[str, Any]) -> str:
    """The self-contained HTML report (inline CSS, JS and base64 PNGs; no external assets)."""
    tables = Path(tables_dir)
    units = _read_csv(tables / "units.csv")
    failures = _read_csv(tables / "failures.csv")
    reviews = {}
    with open(tables / "reviews.jsonl", encoding="utf-8") as handle:
        for line in handle:
            review = json.loads(line)
            reviews[review["unit_id"]] = review
    verdicts = Counter(u["verdict"] or "unreviewed" for u in units)
    uses_llm = any(r["reviewer"].get("uses_llm") for r in reviews.values())
    fallback = [r for r in reviews.values() if r.get("status") == "fallback"]
    run_summary = info.get("run_summary") or {}
    model = info.get("model", {})
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>snakescope report: {_e(info.get('dataset'))}</title>",
             f"<style>{STYLE}</style></head><body>",
             f"<h1>snakescope report: {_e(info.get('dataset'))}</h1>",
             f"<p class='muted'>generated {_e(info.get('generated'))} · snakescope {_e(info.get('version'))}</p>"]
    if uses_llm:
        parts.append("<div class='banner llm' id='review-backend'><b>Review backend: Ollama vision model</b> "
                     f"({_e(next(r['reviewer']['name'] for r in reviews.values() if r['reviewer'].get('uses_llm')))}), "
                     "checked against the measurements and a rule-based second opinion.</div>")
    if fallback:
        parts.append(f"<div class='banner rules' id='review-fallback'><b>{len(fallback)} unit(s) were reviewed by the rule-based "
                     "fallback because the LLM reviewer was unavailable — no LLM was used for them.</b> "
                     f"Reason: {_e(fallback[0]['summary'][:300])}</div>")
    elif not uses_llm:
        parts.append("<div class='banner rules' id='review-backend'><b>Review backend: deterministic rules — no LLM was used.</b> "
                     "Verdicts come from fixed thresholds on quality metrics and object measurements "
                     "(config section <code>review</code>), not from a vision model.</div>")
    parts.append("<h2>Summary</h2><table><tbody>" + "".join(
        f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in [
            ("image units", len(units)), ("pass", verdicts.get("pass", 0)), ("warn", verdicts.get("warn", 0)),
            ("fail", verdicts.get("fail", 0)), ("failed inputs / steps", len(failures)),
            ("model", f"{model.get('name')} ({model.get('source')})"), ("model digest", model.get("digest")),
            ("model test", (model.get("test") or {}).get("status")), ("weight format", model.get("weight_format")),
        ]) + "</tbody></table>")
    if run_summary.get("text"):
        who = "written by the LLM" if run_summary.get("uses_llm") else "rule-based template, no LLM"
        mismatched = run_summary.get("numbers_mismatched") or []
        check = (f"<p class='fail'>Numbers not found in the tables: {_e(', '.join(mismatched))}</p>" if mismatched
                 else f"<p class='muted'>All {len(run_summary.get('numbers_checked', []))} numbers quoted were checked against the tables.</p>")
        parts.append(f"<h2 id='narrative'>Summary ({_e(who)})</h2><p>{_e(run_summary['text'])}</p>{check}")
    parts.append(f"<h2 id='failures'>Failed inputs and steps ({len(failures)})</h2>")
    parts.append(_table(failures, ["stage", "source_path", "sample_id", "unit_id", "reason"]) if failures else "<p>None.</p>")
    meta_cols = [c for c in (units[0].keys() if units else []) if c.startswith("meta_")]
    unit_cols = ["unit_id", "verdict", "issues", "object_count", "density_per_mm2", "diameter_um_median", "snr",
                 "focus_laplacian", "percent_saturated", "foreground_fraction", "pixel_size_x_um", *meta_cols, "status"]
    parts.append(f"<h2 id='units'>Units ({len(units)})</h2><p class='muted'>Click a column header to sort. "
                 "Metrics are for the model's input channel; see config/README.md for each measure.</p>")
    parts.append(_table(units, unit_cols, row_class="verdict"))
    parts.append("<h2 id='gallery'>Gallery</h2><p class='muted'>Left: contrast-stretched input; right: segmentation outlines. "
                 "Scale bar bottom right.</p><div class='gallery'>")
    for unit in units:
        uid = unit["unit_id"]
        overlay = Path(unit["overlay"]) if unit.get("overlay") else None
        img = (f"<a href='#big-{_e(uid)}'><img alt='{_e(uid)}' src='data:image/png;base64,{base64.b64encode(overlay.read_bytes()).decode()}'></a>"
               if overlay and overlay.is_file() else "<p><i>no segmentation</i></p>")
        review = reviews.get(uid, {})
        issues = "".join(f"<li><b>{_e(i['type'])}</b> ({_e(i['severity'])}): {_e(i['evidence'])}</li>" for i in review.get("issues", []))
        verdict = unit["verdict"] or "unreviewed"
        parts.append(f"<div class='card' id='unit-{_e(uid)}'><div><span class='badge {_e(verdict)}'>{_e(verdict)}</span> "
                     f"<b>{_e(uid)}</b></div>{img}<div>{_e(unit['object_count'])} objects · "
                     + " · ".join(_e(unit[c]) for c in meta_cols if unit.get(c)) + f"</div><ul>{issues}</ul></div>")
    parts.append("</div>")
    parts.append("<h2 id='provenance'>Provenance</h2>")
    for title, key in [("Model check", "model"), ("Software versions", "software"), ("Parameters (config)", "params")]:
        parts.append(f"<details><summary>{_e(title)}</summary><pre>{_e(json.dumps(info.get(key), indent=1, sort_keys=True, default=str))}</pre></details>")
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(parts)


def write_report(tables_dir: str | Path, results: str | Path, batches: list[str], model_check: str | Path,
                 pipeline_info: str | Path, dataset: str, out_html: str | Path, run_summary: str | Path | None = None) -> None:
    from datetime import datetime, timezone

    from . import __version__

    info_dir = Path(pipeline_info)
    info = {
        "dataset": dataset,
        "version": __version__,
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": read_json(model_check),
        "software": read_json(info_dir / "software_versions.json"),
        "params": read_json(info_dir / "params.json"),
        "run_summary": read_json(run_summary) if run_summary else None,
    }
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(render_html(tables_dir, Path(results), batches, info), encoding="utf-8")
    shutil.move(tmp, out)

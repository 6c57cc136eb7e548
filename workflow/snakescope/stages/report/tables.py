"""Stage 6a, tables: every batch's stage outputs merged into machine-readable tables (CSV, JSON) per dataset:
units, objects, reviews, failures, answers per condition, aggregates, and the acquisition actions."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

from ...core.layout import BatchPaths, manifest
from ...core.records import ACQUISITION_ACTIONS, read_csv, read_json, write_json
from ...core.channels import model_channel_name
from .columns import write_parquet

METRIC_COLUMNS = ["snr", "blur", "focus_laplacian", "power_log_log_slope", "focus_normalized_variance", "percent_saturated",
                  "percent_minimal", "foreground_fraction", "background", "background_unevenness", "noise", "mean", "max"]
SUMMARY_COLUMNS = ["object_count", "length_unit", "density_per_mm2", "diameter_um_median", "diameter_um_p10", "diameter_um_p90",
                   "area_um2_median", "diameter_px_median", "typical_diameter_px", "fraction_large", "fraction_low_solidity",
                   "removed_low_contrast"]


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def group_by_condition(units: list[dict[str, Any]], condition_column: str) -> dict[str, list[dict[str, Any]]]:
    """Units by their sample-sheet condition (``meta_<column>``; missing -> "(none)"), conditions sorted."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for unit in units:
        groups.setdefault(unit.get(f"meta_{condition_column}") or "(none)", []).append(unit)
    return dict(sorted(groups.items()))


# Identifiers and free text stay text in Parquet even when they look like numbers (sample "001", well "12").
def _merge_objects(path: Path, batches: list[BatchPaths], refined_units: dict[str, Path],
                   unit_meta: dict[str, dict[str, Any]]) -> None:
    """objects.csv of every batch, with the rows of refined units taken from the review's refined_objects.csv, each
    row carrying its unit's sample id and sample-sheet metadata (well, condition, ...) and every channel's mean."""
    from ...methods.measurements import OBJECT_COLUMNS

    def rows():
        for batch in batches:
            for row in read_csv(batch.segmentation / "objects.csv"):
                if row["unit_id"] not in refined_units:
                    yield row
            for path in dict.fromkeys(p for p in refined_units.values() if p.parent.name == batch.batch):
                yield from (r for r in read_csv(path) if refined_units.get(r["unit_id"]) == path)

    channel_columns, meta_columns = {}, {}
    for batch in batches:  # headers only: the columns of every batch
        with open(batch.segmentation / "objects.csv", newline="", encoding="utf-8") as handle:
            channel_columns.update(dict.fromkeys(c for c in next(csv.reader(handle), []) if c not in OBJECT_COLUMNS))
    for meta in unit_meta.values():
        meta_columns.update(dict.fromkeys(k for k in meta if k != "sample_id"))
    columns = ["unit_id", "sample_id", *meta_columns, *OBJECT_COLUMNS[1:], *channel_columns]
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows():
            writer.writerow({**row, **unit_meta.get(row["unit_id"], {})})


USABLE_VERDICTS = ("pass", "warn")


def usable(unit: dict[str, Any], verdicts: tuple[str, ...] | list[str] = USABLE_VERDICTS) -> bool:
    """Does this unit count in the per-condition statistics (its verdict is one of ``report.usable_verdicts``)?"""
    return (unit.get("verdict") or "unreviewed") in verdicts and unit.get("status") != "failed"


def _medians(members: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    import statistics

    counts = [float(u["object_count"]) for u in members if u.get("object_count") not in (None, "")]
    diameters = [float(u["diameter_um_median"]) for u in members if u.get("diameter_um_median") not in (None, "")]
    return (round(statistics.median(counts), 1) if counts else None, round(statistics.median(diameters), 1) if diameters else None)


def condition_aggregates(units: list[dict[str, Any]], reviews: list[dict[str, Any]], condition_column: str,
                         usable_verdicts: tuple[str, ...] | list[str] = USABLE_VERDICTS) -> dict[str, Any]:
    """Per condition: units, verdicts, median count and diameter over the usable fields (``usable_verdicts``) and
    over all fields, and the answers to the dataset's questions."""
    by_unit = {r["unit_id"]: r for r in reviews}
    out: dict[str, Any] = {}
    for condition, members in group_by_condition(units, condition_column).items():
        kept = [u for u in members if usable(u, usable_verdicts)]
        median_count, median_diameter = _medians(kept)
        all_count, all_diameter = _medians(members)
        answers: dict[str, Counter] = {}
        for unit in members:
            for answer in by_unit.get(unit["unit_id"], {}).get("answers", []):
                answers.setdefault(answer["question"], Counter())[answer["answer"]] += 1
        out[condition] = {
            "units": len(members),
            "verdicts": dict(Counter(u.get("verdict") or "unreviewed" for u in members)),
            "usable_units": len(kept),
            "median_count": median_count, "median_diameter_um": median_diameter,
            "all_fields": {"median_count": all_count, "median_diameter_um": all_diameter},
            "answers": {q: dict(c) for q, c in answers.items()},
        }
    return out


ACTIONS_FORMAT = "snakescope-acquisition-actions"
ACTIONS_VERSION = 1


def review_acquisition_actions(review: dict[str, Any]) -> list[dict[str, str]]:
    """The actions at the microscope a review asks for (once each); a unit a stage failed on is re-acquired."""
    actions, seen = [], set()
    for action in review["suggested_actions"]:
        if action["action"] in ACQUISITION_ACTIONS and action["action"] not in seen:
            seen.add(action["action"])
            actions.append({"action": action["action"], "detail": action["detail"],
                            "decided_by": action.get("decided_by", "measurements")})
    failed = [i for i in review["issues"] if i["type"] == "processing_failed"]
    if failed and "reacquire" not in seen:
        actions.append({"action": "reacquire", "decided_by": "measurements",
                        "detail": f"processing failed ({failed[0]['evidence']}); check the "
                                                         "image and re-acquire it if it is damaged"})
    return actions


def unit_action_entry(unit: dict[str, Any], review: dict[str, Any], plate_column: str = "plate",
                      well_column: str = "well") -> dict[str, Any]:
    """One unit's entry of acquisition_actions.json (also the body of a watch-mode action record)."""
    metadata = unit.get("metadata", {})
    return {
        "unit_id": unit["unit_id"], "sample_id": unit["sample_id"], "source_path": unit["source_path"],
        "scene_index": unit["scene_index"], "scene_name": unit["scene_name"], "selection": unit.get("selection", {}),
        "position": {"plate": metadata.get(plate_column) or None, "well": metadata.get(well_column) or None},
        "metadata": metadata, "verdict": review["verdict"],
        "reviewer": review["reviewer"]["backend"] + ("" if review["reviewer"]["backend"] == "human correction"
                                                     else " (LLM)" if review["reviewer"].get("uses_llm") else " (rules)"),
        "issues": [{"type": i["type"], "severity": i["severity"], "evidence": i["evidence"]} for i in review["issues"]],
        "actions": review_acquisition_actions(review),
    }


def unreadable_entry(failure: dict[str, Any], plate_column: str = "plate", well_column: str = "well") -> dict[str, Any]:
    """The entry of a file that could not be read at all: re-acquire or re-export it."""
    metadata = failure.get("metadata") or {}
    return {
        "unit_id": failure.get("unit_id") or failure["sample_id"], "sample_id": failure["sample_id"],
        "source_path": failure["source_path"], "scene_index": 0, "scene_name": "", "selection": {},
        "position": {"plate": metadata.get(plate_column) or None, "well": metadata.get(well_column) or None},
        "metadata": metadata, "verdict": "fail", "reviewer": "snakescope (the file could not be read)",
        "issues": [{"type": "unreadable_input", "severity": "fail", "evidence": failure["reason"]}],
        "actions": [{"action": "reacquire", "decided_by": "measurements",
                     "detail": "the file could not be read; re-acquire or re-export it "
                                                      f"({failure['reason']})"}],
    }


def acquisition_actions(unit_records: list[dict[str, Any]], reviews: dict[str, dict[str, Any]], dataset: str,
                        plate_column: str = "plate", well_column: str = "well",
                        import_failures: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The units to re-acquire, in the documented JSON shape of ``workflow/schemas/acquisition_actions.schema.json``:
    units reviewed warn/fail with an acquisition action, units a stage failed on (``reacquire``, with the reason),
    and files that could not be read at all (``reacquire``: their unit id is the sample id); fail first, then by id."""
    entries = [unreadable_entry(failure, plate_column, well_column) for failure in import_failures or []]
    for unit in unit_records:
        review = reviews.get(unit["unit_id"])
        if not review or review["verdict"] == "pass":
            continue
        entry = unit_action_entry(unit, review, plate_column, well_column)
        if entry["actions"]:
            entries.append(entry)
    entries.sort(key=lambda e: (e["verdict"] != "fail", e["unit_id"]))
    return {"format": ACTIONS_FORMAT, "version": ACTIONS_VERSION, "dataset": dataset,
            "counts": dict(Counter(a["action"] for e in entries for a in e["actions"])), "units": entries}


def build_tables(batches: list[BatchPaths], channels: tuple[str | int, ...], out_dir: str | Path,
                 condition_column: str = "treatment", dataset: str = "", plate_column: str = "plate",
                 well_column: str = "well", usable_verdicts: tuple[str, ...] | list[str] = USABLE_VERDICTS,
                 corrections_path: str | Path | None = None) -> dict[str, Any]:
    """Merge every batch's stage outputs into units.csv, objects.csv, reviews.csv/.jsonl, failures.csv,
    answers.csv (questions per condition) and aggregates.json (the numbers the run summary may quote).
    ``batches``: where each batch's stage outputs are (:class:`.layout.BatchPaths`), in the run's order."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from ...core.corrections import agreement, corrected_review, load_corrections, overruled
    from ...core.channels import channel_choice_warning

    corrections = load_corrections(corrections_path) if corrections_path else {}
    final_reviews: dict[str, dict[str, Any]] = {}  # as decided: the machine's review, or the person's correction of it
    units, failures, reviews, unit_records, warnings = [], [], [], [], []
    refined_units: dict[str, Path] = {}
    review_backends = Counter()
    llm_runs: list[dict[str, Any]] = []
    results = batches[0].results if batches else Path(out_dir).parent
    for paths in batches:
        batch = paths.batch
        imported = read_json(manifest(paths.imported))
        quality = read_json(paths.quality)
        inference = read_json(manifest(paths.inference))
        post = read_json(paths.segmentation / "summary.json")
        review_doc = read_json(paths.refinement / "final.json")  # the final reviews and segmentation of the batch
        review_backends[review_doc["backend"]] += 1
        if review_doc.get("llm"):
            llm_runs.append({**review_doc["llm"], "batch": batch})
        reviewed = {r["unit_id"]: r for r in review_doc["reviews"]}
        failures += imported["failures"] + quality["failures"] + inference["failures"] + post["failures"]
        failed_units = {f["unit_id"] for f in quality["failures"] + inference["failures"] + post["failures"]}
        for unit in imported["units"]:
            uid = unit["unit_id"]
            unit_records.append(unit)
            warnings += [{"stage": "import", "source_path": unit["source_path"], "sample_id": unit["sample_id"], "unit_id": uid,
                          "warning": text} for text in unit.get("warnings", [])]
            choice = channel_choice_warning(unit["channel_names"], channels)
            if choice:
                warnings.append({"stage": "inference", "source_path": unit["source_path"], "sample_id": unit["sample_id"],
                                 "unit_id": uid, "warning": choice})
            metrics = quality["metrics"].get(uid, {}).get(model_channel_name(unit, channels), {})
            review = reviewed.get(uid, {})
            correction = corrections.get(uid)
            final = corrected_review(review, correction) if correction and review else review
            if review:
                final_reviews[uid] = final
            final_seg = review_doc["segmentation"][uid]
            summary, overlay = final_seg["summary"], final_seg["overlay"] and Path(final_seg["overlay"])
            if final_seg["refined"]:
                refined_units[uid] = Path(final_seg["objects_csv"])
            units.append({
                "unit_id": uid, "sample_id": unit["sample_id"], "batch": batch, "scene": unit["scene_name"],
                "source_path": unit["source_path"], "status": "failed" if uid in failed_units else "ok",
                "pixel_size_x_um": unit["pixel_size_um"]["x"], "pixel_size_y_um": unit["pixel_size_um"]["y"],
                "pixel_size_origin": unit.get("pixel_size_origin"),
                "height": unit["shape"][-2], "width": unit["shape"][-1], "channels": "|".join(unit["channel_names"]),
                **{f"meta_{k}": v for k, v in unit["metadata"].items()},
                **{m: metrics.get(m) for m in METRIC_COLUMNS},
                **{k: (summary or {}).get(k) for k in SUMMARY_COLUMNS},
                "verdict": final.get("verdict"),
                "issues": ";".join(i["type"] for i in final.get("issues", [])),
                "machine_verdict": review.get("verdict"),
                "human_verdict": correction.verdict if correction else None,
                "human_comment": correction.comment if correction else None,
                "overruled": overruled(correction, review) if correction and review else None,
                "review_backend": review.get("reviewer", {}).get("backend"),
                "review_status": review.get("status", "reviewed" if review else None),
                "llm_selection": review.get("llm_selection"),
                "llm_verdict": review.get("llm_verdict"),
                "llm_estimated_count": (review.get("count_check") or {}).get("estimated"),
                "flags": len(review.get("flags", [])),
                "refined": final_seg["refined"],
                "overlay": str(overlay.relative_to(results)) if overlay else "",  # relative to the results folder
            })
            if review:
                reviews.append(review)
    unknown = sorted(set(corrections) - {u["unit_id"] for u in units})
    for uid in unknown:
        warnings.append({"stage": "tables", "source_path": str(corrections_path), "sample_id": "", "unit_id": uid,
                         "warning": f"the corrections file names unit {uid!r}, which this run does not have; ignored"})
    unit_meta = {u["unit_id"]: {"sample_id": u["sample_id"], **{k: v for k, v in u.items() if k.startswith("meta_")}}
                 for u in units}
    _merge_objects(out / "objects.csv", batches, refined_units, unit_meta)
    columns = list(dict.fromkeys(k for row in units for k in row))
    write_csv(out / "units.csv", units, columns)
    metadata_of = {u["unit_id"]: u.get("metadata", {}) for u in unit_records}
    for failure in failures:  # each failure with its sample-sheet columns (the well to re-image, ...)
        failure.update({f"meta_{k}": v for k, v in (failure.get("metadata") or metadata_of.get(failure.get("unit_id"), {})).items()})
    meta_columns = list(dict.fromkeys(k for f in failures for k in f if k.startswith("meta_")))
    write_csv(out / "failures.csv", failures, ["stage", "source_path", "sample_id", "unit_id", "reason", *meta_columns])
    write_csv(out / "warnings.csv", warnings, ["stage", "source_path", "sample_id", "unit_id", "warning"])
    review_rows = [{
        "unit_id": r["unit_id"], "backend": r["reviewer"]["backend"], "uses_llm": r["reviewer"].get("uses_llm", False),
        "status": r.get("status", "reviewed"), "llm_selection": r.get("llm_selection"), "verdict": r["verdict"],
        "llm_verdict": r.get("llm_verdict"),
        "rules_verdict": (r.get("second_opinion") or {}).get("verdict", r["verdict"]),
        "issues": ";".join(f"{i['type']}:{i['severity']}" for i in r["issues"]),
        "evidence": " | ".join(i["evidence"] for i in r["issues"]),
        "flags": " | ".join(f"{f['check']}: LLM {f['llm_says']} / numbers {f['numbers_say']}" for f in r.get("flags", [])),
        "actions": ";".join(a["action"] for a in r["suggested_actions"]), "confidence": r["confidence"],
        "segmented_count": r["count_check"]["segmented"], "estimated_count": r["count_check"]["estimated"],
        "summary": r["summary"],
    } for r in reviews]
    write_csv(out / "reviews.csv", review_rows, list(review_rows[0]) if review_rows else ["unit_id"])
    with open(out / "reviews.jsonl", "w", encoding="utf-8") as handle:
        for review in reviews:
            handle.write(json.dumps(review, sort_keys=True) + "\n")
    conditions = condition_aggregates(units, reviews, condition_column, usable_verdicts)
    answer_rows = [{"condition": c, "question": q, "yes": n.get("yes", 0), "no": n.get("no", 0), "unsure": n.get("unsure", 0)}
                   for c, agg in conditions.items() for q, n in agg["answers"].items()]
    write_csv(out / "answers.csv", answer_rows, ["condition", "question", "yes", "no", "unsure"])
    issues = Counter(i["type"] for r in reviews for i in r["issues"])
    aggregates = {
        "units": len(units), "failed_inputs": len(failures), "warnings": len(warnings),
        "uncalibrated_units": sum(1 for u in unit_records if u["pixel_size_um"].get("x") is None),
        "verdicts": dict(Counter(u["verdict"] or "unreviewed" for u in units)),
        "issues": dict(issues), "condition_column": condition_column, "conditions": conditions,
        "usable_verdicts": list(usable_verdicts),
        "corrections": {
            "file": str(corrections_path) if corrections_path else None, "applied": sum(1 for u in units if u["human_verdict"]),
            "unknown_units": unknown,
            "overruled": dict(Counter(u["overruled"] for u in units if u["overruled"])),
            "agreement": agreement({r["unit_id"]: r for r in reviews}, corrections),
        },
        "review_backends": dict(review_backends),
        "llm": llm_aggregates(llm_runs, reviews),
        "flags": sum(len(r.get("flags", [])) for r in reviews), "refined_units": len(refined_units),
    }
    write_json(out / "aggregates.json", aggregates)
    review_dirs = {p.batch: p.review for p in batches}
    write_finetune_pairs(out / "finetune.jsonl", reviews, results, corrections,
                         {u["unit_id"]: review_dirs[u["batch"]] for u in units})
    actions = acquisition_actions(unit_records, final_reviews, dataset, plate_column, well_column,
                                  [f for f in failures if f["stage"] == "import"])
    write_json(out / "acquisition_actions.json", actions)
    for name in ("units", "objects", "reviews"):
        write_parquet(out / f"{name}.csv", name)
    return {"units": len(units), "failures": len(failures), "reviews": len(reviews), "reacquire": len(actions["units"])}


def llm_aggregates(runs: list[dict[str, Any]], reviews: list[dict[str, Any]]) -> dict[str, Any]:
    """What the LLM reviewer was (one entry per distinct server, model and self-test outcome, with its batches), which
    units it saw (``llm_selection``), and on the audited units how often it agreed with the rules."""
    distinct: dict[str, dict[str, Any]] = {}
    for run in runs:
        test = run.get("selftest") or {}
        entry = {k: run.get(k) for k in ("backend", "endpoint", "server_kind", "server_version", "model", "model_id",
                                         "context_size", "scope", "audit_fraction", "structured_output")}
        entry.update(selftest=("passed" if test.get("passed") else "skipped" if test.get("passed") is None else "failed"),
                     selftest_note=test.get("note"))
        key = json.dumps(entry, sort_keys=True, default=str)
        distinct.setdefault(key, {**entry, "batches": 0})["batches"] += 1
    audited = [r for r in reviews if r.get("llm_selection") == "audit" and r.get("status") == "reviewed"]
    agreed = sum(1 for r in audited if r.get("llm_verdict") == (r.get("second_opinion") or {}).get("verdict"))
    paid = [u for r in reviews if (u := ((r.get("reviewer") or {}).get("provenance") or {}).get("usage"))]
    cost = {"requests": len(paid), "prompt_tokens": sum(u.get("prompt_tokens") or 0 for u in paid),
            "completion_tokens": sum(u.get("completion_tokens") or 0 for u in paid),
            "seconds": round(sum(u.get("seconds") or 0 for u in paid), 1),
            "cached": sum(1 for r in reviews if ((r.get("reviewer") or {}).get("provenance") or {}).get("cache_hit"))}
    return {"runs": list(distinct.values()), "cost": cost,
            "warnings": [w for run in runs for w in run.get("warnings") or []],
            "reviewed_by_llm": sum(1 for r in reviews if r["reviewer"].get("uses_llm")),
            "selection": dict(Counter(r["llm_selection"] for r in reviews if r.get("llm_selection"))),
            "audit": {"units": len(audited), "agreed": agreed,
                      "disagreed_units": [r["unit_id"] for r in audited
                                          if r.get("llm_verdict") != (r.get("second_opinion") or {}).get("verdict")]}}


def write_finetune_pairs(path: Path, reviews: list[dict[str, Any]], results: Path, corrections: dict[str, Any],
                         review_dir_of: dict[str, Path]) -> int:
    """Image-text pairs for fine-tuning a vision model (docs/outputs.md): one JSON line per unit the LLM answered,
    with the images and prompt it was sent (paths relative to the results folder), its answer, the final verdict and,
    where a person corrected it, the correction; ``messages`` is the chat a PEFT/LoRA script trains on, its assistant
    turn the model's answer with the person's verdict where there is one."""
    written = 0
    with open(path, "w", encoding="utf-8") as handle:
        for review in reviews:
            prov = review["reviewer"].get("provenance") or {}
            if not (review["reviewer"].get("uses_llm") and prov.get("answer") and prov.get("sent_images")):
                continue
            batch_dir = review_dir_of[review["unit_id"]]
            if not (batch_dir / prov["answer"]).is_file():
                continue
            answer = read_json(batch_dir / prov["answer"])
            prompt = (batch_dir / prov["sent_prompt"]).read_text(encoding="utf-8")
            images = [str((batch_dir / p).relative_to(results)) for p in prov["sent_images"]]
            correction = corrections.get(review["unit_id"])
            target = {**answer, "verdict": correction.verdict} if correction else answer
            handle.write(json.dumps({
                "unit_id": review["unit_id"], "images": images, "prompt": prompt, "model_answer": answer,
                "final_verdict": correction.verdict if correction else review["verdict"],
                "rules_verdict": (review.get("second_opinion") or {}).get("verdict"),
                "human_correction": {"verdict": correction.verdict, "comment": correction.comment} if correction else None,
                "model": review["reviewer"]["name"], "backend": review["reviewer"]["backend"],
                "messages": [{"role": "user", "content": [*({"type": "image", "image": i} for i in images),
                                                          {"type": "text", "text": prompt}]},
                             {"role": "assistant", "content": json.dumps(target, sort_keys=True)}],
            }, sort_keys=True) + "\n")
            written += 1
    return written



def run_tables(*, batches: list[str], units: str, channels: tuple[str | int, ...], condition_column: str, dataset: str,
               plate_column: str, well_column: str, usable_verdicts: list[str], corrections: str | None = None) -> None:
    """Rule ``tables``: every batch's stage outputs (found with :class:`.layout.BatchPaths`) merged into the folder of
    the file named ``units``: units, objects, reviews, failures, warnings, answers, aggregates, acquisition actions."""
    import sys

    results = Path(units).parents[1]
    counts = build_tables([BatchPaths(results, batch) for batch in batches], channels, Path(units).parent, condition_column,
                          dataset, plate_column, well_column, usable_verdicts, corrections)
    print(f"tables: {counts}", file=sys.stderr)

"""Stage 5b, refinement: critique that acts, and the one place that decides which segmentation and review are final.

When the LLM's critique names a segmentation problem and its count points the same way, a bounded search over
post-processing settings (:func:`refine_segmentation`) re-segments the field; an improved result is written to
``refinement/<batch>/`` (labels, overlay, ``refined_objects.csv``), the review's count check and verdict are
checked again against it, and the review records the attempts under ``refinement``. The stage's ``final.json``
names, for every unit, the final review and the final labels, overlay, objects and summary: the tables and the
gallery read them from there instead of deciding again. Without an LLM review nothing is re-segmented and the
final segmentation is post-processing's.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..core.records import LABELS_SUFFIX, read_json, write_json
from ..core.settings import PostprocessSettings

MIN_GAIN = 0.05  # a refinement must improve the score by this much to replace the original segmentation


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
                        expected: dict[str, Any], refine: dict[str, Any], direction: int, unit_id: str,
                        measured: Any = None) -> dict[str, Any]:
    """Bounded search over post-processing settings towards the model's count estimate.

    Each attempt changes ``split_min_distance`` (x0.6 to split more, x1.5 to split less; within
    ``refine.split_min_distance``) and, when splitting less, raises ``min_object_area_fraction`` (within its
    range). Score (lower is better): relative count error to the model's estimate, plus the fraction of
    objects outside the expected diameter range, plus the fraction of non-convex objects (solidity < 0.9,
    the shape of merged nuclei). The model's count alone is not trusted: a change must also keep the
    objects plausible, and must beat the original by MIN_GAIN. Returns every attempt and the best. ``intensity``
    is what post-processing segments, ``measured`` what it measures (:func:`segmentation.segment_unit`).
    """
    from ..methods.measurements import segment_unit

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
    labels, objects, summary = segment_unit(probability, intensity, pixel, settings, unit_id, measured)
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
        labels, objects, summary = segment_unit(probability, intensity, pixel, settings, unit_id, measured)
        attempts.append({"settings": asdict(settings), "object_count": len(objects), "score": round(score(objects), 4)})
        if attempts[-1]["score"] < best[0] - MIN_GAIN:
            best = (attempts[-1]["score"], settings, labels, objects, summary)
    return {"attempts": attempts, "best_settings": asdict(best[1]), "labels": best[2], "objects": best[3], "summary": best[4],
            "improved": best[1] != base, "target_count": target}





def refine_unit(unit: dict[str, Any], review: dict[str, Any], answer: dict[str, Any], summary: dict[str, Any] | None,
                metrics: dict[str, float] | None, probability_path: str | None, settings: Any, refine: dict[str, Any],
                expected: dict[str, Any], channels: tuple[str | int, ...], count_tolerance: float, out: Path) -> tuple[dict[str, Any], Any]:
    """One LLM-reviewed unit: the review with its ``refinement`` record (and, when the critique improved the
    segmentation, its count check, flags, verdict and issues checked again), and the refined objects or None."""
    import numpy as np

    from ..core.blocks import is_large
    from ..core.channels import model_channels, select_channels
    from ..core.images import read_unit, write_labels
    from ..methods.instances import calibrated
    from ..llm.guardrails import check_claims, combine
    from ..core.rendering import overlay_png

    record: dict[str, Any] = {"applied": False}
    direction = refinement_direction(answer, summary)
    if not direction or not refine.get("enabled", True):
        return {**review, "refinement": record}, None
    if is_large(unit.get("shape")):
        record["reason"] = "not run: the field is larger than the stages' block size"
        return {**review, "refinement": record}, None
    if not probability_path:
        return {**review, "refinement": record}, None
    full = read_unit(unit["image_path"])
    image = select_channels(full, unit["channel_names"], channels)[0]  # what is measured: the channel as imported
    pixel = calibrated((unit["pixel_size_um"]["y"], unit["pixel_size_um"]["x"]))
    result = refine_segmentation(np.load(probability_path).astype(np.float32), model_channels(full, unit, channels)[0], pixel,
                                 settings, answer["estimated_count"], expected, refine, direction, unit["unit_id"], measured=image)
    record = {"applied": result["improved"], "direction": "split more" if direction > 0 else "split less",
              "target_count": result["target_count"], "attempts": result["attempts"], "best_settings": result["best_settings"]}
    if not result["improved"]:
        return {**review, "refinement": record}, None
    summary = record["summary"] = result["summary"]
    uid = unit["unit_id"]
    write_labels(out / f"{uid}{LABELS_SUFFIX}", result["labels"], unit)
    (out / f"{uid}.overlay.png").write_bytes(overlay_png(image, result["labels"], pixel[1] if pixel else None))
    rules = review["second_opinion"]
    flags = check_claims(answer, rules, metrics, summary, count_tolerance)
    verdict, issues = combine(rules, answer, flags)
    count_check = {**review["count_check"], "segmented": summary.get("object_count"),
                   "agrees": not any(f["check"] == "object count" for f in flags)}
    return {**review, "verdict": verdict, "issues": issues, "flags": flags, "count_check": count_check,
            "refinement": record}, result["objects"]


def refine_batch(import_manifest: str | Path, quality_json: str | Path, inference_manifest: str | Path,
                 segmentation_dir: str | Path, review_dir: str | Path, out_dir: str | Path, settings: Any,
                 channels: tuple[str | int, ...], refine: dict[str, Any], count_tolerance: float,
                 knowledge_base: dict[str, Any], cell_line_column: str = "cell_line") -> dict[str, Any]:
    """Refine every LLM-reviewed unit of a batch whose critique asks for it; write ``final.json`` (the final review and
    segmentation of every unit) and ``refined_objects.csv``."""
    import csv

    from ..core.channels import model_channel_name
    from ..methods.measurements import OBJECT_COLUMNS
    from ..core.knowledge import expected_diameter

    imported, quality = read_json(import_manifest), read_json(quality_json)
    predictions = read_json(inference_manifest)["predictions"]
    segmentation, review_dir, out = Path(segmentation_dir), Path(review_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summaries = read_json(segmentation / "summary.json")["summaries"]
    doc = read_json(review_dir / "reviews.json")
    reviews, units, refined_rows = [], {}, []
    by_unit = {u["unit_id"]: u for u in imported["units"]}
    for review in doc["reviews"]:
        uid = review["unit_id"]
        unit = by_unit[uid]
        prov = review["reviewer"].get("provenance") or {}
        if review.get("status") == "reviewed" and review["reviewer"].get("uses_llm") and prov.get("answer"):
            _, expected = expected_diameter(unit.get("metadata", {}), knowledge_base, cell_line_column)
            metrics = quality["metrics"].get(uid, {}).get(model_channel_name(unit, channels))
            review, objects = refine_unit(unit, review, read_json(review_dir / prov["answer"]), summaries.get(uid), metrics,
                                          predictions.get(uid, {}).get("path"), settings, refine, expected, channels,
                                          count_tolerance, out)
            refined_rows += objects or []
            print(f"[refinement {imported['batch']}] {uid}: {'applied' if review['refinement']['applied'] else 'not applied'}",
                  file=sys.stderr)
        reviews.append(review)
    for unit in imported["units"]:
        uid = unit["unit_id"]
        refinement = next((r.get("refinement") for r in reviews if r["unit_id"] == uid), None) or {}
        folder = out if refinement.get("applied") else segmentation
        labels, overlay = folder / f"{uid}{LABELS_SUFFIX}", folder / f"{uid}.overlay.png"
        units[uid] = {"refined": bool(refinement.get("applied")), "labels": str(labels) if labels.is_file() else None,
                      "overlay": str(overlay) if overlay.is_file() else None,
                      "objects_csv": str(folder / ("refined_objects.csv" if refinement.get("applied") else "objects.csv")),
                      "summary": refinement["summary"] if refinement.get("applied") else summaries.get(uid)}
    with open(out / "refined_objects.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=OBJECT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(refined_rows)
    final = {**doc, "reviews": reviews, "segmentation": units}
    write_json(out / "final.json", final)
    return final


def run_refinement(*, imported: str, quality: str, inference: str, segmentation: str, review: str, knowledge_base: str,
                   refinement: str, settings: PostprocessSettings, channels: tuple[str | int, ...], refine: dict[str, Any],
                   count_tolerance: float, cell_line_column: str) -> None:
    """Rule ``refinement``: the critique's bounded re-segmentation of a batch, and its final reviews and labels ->
    ``refinement/<batch>/final.json``."""
    from ..core.knowledge import load_knowledge_base
    from ..core.layout import manifest
    from ..core.progress import batch_progress

    doc = refine_batch(manifest(imported), quality, manifest(inference), segmentation, review, refinement, settings, channels,
                       refine, count_tolerance, load_knowledge_base(knowledge_base), cell_line_column)
    applied = sum(1 for r in doc["reviews"] if (r.get("refinement") or {}).get("applied"))
    batch_progress("refinement", doc["batch"], f"{len(doc['segmentation'])} unit(s) done, {applied} re-segmented by the critique")

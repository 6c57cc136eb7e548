"""Critique that acts, and the one place that decides which segmentation is final.

When the LLM's critique names a segmentation problem and its count points the same way, a bounded search over
post-processing settings runs in the review job (:func:`refine_segmentation`); an improved result is written into
the review's folder (labels, overlay, ``refined_objects.csv``) and recorded in the review's ``refinement``.
Every later stage (tables, gallery, report) asks :func:`final_segmentation` which labels, overlay, summary and
objects are final, instead of deciding it for itself.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from .records import LABELS_SUFFIX

MIN_GAIN = 0.05  # a refinement must improve the score by this much to replace the original segmentation


def final_segmentation(uid: str, review: dict[str, Any] | None, segmentation_dir: Path, review_dir: Path,
                       summaries: dict[str, Any] | None = None) -> dict[str, Any]:
    """{'refined', 'labels', 'overlay', 'objects_csv', 'summary'} of a unit: the review's refined outputs when its
    critique improved the segmentation, else post-processing's. Paths are None where a file does not exist."""
    refinement = (review or {}).get("refinement") or {}
    refined = bool(refinement.get("applied"))
    folder = review_dir if refined else segmentation_dir
    labels = folder / f"{uid}{LABELS_SUFFIX}"
    overlay = folder / f"{uid}.overlay.png"
    return {"refined": refined, "labels": labels if labels.is_file() else None, "overlay": overlay if overlay.is_file() else None,
            "objects_csv": folder / ("refined_objects.csv" if refined else "objects.csv"),
            "summary": refinement.get("summary") if refined else (summaries or {}).get(uid)}


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
    from .instances import segment_unit

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




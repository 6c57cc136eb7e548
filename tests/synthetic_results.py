"""A results tree of any size in the shape the workflow writes, for report tests and the report benchmark.

Tables follow the columns of ``snakescope.stages.report.tables``; reviews validate against ``review.schema.json``; gallery
images are rendered by ``snakescope.stages.report.gallery`` from the demo images (cycled), so their sizes are real.
Seeded: the same arguments give the same files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

CONDITIONS = ["DMSO", "compound_A", "compound_B", "staurosporine"]
ISSUE_ACTIONS = {"out_of_focus": "refocus", "saturated": "reduce_exposure", "low_signal": "increase_exposure",
                 "empty_field": "skip_field", "under_segmentation": "adjust_segmentation"}


def _well(index: int) -> tuple[str, str]:
    plate, position = divmod(index, 384)
    row, column = divmod(position, 24)
    return f"P{plate + 1:02d}", f"{chr(65 + row)}{column + 1:02d}"


def write_synthetic_results(root: Path, n_units: int, demo_images: list[Path], batch_size: int = 50,
                            hostile: str | None = None, llm: bool = False, seed: int = 0) -> dict[str, Any]:
    """Write tables/, report/plots/, report/gallery/, models/, pipeline_info/ under ``root``; return their paths."""
    from snakescope.core.images import read_unit
    from snakescope.stages.report.gallery import unit_gallery_images
    from snakescope.core.settings import GallerySettings
    from snakescope.stages.report.plots import write_plots
    from snakescope.core.records import write_json
    from snakescope.stages.review import load_schema, validate_review
    from snakescope.methods.measurements import OBJECT_COLUMNS
    from snakescope.stages.report.tables import acquisition_actions, write_csv

    rng = np.random.default_rng(seed)
    tables = root / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    planes = [read_unit(p)[0] for p in demo_images]
    shared = tuple(float(v) for v in np.percentile(np.concatenate([p.ravel() for p in planes]), [1, 99.8]))  # a run's contrast
    rendered = [unit_gallery_images(p, None, 0.65, GallerySettings(), shared) for p in planes]
    schema = load_schema()
    units, reviews, objects, records, galleries = [], [], [], [], {}
    for i in range(n_units):
        uid = f"u{i:05d}"
        plate, well = _well(i)
        condition = CONDITIONS[i % len(CONDITIONS)] if not (hostile and i == 0) else hostile
        batch = f"b{i // batch_size:04d}"
        issue = None if rng.random() < 0.8 else list(ISSUE_ACTIONS)[int(rng.integers(len(ISSUE_ACTIONS)))]
        count = 0 if issue == "empty_field" else int(rng.integers(5, 60))
        metadata = {"treatment": condition, "plate": plate, "well": well, "stain": "DAPI", "cell_line": "HeLa",
                    "notes": hostile if hostile and i < 2 else ""}
        verdict = "pass" if issue is None else "fail" if issue in ("empty_field", "saturated") else "warn"
        issues = [] if issue is None else [{"type": issue, "severity": verdict, "evidence": hostile or f"synthetic {issue}"}]
        review = {
            "unit_id": uid, "verdict": verdict, "issues": issues, "confidence": 0.8,
            "reviewer": {"backend": "ollama" if llm else "deterministic", "name": "qwen2.5vl:7b" if llm else "snakescope rules",
                         "version": "synthetic", "uses_llm": llm,
                         **({"provenance": {"backend": "ollama", "model": "qwen2.5vl:7b", "model_id": "sha256:" + "ab" * 32, "server_version": "0.12.6",
                                            "options": {"temperature": 0}, "prompt_file": "config/prompts/review_v1.txt",
                                            "prompt_version": "review_v1", "prompt_template_sha256": "cd" * 32, "cache_hit": False}}
                            if llm else {})},
            "count_check": {"segmented": count, "estimated": count + int(rng.integers(-2, 3)) if llm and count else None,
                            "agrees": True if llm else None, "comment": ""},
            "suggested_actions": [{"action": ISSUE_ACTIONS[issue], "detail": hostile or "synthetic"}] if issue
            else [{"action": "none", "detail": "fine"}],
            "summary": (f"{hostile} " if hostile else "") + f"{verdict}: synthetic unit with {count} objects",
            "status": "reviewed",
        }
        if llm:
            review["flags"] = [{"check": "count", "llm_says": hostile or "40", "numbers_say": str(count)}] if i % 50 == 1 else []
            review["llm_verdict"] = verdict
        validate_review(review, schema)
        reviews.append(review)
        diameters = rng.normal(12, 2, count).clip(4, 30)
        for k, d in enumerate(diameters):
            objects.append({"unit_id": uid, "label": k + 1, "equivalent_diameter_um": round(float(d), 3),
                            "area_um2": round(float(np.pi * d * d / 4), 2)})
        source = f"/data/screen/{plate}/{well}.ome.tif" if not (hostile and i == 1) else f"/data/{hostile}.czi"
        units.append({
            "unit_id": uid, "sample_id": uid, "batch": batch, "scene": "Image:0", "source_path": source, "status": "ok",
            "pixel_size_x_um": 0.65, "pixel_size_y_um": 0.65, "height": 256, "width": 256, "channels": "DAPI",
            **{f"meta_{k}": v for k, v in metadata.items()},
            "snr": round(float(rng.lognormal(4, 0.5)), 3) if issue != "low_signal" else 8.0,
            "focus_laplacian": round(float(rng.normal(0.14, 0.02)), 4) if issue != "out_of_focus" else 0.05,
            "percent_saturated": 0.001 if issue != "saturated" else 5.0,
            "foreground_fraction": 0.0 if issue == "empty_field" else round(float(rng.uniform(0.05, 0.3)), 4),
            "object_count": count, "density_per_mm2": round(count / 0.0277, 1),
            "diameter_um_median": round(float(np.median(diameters)), 3) if count else "",
            "verdict": verdict, "issues": issue or "", "review_backend": review["reviewer"]["backend"],
            "review_status": "reviewed", "flags": len(review.get("flags", [])), "refined": False,
            "overlay": f"results/screen/segmentation/{batch}/{uid}.overlay.png",
        })
        records.append({"unit_id": uid, "sample_id": uid, "source_path": source, "scene_index": 0, "scene_name": "Image:0",
                        "selection": {"T": 0, "Z": "max"}, "metadata": metadata})
        galleries.setdefault(batch, {})[uid] = {**rendered[i % len(rendered)], "outlines": True}
    columns = list(dict.fromkeys(k for row in units for k in row))
    write_csv(tables / "units.csv", units, columns)
    write_csv(tables / "objects.csv", objects, OBJECT_COLUMNS)
    failures = [{"stage": "import", "source_path": f"/data/{hostile or 'broken'}.czi", "sample_id": "broken_01", "unit_id": "",
                 "reason": f"UnsupportedFileFormatError: {hostile or 'not a CZI file'}"}]
    write_csv(tables / "failures.csv", failures, ["stage", "source_path", "sample_id", "unit_id", "reason"])
    with open(tables / "reviews.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in reviews)
    by_condition: dict[str, dict[str, Any]] = {}
    for unit in units:
        entry = by_condition.setdefault(unit["meta_treatment"], {"units": 0, "verdicts": {}, "median_count": None,
                                                                  "median_diameter_um": None, "answers": {}})
        entry["units"] += 1
        entry["verdicts"][unit["verdict"]] = entry["verdicts"].get(unit["verdict"], 0) + 1
    write_json(tables / "aggregates.json", {"units": n_units, "failed_inputs": 1, "condition_column": "treatment",
                                            "conditions": by_condition, "refined_units": 0})
    answers = [{"condition": c, "question": hostile or "Are there mitotic cells?", "yes": 3, "no": 1, "unsure": 0}
               for c in by_condition] if llm else []
    write_csv(tables / "answers.csv", answers, ["condition", "question", "yes", "no", "unsure"])
    write_json(tables / "acquisition_actions.json",
               acquisition_actions(records, {r["unit_id"]: r for r in reviews}, "screen"))
    text = (f"{hostile} " if hostile else "") + f"{n_units} image units were analysed."
    write_json(tables / "run_summary.json", {"backend": "ollama" if llm else "deterministic", "uses_llm": llm, "text": text,
                                             "numbers_checked": [n_units], "numbers_mismatched": []})
    write_plots(tables, root / "report" / "plots", "treatment", {})
    gallery_files = []
    for batch, images in galleries.items():
        path = root / "report" / "gallery" / f"{batch}.json"
        write_json(path, {"batch": batch, "images": images, "failures": []})
        gallery_files.append(path)
    model = root / "models" / "model_check.json"
    write_json(model, {"name": "synthetic nuclei", "source": "demo/model/bioimageio.yaml", "digest": "ef" * 32,
                       "weight_format": "onnx", "test": {"status": "passed"}})
    info = root / "pipeline_info"
    write_json(info / "params.json", {"dataset": "screen", "note": hostile or ""})
    write_json(info / "software_versions.json", {"python": "3.11", "packages": {"snakemake": "9.27.1"}})
    return {"tables": tables, "plots": root / "report" / "plots", "gallery": gallery_files, "model_check": model,
            "pipeline_info": info}

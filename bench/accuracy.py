"""Right answers on real microscopy: the workflow with its default config on the real nuclei sets.

    python bench/accuracy.py [--shared ../shared] [--project .] [--sets bbbc039 dsb2018 qc ramp] [--tile-px auto|model|N]

Runs the real Snakemake on the real Snakefile, with the real U-Net from ../shared/models, once per set:

- ``bbbc039`` and ``dsb2018`` (../shared/data/nuclei, instance ground truth): object F1 at IoU 0.5,
  precision, recall and mean absolute relative count error, per set and pooled over both. Only the
  model and its input channel are configured; everything else is the default. The images are read
  where they are (nothing is copied into the project).
- ``qc``: a quality-control set built from the same real fields: every field untouched, plus degraded copies
  of each (``--qc-copies``, default all five: blur, clipping, dimming with noise, empty, heavy noise), with
  degradation strengths drawn at random (seeded) around the ones the thresholds were set on. Prints the
  confusion table (true condition x the review's quality issue), the share of degraded fields that get the
  right issue and exactly the right issue (no other quality issue), the share of untouched fields that pass
  with no quality issue, the fields with a contradictory account (saturated and low signal, or actions to
  reduce and to increase exposure), separately for fields the thresholds were calibrated on (even positions)
  and held-out fields (odd positions), and every field not exactly right.
- ``ramp``: every field of both sets with a background ramp added (linear, seeded random direction, rising by
  40 % of the field's contrast: uneven illumination without flat-field correction): object F1 as above, and
  how many of these otherwise untouched fields pass the review with no quality issue.

``--project`` points at another checkout (e.g. a worktree of an older commit) to measure "before"
with the same script. The last line is ``pooled_f1=… bbbc039_f1=… dsb2018_f1=… ramp_f1=… qc_right_issue=… qc_exact_issue=… qc_ok_pass=… qc_contradictory=…``.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))  # the metric is this checkout's, whichever --project runs

from snakescope.methods.measurements import object_f1  # noqa: E402

QUALITY_ISSUES = ("no_data", "empty_field", "saturated", "low_signal", "out_of_focus")
DEGRADATIONS = ("blur", "saturated", "low_signal", "empty", "noise")
EXPECTED_ISSUE = {"blur": "out_of_focus", "saturated": "saturated", "low_signal": "low_signal", "empty": "empty_field",
                  "noise": "low_signal"}
OPPOSITES = ({"saturated", "low_signal"}, {"reduce_exposure", "increase_exposure"})  # a field cannot be both


EXTRA_CONFIG: dict = {}


def run_workflow(project: Path, work: Path, dataset: str, sheet: Path, model: Path) -> float:
    """The workflow with its defaults: only dataset, samples, results, model and its channel are set."""
    import yaml

    config = {"dataset": dataset, "samples": str(sheet), "results": str(work / "results"), "cache_dir": str(work / "cache"),
              "model": {"source": str(model), "channels": [0]}, **EXTRA_CONFIG}
    path = work / f"{dataset}.yaml"
    path.write_text(yaml.safe_dump(config))
    started = time.time()
    cmd = [sys.executable, "-m", "snakemake", "-s", str(project / "Snakefile"), "--configfile", str(path), "--cores", "2"]
    result = subprocess.run(cmd, cwd=project, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    (work / f"{dataset}.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        print(f"  workflow failed for {dataset} (log: {work / f'{dataset}.log'}):\n" + result.stderr[-1500:])
    return time.time() - started


def units_by_source(results: Path) -> dict[str, tuple[str, str]]:
    """source path -> (batch, unit id) from the import manifests."""
    out = {}
    for manifest in sorted(results.glob("import/*/manifest.json")):
        doc = json.loads(manifest.read_text())
        for unit in doc["units"]:
            out[str(Path(unit["source_path"]).resolve())] = (doc["batch"], unit["unit_id"])
    return out


def segmentation_scores(shared: Path, work: Path, name: str, project: Path, model: Path) -> dict[str, float]:
    images = sorted((shared / "data" / "nuclei" / name / "images").glob("*.tif"))
    return field_scores(work, name, [(image, shared / "data" / "nuclei" / name / "masks" / image.name, "") for image in images],
                        project, model)


def ramp_scores(shared: Path, work: Path, project: Path, model: Path) -> dict[str, float]:
    """Every real field of both sets with a background ramp added: rising linearly across the field, in a seeded
    random direction, by 40 % of the field's contrast (99th percentile above the median), as uneven illumination
    without flat-field correction gives. Scored like the untouched sets; they should also pass the quality review."""
    import tifffile

    rng = np.random.default_rng(7)
    folder = work / "ramp-fields"
    folder.mkdir(parents=True, exist_ok=True)
    fields = []
    for name, pixel in (("bbbc039", "0.645"), ("dsb2018", "")):
        for image_path in sorted((shared / "data" / "nuclei" / name / "images").glob("*.tif")):
            image = tifffile.imread(image_path)
            x = image.astype(np.float64)
            h, w = x.shape
            angle = rng.uniform(0, 2 * np.pi)
            yy, xx = np.mgrid[0:h, 0:w]
            along = (np.cos(angle) * xx / w + np.sin(angle) * yy / h)
            along = (along - along.min()) / max(float(np.ptp(along)), 1e-9)
            rise = 0.4 * (float(np.percentile(x, 99)) - float(np.median(x)))
            ramped = np.clip(np.round(x + rise * along), 0, np.iinfo(image.dtype).max).astype(image.dtype)
            path = folder / f"{name}_{image_path.name}"
            tifffile.imwrite(path, ramped)
            fields.append((path, shared / "data" / "nuclei" / name / "masks" / image_path.name, pixel))
    return field_scores(work, "ramp", fields, project, model)


def field_scores(work: Path, dataset: str, fields: list[tuple[Path, Path, str]], project: Path, model: Path) -> dict[str, float]:
    """Run the workflow on (image, instance mask, pixel size or "") fields; object F1 counts, count error, and how many
    fields passed the review with no quality issue."""
    import tifffile

    sheet = work / f"{dataset}.tsv"
    with sheet.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["sample_id", "path", "pixel_size_um"])
        writer.writerows([[image.stem, str(image), pixel] for image, _, pixel in fields])
    seconds = run_workflow(project, work, dataset, sheet, model)
    results = work / "results" / dataset
    found = units_by_source(results)
    issues = quality_issues(results)
    tp = predicted = true = passed = 0
    errors, failed = [], 0
    for image, mask, _ in fields:
        truth = tifffile.imread(mask)
        n_true = len(np.unique(truth[truth > 0]))
        batch, uid = found.get(str(image.resolve()), (None, None))
        labels_path = results / "segmentation" / str(batch) / f"{uid}.labels.ome.tif"
        if uid is None or not labels_path.is_file():
            failed += 1
            labels = np.zeros_like(truth)
        else:
            labels = tifffile.imread(labels_path)
        passed += issues.get(uid) == []
        score = object_f1(labels, truth)
        tp, predicted, true = tp + score["tp"], predicted + score["predicted"], true + n_true
        errors.append(abs(score["predicted"] - n_true) / n_true)
    return {"fields": len(fields), "failed": failed, "tp": tp, "predicted": predicted, "true": true, "quality_pass": passed,
            "mean_abs_count_error": float(np.mean(errors)), "seconds": seconds}


def quality_issues(results: Path) -> dict[str, list[str]]:
    """unit id -> the quality issues the review found (from tables/reviews.csv)."""
    return {uid: [i for i in found if i in QUALITY_ISSUES] for uid, found in review_terms(results).items()}


def review_terms(results: Path) -> dict[str, list[str]]:
    """unit id -> every issue and action of its review (from tables/reviews.csv)."""
    reviews = results / "tables" / "reviews.csv"
    terms: dict[str, list[str]] = {}
    if reviews.is_file():
        with reviews.open(newline="") as handle:
            for row in csv.DictReader(handle):
                found = [part.split(":")[0] for part in (row["issues"] or "").split(";") if part]
                terms[row["unit_id"]] = found + [a for a in (row.get("actions") or "").split(";") if a]
    return terms


def degrade(image: np.ndarray, truth: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A real field with one known degradation; strengths vary (seeded) around the calibration's."""
    from scipy import ndimage as ndi

    x = image.astype(np.float64)
    top = float(np.iinfo(image.dtype).max)
    background = float(np.median(x))
    diffs = np.diff(x, axis=1).ravel()
    noise = max(2.0, float(1.4826 * np.median(np.abs(diffs - np.median(diffs))) / np.sqrt(2)))
    if kind == "blur":  # defocus
        y = ndi.gaussian_filter(x, rng.uniform(2.5, 5.0))
    elif kind == "saturated":  # exposure too long: the brightest 3-15 % of pixels clip at the camera maximum
        high = np.percentile(x, 100 - rng.uniform(3, 15))
        y = background + (x - background) * (top - background) / max(high - background, 1e-9)
    elif kind == "low_signal":  # nuclei dimmed to 1-2.5 noise SDs above the background, camera noise added
        contrast = float(np.median(x[truth > 0])) - background
        y = background + (x - background) * rng.uniform(1.0, 2.5) * noise / max(contrast, 1e-9) + rng.normal(0, noise, x.shape)
    elif kind == "empty":  # background and camera noise only
        y = background + rng.normal(0, noise, x.shape)
    elif kind == "noise":  # the nuclei as they are under heavy camera noise: 2-4 noise SDs of contrast
        contrast = float(np.median(x[truth > 0])) - background
        y = x + rng.normal(0, max(contrast, 1.0) / rng.uniform(2.0, 4.0), x.shape)
    else:
        y = x
    return np.clip(np.round(y), 0, top).astype(image.dtype)


def qc_scores(shared: Path, work: Path, project: Path, model: Path, copies: int) -> dict[str, object]:
    import tifffile

    rng = np.random.default_rng(2026)
    folder = work / "qc-fields"
    folder.mkdir(parents=True, exist_ok=True)
    rows, truth_of = [], {}
    position = 0
    for name, pixel in (("bbbc039", "0.645"), ("dsb2018", "")):
        for index, image_path in enumerate(sorted((shared / "data" / "nuclei" / name / "images").glob("*.tif"))):
            image = tifffile.imread(image_path)
            truth = tifffile.imread(shared / "data" / "nuclei" / name / "masks" / image_path.name)
            kinds = [DEGRADATIONS[(position + k) % len(DEGRADATIONS)] for k in range(max(1, min(copies, len(DEGRADATIONS))))]
            position += 1
            split = "calibration" if index % 2 == 0 else "held-out"
            for condition, data in (("ok", image), *((kind, degrade(image, truth, kind, rng)) for kind in kinds)):
                sample = f"{name}_{image_path.stem[:16]}_{condition}"
                if sample in truth_of:
                    continue
                path = folder / f"{sample}.tif"
                tifffile.imwrite(path, data)
                rows.append([sample, str(path), pixel, condition, split])
                truth_of[sample] = (condition, split)
    sheet = work / "qc.tsv"
    with sheet.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["sample_id", "path", "pixel_size_um", "condition", "split"])
        writer.writerows(rows)
    seconds = run_workflow(project, work, "qc", sheet, model)
    issues = quality_issues(work / "results" / "qc")
    terms = review_terms(work / "results" / "qc")
    confusion: Counter = Counter()
    right: Counter = Counter()
    total: Counter = Counter()
    wrong: list[str] = []
    for sample, (condition, split) in truth_of.items():
        found = issues.get(sample)
        if found is None:
            predicted = "not reviewed"
        else:
            predicted = next((i for i in QUALITY_ISSUES if i in found), "none")  # the most severe kind first
        confusion[(condition, predicted)] += 1
        if condition == "ok":
            ok = found == []
            right[("ok", split)] += ok
            total[("ok", split)] += 1
        else:
            right[("degraded", split)] += found is not None and EXPECTED_ISSUE[condition] in found
            right[("exact", split)] += found == [EXPECTED_ISSUE[condition]]
            total[("degraded", split)] += 1
        contradictory = any(pair <= set(terms.get(sample, [])) for pair in OPPOSITES)
        right[("contradictory", split)] += contradictory
        if contradictory or (condition != "ok" and found != [EXPECTED_ISSUE[condition]]) or (condition == "ok" and found):
            wrong.append(f"{sample}: {', '.join(terms.get(sample, ['not reviewed']))}")
    return {"confusion": confusion, "right": right, "total": total, "seconds": seconds, "wrong": wrong}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--project", type=Path, default=ROOT, help="checkout whose Snakefile runs (default: this one)")
    parser.add_argument("--sets", nargs="+", default=["bbbc039", "dsb2018", "qc", "ramp"])
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a new temporary one)")
    parser.add_argument("--tile-px", default=None, help="set model.tile_px (auto, model or an edge; default: the config's)")
    parser.add_argument("--default-pixel-size", type=float, default=None,
                        help="set import.default_pixel_size_um (older checkouts refuse files without a pixel size)")
    parser.add_argument("--qc-copies", type=int, default=len(DEGRADATIONS),
                        help="degraded copies of each real field in the QC set, each with another degradation (default: all)")
    args = parser.parse_args()
    if args.default_pixel_size:
        EXTRA_CONFIG["import"] = {"default_pixel_size_um": args.default_pixel_size}
    shared, project = args.shared.resolve(), args.project.resolve()
    model = shared / "models" / "unet2d_nuclei_broad" / "bioimageio.yaml"
    if not model.is_file():
        sys.exit(f"no model at {model}: pass --shared")
    if args.tile_px:
        tile_px = int(args.tile_px) if str(args.tile_px).isdigit() else args.tile_px
        EXTRA_CONFIG["model"] = {"source": str(model), "channels": [0], "tile_px": tile_px}
    work = args.work or Path(tempfile.mkdtemp(prefix="snakescope-accuracy-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"project {project} (commit {_commit(project)}); working folder {work}")
    scores = {}
    for name in [s for s in args.sets if s not in ("qc", "ramp")]:
        scores[name] = segmentation_scores(shared, work, name, project, model)
    ramp = ramp_scores(shared, work, project, model) if "ramp" in args.sets else None
    summary = []
    if scores:
        print(f"\n{'set':10s} {'fields':>6s} {'failed':>6s} {'nuclei':>6s} {'found':>6s} {'F1@0.5':>7s} {'prec':>6s} "
              f"{'recall':>6s} {'MAE count':>9s} {'time s':>7s}")
        pooled = Counter()
        for name, s in scores.items():
            pooled.update({k: s[k] for k in ("tp", "predicted", "true")})
            f1 = 2 * s["tp"] / (s["predicted"] + s["true"]) if s["predicted"] + s["true"] else 0.0
            print(f"{name:10s} {s['fields']:6d} {s['failed']:6d} {s['true']:6d} {s['predicted']:6d} {f1:7.3f} "
                  f"{s['tp'] / max(s['predicted'], 1):6.3f} {s['tp'] / max(s['true'], 1):6.3f} "
                  f"{100 * s['mean_abs_count_error']:8.1f}% {s['seconds']:7.0f}")
            summary.append(f"{name}_f1={f1:.3f}")
        if len(scores) > 1:
            f1 = 2 * pooled["tp"] / (pooled["predicted"] + pooled["true"])
            errors = [s["mean_abs_count_error"] * s["fields"] for s in scores.values()]
            print(f"{'pooled':10s} {sum(s['fields'] for s in scores.values()):6d} {sum(s['failed'] for s in scores.values()):6d} "
                  f"{pooled['true']:6d} {pooled['predicted']:6d} {f1:7.3f} {pooled['tp'] / pooled['predicted']:6.3f} "
                  f"{pooled['tp'] / pooled['true']:6.3f} {100 * sum(errors) / sum(s['fields'] for s in scores.values()):8.1f}%")
            summary.insert(0, f"pooled_f1={f1:.3f}")
    if ramp is not None:
        f1 = 2 * ramp["tp"] / max(1, ramp["predicted"] + ramp["true"])
        print(f"\nramp: the {ramp['fields']} fields of both sets with a background ramp of 40 % of their contrast "
              f"({ramp['seconds']:.0f} s): object F1 {f1:.3f} (precision {ramp['tp'] / max(ramp['predicted'], 1):.3f}, "
              f"recall {ramp['tp'] / max(ramp['true'], 1):.3f}, MAE count {100 * ramp['mean_abs_count_error']:.1f}%); "
              f"passing with no quality issue: {ramp['quality_pass']}/{ramp['fields']}; failed: {ramp['failed']}")
        summary.append(f"ramp_f1={f1:.3f}")
    if "qc" in args.sets:
        qc = qc_scores(shared, work, project, model, args.qc_copies)
        columns = [*QUALITY_ISSUES, "none", "not reviewed"]
        print(f"\nQC set ({sum(qc['total'].values())} real fields, {qc['seconds']:.0f} s): rows = true condition, "
              "columns = the review's quality issue (most severe)")
        print(f"{'':12s}" + "".join(f"{c:>14s}" for c in columns))
        for condition in ("ok", *DEGRADATIONS):
            print(f"{condition:12s}" + "".join(f"{qc['confusion'][(condition, c)]:14d}" for c in columns))
        for split in ("calibration", "held-out"):
            print(f"{split:12s} degraded fields with the right issue: {qc['right'][('degraded', split)]}/{qc['total'][('degraded', split)]}"
                  f", with exactly the right issue: {qc['right'][('exact', split)]}/{qc['total'][('degraded', split)]}"
                  f"; untouched fields passing with no quality issue: {qc['right'][('ok', split)]}/{qc['total'][('ok', split)]}"
                  f"; fields with a contradictory account (saturated and low signal, or both exposure actions): "
                  f"{qc['right'][('contradictory', split)]}")
        for line in qc["wrong"]:
            print(f"  not exactly right: {line}")
        splits = ("calibration", "held-out")
        degraded = max(1, sum(qc["total"][("degraded", s)] for s in splits))
        right = sum(qc["right"][("degraded", s)] for s in splits) / degraded
        exact = sum(qc["right"][("exact", s)] for s in splits) / degraded
        ok = sum(qc["right"][("ok", s)] for s in splits) / max(1, sum(qc["total"][("ok", s)] for s in splits))
        contradictory = sum(qc["right"][("contradictory", s)] for s in splits)
        summary += [f"qc_right_issue={right:.3f}", f"qc_exact_issue={exact:.3f}", f"qc_ok_pass={ok:.3f}",
                    f"qc_contradictory={contradictory}"]
    print(" ".join(summary))


def _commit(project: Path) -> str:
    result = subprocess.run(["git", "-C", str(project), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


if __name__ == "__main__":
    main()

"""End to end: the real Snakemake on the demo data, with a corrupt file among the inputs."""

from __future__ import annotations

import csv
import json
import re
import shutil
import statistics
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import yaml

from browser import need_browser, open_page
from conftest import ROOT
from snakescope.core.records import sha256_file
from workflow_helpers import planned_jobs, report_zip_text, snakemake, write_config

pytestmark = pytest.mark.slow
CORRUPT = "corrupt_01"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, demo_dir):
    work = tmp_path_factory.mktemp("run")
    sheet = (demo_dir / "samples.tsv").read_text().replace("\timages/", f"\t{demo_dir}/images/")
    corrupt = work / "corrupt_01.ome.tif"
    corrupt.write_bytes(b"II*\x00" + b"this is not an image" * 20)
    sheet += f"{CORRUPT}\t{corrupt}\tDMSO\tDAPI\tHeLa\tH12\ttruncated transfer\n"
    (work / "samples.tsv").write_text(sheet)
    write_config(work, demo_dir, batch_size=6)
    return work


@pytest.fixture(scope="module")
def completed_run(workdir, demo_dir):
    inputs = sorted((demo_dir / "images").glob("*")) + [workdir / "corrupt_01.ome.tif"]
    before = {p: sha256_file(p) for p in inputs}
    result = snakemake(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p: sha256_file(p) for p in inputs} == before, "raw inputs were modified"
    return workdir / "results" / "demo"


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_dry_run_lists_the_expected_jobs(workdir):
    result = snakemake(workdir, "-n")
    assert result.returncode == 0, result.stderr
    # 14 demo files + 1 corrupt = 15 files, 6 per batch -> 3 batches
    per_batch = {"import_batch": 3, "quality_metrics": 3, "infer": 3, "postprocess": 3, "review": 3, "refinement": 3, "gallery": 3}
    assert planned_jobs(result.stdout) == {**per_batch, "check_model": 1, "pipeline_info": 1, "quality_reference": 1, "tables": 1, "plots": 1,
                                           "run_summary": 1, "report": 1, "ome_zarr": 1, "ro_crate": 1, "all": 1}


def test_counts_match_truth_and_degraded_images_are_flagged(completed_run, demo_dir):
    truth = json.loads((demo_dir / "truth.json").read_text())
    units = {u["unit_id"]: u for u in read_csv(completed_run / "tables" / "units.csv")}
    assert set(units) == set(truth)
    for uid, known in truth.items():
        unit = units[uid]
        if known["degradation"] == "none":
            assert abs(int(unit["object_count"]) - known["count"]) <= max(2, 0.1 * known["count"]), uid
            assert unit["verdict"] == "pass", (uid, unit["issues"])
        else:
            assert known["degradation"] in unit["issues"].split(";"), (uid, unit["issues"])
            assert unit["verdict"] in ("warn", "fail")
    assert units["multiscene_01_s1"]["meta_treatment"] == "DMSO" and units["treated_01"]["meta_treatment"] == "compound_X"
    objects = read_csv(completed_run / "tables" / "objects.csv")
    assert len(objects) == sum(int(u["object_count"]) for u in units.values())


def test_corrupt_file_is_reported_and_the_rest_complete(completed_run):
    (failure,) = read_csv(completed_run / "tables" / "failures.csv")
    assert failure["sample_id"] == CORRUPT and failure["stage"] == "import" and failure["reason"]
    page = (completed_run / "report" / "report.html").read_text()
    assert "corrupt_01.ome.tif" in page
    assert "no LLM was used" in page
    data = json.loads(page.split("id='report-data'>", 1)[1].split("</script>", 1)[0])
    assert len(data["units"]) == 15 and len(data["thumbnails"]) == 15 and all(d["image"] for d in data["details"].values())
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page)  # self-contained: nothing to fetch
    reviews = [json.loads(line) for line in (completed_run / "tables" / "reviews.jsonl").read_text().splitlines()]
    assert len(reviews) == 15 and all(r["reviewer"]["uses_llm"] is False for r in reviews)
    info = completed_run / "pipeline_info"
    software = json.loads((info / "software_versions.json").read_text())
    assert software["packages"]["bioimageio.core"] == "0.11.0"
    assert all(software["packages"][p] for p in ("pandas", "pyarrow", "edt", "pillow", "tifffile"))  # they write outputs
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert software["workflow_git"]["commit"] == head and head in page  # which workflow ran, in the report too
    assert json.loads((info / "params.json").read_text())["dataset"] == "demo"


def test_outputs_open_calibrated_typed_and_readable_by_others(completed_run):
    """Labels open in bioio at the image's pixel size; Parquet reads back typed; objects carry the sample sheet and
    every channel; overlay paths are relative to the results folder; files follow the umask (022 here). The demo plate
    is an OME-Zarr HCS store that ome-zarr-models validates and napari's reader opens."""
    check_ome_zarr_plate(completed_run / "ome_zarr" / "demo.ome.zarr", {"A/1": "ctrl_01", "A/2": "ctrl_02"})
    import os
    import stat

    import pandas as pd
    from bioio import BioImage

    units = pd.read_parquet(completed_run / "tables" / "units.parquet")
    assert len(units) == 15 and units["object_count"].dtype.kind in "if" and str(units["meta_well"].dtype).startswith("str")
    ctrl = units.set_index("unit_id").loc["ctrl_01"]
    labels = BioImage(completed_run / "segmentation" / ctrl["batch"] / "ctrl_01.labels.ome.tif")
    assert labels.physical_pixel_sizes.X == pytest.approx(float(ctrl["pixel_size_x_um"]))
    assert int(labels.get_image_data("YX").max()) == int(ctrl["object_count"])
    assert (completed_run / ctrl["overlay"]).is_file() and not os.path.isabs(ctrl["overlay"])
    objects = pd.read_parquet(completed_run / "tables" / "objects.parquet")
    assert len(objects) == units["object_count"].sum()
    assert {"sample_id", "meta_well", "meta_treatment", "mean_intensity_DAPI"} <= set(objects.columns)
    assert (objects.loc[objects.unit_id == "ctrl_01", "meta_treatment"] == "DMSO").all()
    assert pd.read_parquet(completed_run / "tables" / "reviews.parquet")["verdict"].notna().all()
    umask = os.umask(0)
    os.umask(umask)
    for path in [completed_run / "tables" / "acquisition_actions.json", next((completed_run / "import").glob("*/manifest.json")),
                 completed_run / "models" / "model_check.json"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_changing_a_postprocess_parameter_reruns_only_downstream(completed_run, workdir, demo_dir):
    assert planned_jobs(snakemake(workdir, "-n").stdout + "\nJob stats:\n\n\n") == {}, "an unchanged rerun plans nothing"
    changed = workdir / "changed"
    changed.mkdir(exist_ok=True)
    config = write_config(changed, demo_dir, postprocess__split_min_distance=0.8, batch_size=6)
    shutil.copy(workdir / "samples.tsv", changed / "samples.tsv")
    text = config.read_text().replace(str(changed), str(workdir))
    (workdir / "config-changed.yaml").write_text(text)
    result = snakemake(workdir, "-n", configfile=workdir / "config-changed.yaml")
    jobs = planned_jobs(result.stdout)
    assert jobs == {"postprocess": 3, "review": 3, "refinement": 3, "gallery": 3, "tables": 1, "plots": 1, "run_summary": 1,
                    "report": 1, "ome_zarr": 1, "ro_crate": 1, "pipeline_info": 1, "all": 1}, result.stdout[-2000:]


def test_bad_config_key_and_missing_file_give_one_clear_message(workdir, demo_dir, tmp_path):
    bad = write_config(tmp_path, demo_dir, postprocess__split_min_distnce=0.8)
    shutil.copy(workdir / "samples.tsv", tmp_path / "samples.tsv")
    result = snakemake(tmp_path, "-n", configfile=bad)
    assert result.returncode != 0
    assert "unknown config key 'postprocess.split_min_distnce' (did you mean 'split_min_distance'?)" in result.stdout + result.stderr
    (tmp_path / "samples.tsv").write_text("sample_id\tpath\nA1\t/nonexistent/plate/A1.czi\n")
    result = snakemake(tmp_path, "-n", configfile=write_config(tmp_path, demo_dir))
    assert result.returncode != 0 and "/nonexistent/plate/A1.czi" in result.stdout + result.stderr


def test_report_settings_rerun_only_the_report_steps_they_touch(completed_run, workdir, demo_dir):
    def plan(**report):
        config = write_config(workdir / "changed", demo_dir, batch_size=6, report=report)
        (workdir / "config-report.yaml").write_text(config.read_text().replace(str(workdir / "changed"), str(workdir)))
        return planned_jobs(snakemake(workdir, "-n", configfile=workdir / "config-report.yaml").stdout)

    (workdir / "changed").mkdir(exist_ok=True)
    shutil.copy(workdir / "samples.tsv", workdir / "changed" / "samples.tsv")
    run_level = {"pipeline_info": 1, "ro_crate": 1, "all": 1}  # the crate lists the report and tables
    assert plan(page_size=25) == {"report": 1, **run_level}
    assert plan(thumbnail_px=96) == {"gallery": 3, "report": 1, **run_level}
    assert plan(well_column="position") == {"tables": 1, "plots": 1, "run_summary": 1, "report": 1, **run_level}


def test_acquisition_actions_name_the_degraded_fields(completed_run):
    import jsonschema

    doc = json.loads((completed_run / "tables" / "acquisition_actions.json").read_text())
    jsonschema.validate(doc, json.loads((ROOT / "workflow" / "schemas" / "acquisition_actions.schema.json").read_text()))
    actions = {u["unit_id"]: [a["action"] for a in u["actions"]] for u in doc["units"]}
    assert actions == {"blurred_01": ["refocus"], "saturated_01": ["reduce_exposure"], "empty_01": ["skip_field"],
                       "dim_01": ["increase_exposure"], CORRUPT: ["reacquire"]}
    assert doc["units"][0]["verdict"] == "fail" and doc["units"][0]["position"]["well"]
    (unreadable,) = [u for u in doc["units"] if u["unit_id"] == CORRUPT]
    assert unreadable["position"]["well"] == "H12" and unreadable["issues"][0]["type"] == "unreadable_input"
    assert unreadable["issues"][0]["evidence"] in unreadable["actions"][0]["detail"]


def test_thumbnails_share_the_runs_contrast_so_dim_and_clipped_fields_stand_out(completed_run):
    import base64
    import io

    import numpy as np
    from PIL import Image

    images = {}
    for path in (completed_run / "report" / "gallery").glob("*.json"):
        images.update(json.loads(path.read_text())["images"])

    def brightness(uri):
        return float(np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("L")).mean())

    names = ("ctrl_01", "dim_01", "saturated_01", "empty_01")
    shared = {u: brightness(images[u]["thumbnail"]) for u in names}
    own = {u: brightness(images[u]["thumbnail_own"]) for u in names}
    assert shared["empty_01"] < shared["dim_01"] < shared["ctrl_01"] < shared["saturated_01"], shared
    # stretched one by one, the empty and the dim field light up like the others (their noise fills the range)
    assert own["empty_01"] > 10 * shared["empty_01"] and own["dim_01"] > 3 * shared["dim_01"], (shared, own)
    reference = json.loads((completed_run / "quality" / "reference.json").read_text())
    assert reference["display"]["DAPI"]["high"] > reference["display"]["DAPI"]["low"]


def test_failed_wells_on_the_plate_map_and_statistics_on_usable_fields(completed_run):
    plate = (completed_run / "report" / "plots" / "plate_map.svg").read_text()
    assert plate.count("class='failed-input'") == 1 and "H12: objects n/a" in plate  # the unreadable file's well
    assert "stroke-dasharray='3,2'" in plate  # a warned well, marked apart from the failed ones
    aggregates = json.loads((completed_run / "tables" / "aggregates.json").read_text())
    assert aggregates["usable_verdicts"] == ["pass", "warn"]
    units = read_csv(completed_run / "tables" / "units.csv")
    for condition, agg in aggregates["conditions"].items():
        members = [u for u in units if u["meta_treatment"] == condition]
        kept = [u for u in members if u["verdict"] in ("pass", "warn")]
        assert agg["usable_units"] == len(kept) and agg["units"] == len(members)
        if kept:
            assert agg["median_count"] == round(statistics.median(int(u["object_count"]) for u in kept), 1)
    dmso = aggregates["conditions"]["DMSO"]
    assert dmso["usable_units"] < dmso["units"]  # the empty and saturated fields do not count
    page = (completed_run / "report" / "report.html").read_text()
    assert "usable fields only" in page and "verdict pass, warn" in page


def test_the_report_in_chromium_shows_every_unit_and_no_errors(completed_run):
    need_browser()
    ARTIFACTS = ROOT / "tests" / "artifacts"
    ARTIFACTS.mkdir(exist_ok=True)
    with open_page(completed_run / "report" / "report.html", height=2000) as (page, problems):
        assert page.evaluate("window.snakescopeReport.units") == 15
        assert page.locator("#units tbody tr").count() == 15
        assert page.locator("#gallery .card").count() == 15
        assert page.locator("#gallery .card img").count() == 15
        page.locator("#gallery").scroll_into_view_if_needed()  # thumbnails load lazily, when shown
        page.wait_for_function("Array.from(document.querySelectorAll('#gallery .card img')).every(i => i.complete && i.naturalWidth > 0)",
                               timeout=10_000)
        assert "corrupt_01.ome.tif" in page.locator("#failures").inner_text()
        assert page.locator("#plots svg").count() == 7
        # decisions: the unreadable file's well is marked on the plate map and listed to re-acquire; the rule is stated
        assert page.locator("#plots svg .failed-input").count() == 1
        assert CORRUPT in page.locator("#actions").inner_text() and "reacquire" in page.locator("#actions").inner_text()
        assert "usable fields only" in page.locator("#conditions").inner_text()
        assert "no LLM was used" in page.locator("#review-backend").inner_text()
        first = page.locator("#gallery .card img").first.get_attribute("src")
        page.check("#own-contrast")
        assert page.locator("#gallery .card img").first.get_attribute("src") != first
        page.uncheck("#own-contrast")
        page.screenshot(path=str(ARTIFACTS / "report-demo.png"), full_page=True)
        page.locator("#gallery .card[data-unit='blurred_01']").click()
        detail = page.locator("#detail")
        assert detail.is_visible() and "out_of_focus" in detail.inner_text() and "refocus" in detail.inner_text()
        assert page.locator("#detail-image").evaluate("i => i.naturalWidth") > 2 * 200  # raw | outlined panels
        text = detail.inner_text()
        assert re.search(r"Scale bar \(white, bottom right\): [\d.]+ µm", text) and "warn ≥ 0.65" in text, text[:600]
        page.screenshot(path=str(ARTIFACTS / "report-demo-detail.png"))
        shown = page.locator("#detail-body h3").inner_text()
        page.locator("#detail-next").click()
        assert page.locator("#detail-body h3").inner_text() != shown
        page.keyboard.press("ArrowLeft")
        assert page.locator("#detail-body h3").inner_text() == shown
    assert problems == [], problems


def test_snakemake_report_has_categories_and_captions(completed_run, workdir):
    names, page = report_zip_text(workdir)
    files = {n.rsplit("/", 1)[-1] for n in names}
    assert {"report.html", "units.csv", "acquisition_actions.json", "plate_map.svg", "quality_focus.svg",
            "model_check.json", "software_versions.json"} <= files
    for text in ("Acquisition actions", "Quality metrics", "Provenance", "microscope-control script", "warn threshold"):
        assert text in page, text


def test_paths_with_spaces_and_shell_syntax_are_data_not_commands(tmp_path, demo_dir):
    """A results folder and an input folder named with a space and `$(...)` run normally; nothing is executed."""
    weird = tmp_path / "my data $(touch INJECTED_IN)"
    weird.mkdir()
    for name in ("ctrl_01.ome.tif", "dim_01.ome.tif"):
        shutil.copy(demo_dir / "images" / name, weird / name)
    (tmp_path / "samples.tsv").write_text("sample_id\tpath\ttreatment\n"
                                          f"ctrl 01\t{weird / 'ctrl_01.ome.tif'}\tDMSO\n"
                                          f"dim;01\t{weird / 'dim_01.ome.tif'}\tDMSO\n")
    results = tmp_path / "res ults $(touch INJECTED_OUT)"
    config = write_config(tmp_path, demo_dir, results=str(results))
    result = snakemake(tmp_path, configfile=config)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list(tmp_path.rglob("INJECTED_*")) and not list(ROOT.glob("INJECTED_*"))
    units = read_csv(results / "demo" / "tables" / "units.csv")
    assert sorted(u["unit_id"] for u in units) == ["ctrl_01", "dim_01"]
    assert (results / "demo" / "report" / "report.html").is_file()


def test_the_template_config_asks_for_what_only_the_user_knows(tmp_path):
    (tmp_path / "config").mkdir()
    shutil.copy(ROOT / "config" / "config.yaml", tmp_path / "config" / "config.yaml")
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "-n"],
                            capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    for key in ("'dataset'", "'model.source'", "'samples'"):
        assert f"set config key {key}" in out, out[-2000:]
    assert "Traceback" not in out
    # linting reads the rules only: with the template's unset keys it passes, as the workflow catalog lints a clone
    lint = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--lint"],
                          capture_output=True, text=True, timeout=300)
    assert lint.returncode == 0 and "good condition" in lint.stdout + lint.stderr, (lint.stdout + lint.stderr)[-2000:]


def test_a_user_config_with_globs_plans_its_own_files_not_the_demo(tmp_path, demo_dir):
    """The template in config/ (as a user's copy would be) is merged under the user's config: nothing of the demo leaks."""
    (tmp_path / "config").mkdir()
    shutil.copy(ROOT / "config" / "config.yaml", tmp_path / "config" / "config.yaml")
    (tmp_path / "data").mkdir()
    for name in ("ctrl_01.ome.tif", "dim_01.ome.tif"):
        shutil.copy(demo_dir / "images" / name, tmp_path / "data" / name)
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({"dataset": "screen1", "inputs": ["data/*.ome.tif"],
                                    "model": {"source": str(demo_dir / "model" / "bioimageio.yaml")}}))
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
                             "--configfile", str(mine), "-n", "-p", "--cores", "1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert planned_jobs(result.stdout)["import_batch"] == 1
    assert "ctrl_01.ome.tif" in result.stdout and "dim_01.ome.tif" in result.stdout
    assert "saturated_01" not in result.stdout and "demo/model" not in result.stdout.replace(str(demo_dir / "model"), "")
    assert "results/screen1/" in result.stdout


def test_the_workflow_runs_as_a_module_of_another_workflow(tmp_path, demo_dir):
    (tmp_path / "Snakefile").write_text(
        'configfile: "config.yaml"\n\n\n'
        f'module snakescope:\n    snakefile:\n        "{ROOT / "workflow" / "Snakefile"}"\n    config:\n        config["imaging"]\n\n\n'
        "use rule * from snakescope as snakescope_*\n\n\n"
        "rule all:\n    input:\n        rules.snakescope_all.input,\n    default_target: True\n")
    sheet = (demo_dir / "samples.tsv").read_text().replace("\timages/", f"\t{demo_dir}/images/")
    (tmp_path / "samples.tsv").write_text(sheet)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"imaging": {
        "dataset": "mod", "samples": "samples.tsv", "batch_size": 8,
        "model": {"source": str(demo_dir / "model" / "bioimageio.yaml"), "channels": ["DAPI"]}}}))
    result = subprocess.run([sys.executable, "-m", "snakemake", "--directory", str(tmp_path), "-n", "--cores", "1"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    jobs = planned_jobs(result.stdout)
    assert jobs["snakescope_import_batch"] == 2 and jobs["snakescope_report"] == 1 and jobs["all"] == 1, jobs


def test_a_correction_made_in_the_page_changes_verdicts_statistics_and_actions_on_rerun(completed_run, workdir, demo_dir):
    """The human loop end to end: correct dim_01 to pass in Chromium, export, feed the file back through the config;
    only the tables and what follows rerun; verdict, per-condition statistics and acquisition actions follow it.
    (Last in this module: it changes the shared run's tables.)"""
    need_browser()
    import jsonschema

    with open_page(completed_run / "report" / "report.html") as (page, problems):
        page.evaluate("window.snakescopeReport.showDetail('dim_01')")
        page.select_option("#correction-verdict", "pass")
        page.fill("#correction-comment", "actually fine: a dim but real field")
        page.locator("#correction-save").click()
        assert "1 correction(s) made in this page" in page.locator("#corrections-count").inner_text()
        page.screenshot(path=str(ROOT / "tests" / "artifacts" / "report-correction.png"))
        page.locator("#detail-close").click()
        with page.expect_download() as download:
            page.locator("#corrections-export").click()
        exported = workdir / "corrections.json"
        download.value.save_as(exported)
    assert problems == [], problems
    doc = json.loads(exported.read_text())
    jsonschema.validate(doc, json.loads((ROOT / "workflow" / "schemas" / "corrections.schema.json").read_text()))
    assert [(c["unit_id"], c["verdict"]) for c in doc["corrections"]] == [("dim_01", "pass")]

    before_units = {u["unit_id"]: u for u in read_csv(completed_run / "tables" / "units.csv")}
    before = json.loads((completed_run / "tables" / "aggregates.json").read_text())["conditions"]
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["review"]["corrections"] = str(exported)
    corrected = workdir / "config-corrected.yaml"
    corrected.write_text(yaml.safe_dump(config))
    jobs = planned_jobs(snakemake(workdir, "-n", configfile=corrected).stdout)
    assert jobs == {"tables": 1, "plots": 1, "run_summary": 1, "report": 1, "ro_crate": 1, "pipeline_info": 1, "all": 1}, jobs
    result = snakemake(workdir, configfile=corrected)
    assert result.returncode == 0, result.stderr[-3000:]

    units = {u["unit_id"]: u for u in read_csv(completed_run / "tables" / "units.csv")}
    dim = units["dim_01"]
    assert before_units["dim_01"]["verdict"] in ("warn", "fail")
    assert dim["verdict"] == "pass" and dim["machine_verdict"] == before_units["dim_01"]["verdict"]
    assert dim["overruled"] == "rules" and dim["human_comment"].startswith("actually fine")
    actions = json.loads((completed_run / "tables" / "acquisition_actions.json").read_text())
    assert "dim_01" not in {u["unit_id"] for u in actions["units"]}
    aggregates = json.loads((completed_run / "tables" / "aggregates.json").read_text())
    condition = before_units["dim_01"]["meta_treatment"]
    if before_units["dim_01"]["verdict"] == "fail":
        assert aggregates["conditions"][condition]["usable_units"] == before[condition]["usable_units"] + 1
    assert aggregates["conditions"][condition]["verdicts"].get("pass", 0) == before[condition]["verdicts"].get("pass", 0) + 1
    assert aggregates["corrections"]["applied"] == 1 and aggregates["corrections"]["agreement"]["human_rules"]["rate"] == 0.0
    with open_page(completed_run / "report" / "report.html") as (page, problems):
        assert "1 verdict(s) corrected by a person" in page.locator("#human-review").inner_text()
        assert "overruled: the rules 1" in page.locator("#human-review").inner_text()
        page.evaluate("window.snakescopeReport.showDetail('dim_01')")
        assert "Corrected by a person" in page.locator("#detail").inner_text()
    assert problems == [], problems


def test_the_catalog_test_config_runs_on_its_committed_data_and_draws_the_rule_graph(tmp_path):
    """`.test/` (the Snakemake workflow catalog's convention): a config on committed tiny data, so a bare clone can
    `snakemake -d .test --lint`, draw the rule graph and run the workflow, with nothing generated first."""
    test_dir = ROOT / ".test"
    graph = snakemake(test_dir, "--rulegraph", configfile=test_dir / "config" / "config.yaml")
    assert graph.returncode == 0 and "digraph" in graph.stdout and "infer" in graph.stdout, graph.stderr[-2000:]
    lint = snakemake(test_dir, "--lint", configfile=test_dir / "config" / "config.yaml")
    assert lint.returncode == 0, lint.stdout[-2000:] + lint.stderr[-2000:]
    run = snakemake(test_dir, "--config", f"results={tmp_path}", "cache_dir=" + str(tmp_path / "cache"),
                    configfile=test_dir / "config" / "config.yaml")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    units = (tmp_path / "test" / "tables" / "units.csv").read_text().splitlines()
    assert len(units) == 1 + 4 and (tmp_path / "test" / "report" / "report.html").is_file()
    verdicts = {line.split(",")[0]: line for line in units[1:]}
    assert ",fail," in verdicts["empty_01"] and ",pass," in verdicts["ctrl_01"]
    check_ome_zarr_plate(tmp_path / "test" / "ome_zarr" / "test.ome.zarr", {"A/1": "ctrl_01", "A/5": "treated_01"})
    check_ro_crate(tmp_path / "test", sources=4)


def check_ro_crate(results, sources):
    """The run's Workflow Run RO-Crate as the rocrate package reads it back: the workflow ran (CreateAction) on every
    source file, named by URI with its SHA-256, and the model; its results are files of the crate, there on disk."""
    from urllib.parse import unquote, urlparse

    from rocrate.rocrate import ROCrate

    crate = ROCrate(results)
    workflow = crate.mainEntity
    assert "ComputationalWorkflow" in workflow.type and workflow["programmingLanguage"]["name"] == "Snakemake"
    conforms = {c["@id"] if isinstance(c, dict) else c.id for c in crate.root_dataset["conformsTo"]}
    assert {"https://w3id.org/ro/wfrun/workflow/0.5", "https://w3id.org/ro/wfrun/process/0.5"} <= conforms
    (action,) = crate.get_by_type("CreateAction")
    assert action["instrument"] is workflow or action["instrument"].id == workflow.id
    read = [e for e in action["object"] if e.id.startswith("file:") and e.get("sha256") and "alternateName" in e.properties()]
    assert len(read) == sources
    for entity in read:
        assert sha256_file(unquote(urlparse(entity.id).path)) == entity["sha256"]
    assert any("bioimage.io model" in (e.get("description") or "") for e in action["object"])
    written = {e.id for e in action["result"]}
    assert {"report/report.html", "tables/units.csv", "tables/acquisition_actions.json", "ome_zarr/"} <= written
    assert all((results / path).exists() for path in written)


def check_ome_zarr_plate(store, fields):
    """The run's OME-Zarr as others open it: ome-zarr-models validates the HCS plate and each field with its labels, and
    napari's own reader (napari-ome-zarr, headless) gives an Image and a Labels layer at the unit's pixel size."""
    import zarr
    from napari_ome_zarr import napari_get_reader
    from ome_zarr_models.v05.hcs import HCS
    from ome_zarr_models.v05.image import Image

    plate = HCS.from_zarr(zarr.open_group(store, mode="r"))
    assert {w.path for w in plate.ome_attributes.plate.wells} >= set(fields)
    for well, unit in fields.items():
        field = f"{store}/{well}/0"
        image = Image.from_zarr(zarr.open_group(field, mode="r"))
        assert image.labels is not None and "nuclei" in image.labels.attributes.ome.labels
        attrs = zarr.open_group(field, mode="r").attrs.asdict()
        assert attrs["snakescope"]["unit_id"] == unit and attrs["snakescope"]["plane"] and attrs["ome"]["omero"]["channels"][0]["label"] == "DAPI"
        layers = {kind: (data, meta) for data, meta, kind in napari_get_reader(field)(field)}
        assert set(layers) == {"image", "labels"}
        assert list(layers["image"][1]["scale"]) == [0.65, 0.65] and list(layers["labels"][1]["scale"])[-2:] == [0.65, 0.65]
        labels = np.asarray(layers["labels"][0][0])
        assert labels.shape == (256, 256) and labels.max() > 5  # the unit's nuclei, one label each

"""End to end: the real Snakemake on the demo data, with a corrupt file among the inputs."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from snakescope.records import sha256_file
from workflow_helpers import planned_jobs, snakemake, write_config

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
    per_batch = {"import_batch": 3, "quality_metrics": 3, "infer": 3, "postprocess": 3, "review": 3}
    assert planned_jobs(result.stdout) == {**per_batch, "check_model": 1, "pipeline_info": 1, "tables": 1, "run_summary": 1, "report": 1, "all": 1}


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
    assert page.count("class='card'") == 15
    assert "src='http" not in page and "<link" not in page  # self-contained
    reviews = [json.loads(line) for line in (completed_run / "tables" / "reviews.jsonl").read_text().splitlines()]
    assert len(reviews) == 15 and all(r["reviewer"]["uses_llm"] is False for r in reviews)
    info = completed_run / "pipeline_info"
    assert json.loads((info / "software_versions.json").read_text())["packages"]["bioimageio.core"] == "0.11.0"
    assert json.loads((info / "params.json").read_text())["dataset"] == "demo"


def test_changing_a_postprocess_parameter_reruns_only_downstream(completed_run, workdir, demo_dir):
    assert planned_jobs(snakemake(workdir, "-n").stdout + "\nJob stats:\n\n\n") == {}, "an unchanged rerun plans nothing"
    changed = workdir / "changed"
    changed.mkdir(exist_ok=True)
    config = write_config(changed, demo_dir, postprocess__split_prominence_um=2.0, batch_size=6)
    shutil.copy(workdir / "samples.tsv", changed / "samples.tsv")
    text = config.read_text().replace(str(changed), str(workdir))
    (workdir / "config-changed.yaml").write_text(text)
    result = snakemake(workdir, "-n", configfile=workdir / "config-changed.yaml")
    jobs = planned_jobs(result.stdout)
    assert jobs == {"postprocess": 3, "review": 3, "tables": 1, "run_summary": 1, "report": 1, "pipeline_info": 1, "all": 1}, result.stdout[-2000:]


def test_bad_config_key_and_missing_file_give_one_clear_message(workdir, demo_dir, tmp_path):
    bad = write_config(tmp_path, demo_dir, postprocess__split_promience_um=2.0)
    shutil.copy(workdir / "samples.tsv", tmp_path / "samples.tsv")
    result = snakemake(tmp_path, "-n", configfile=bad)
    assert result.returncode != 0
    assert "unknown config key 'postprocess.split_promience_um' (did you mean 'split_prominence_um'?)" in result.stdout + result.stderr
    (tmp_path / "samples.tsv").write_text("sample_id\tpath\nA1\t/nonexistent/plate/A1.czi\n")
    result = snakemake(tmp_path, "-n", configfile=write_config(tmp_path, demo_dir))
    assert result.returncode != 0 and "/nonexistent/plate/A1.czi" in result.stdout + result.stderr

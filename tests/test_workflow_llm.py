"""The workflow with an LLM backend (ollama, openai) against the fake server, through the real Snakemake."""

from __future__ import annotations

import csv
import json
import shutil
import time

import pytest
import yaml

from browser import need_browser, open_page
from conftest import ROOT
from workflow_helpers import planned_jobs, snakemake, write_config

pytestmark = pytest.mark.slow
QUESTIONS = ["Is the staining nuclear?", "Are there mitotic cells?"]
# free text in the sample sheet that the fake model quotes back in its review, as a real one may
HOSTILE_NOTE = "<script>window.__pwned=1</script><img src=x onerror=window.__pwned=2> & done"


def llm_config(work, demo_dir, host, backend="ollama", **extra):
    prompt = work / "review_prompt.txt"
    if not prompt.exists():
        shutil.copy(ROOT / "config" / "prompts" / "review_v1.txt", prompt)
    review = {"backend": backend, "knowledge_base": str(ROOT / "config" / "knowledge_base.yaml"),
              "llm": {"endpoint": host, "prompt": str(prompt), "timeout_s": 60, "questions": QUESTIONS,
                         "summary_prompt": str(ROOT / "config" / "prompts" / "summary_v2.txt"), **extra}}
    return write_config(work, demo_dir, batch_size=8, review=review)


@pytest.fixture(scope="module")
def server():
    from fake_llm import FakeLLMServer

    fake = FakeLLMServer().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def llm_run(tmp_path_factory, demo_dir, server):
    work = tmp_path_factory.mktemp("llm-run")
    sheet = (demo_dir / "samples.tsv").read_text().replace("\timages/", f"\t{demo_dir}/images/").splitlines()
    sheet[1] = "\t".join(sheet[1].split("\t")[:-1] + [HOSTILE_NOTE])  # ctrl_01's notes column
    (work / "samples.tsv").write_text("\n".join(sheet) + "\n")
    llm_config(work, demo_dir, server.host)
    result = snakemake(work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work


def test_the_llm_reviews_every_unit_and_the_report_says_so(llm_run, server):
    results = llm_run / "results" / "demo"
    reviews = [json.loads(line) for line in (results / "tables" / "reviews.jsonl").read_text().splitlines()]
    assert len(reviews) == 15 and all(r["reviewer"]["uses_llm"] and r["status"] == "reviewed" for r in reviews)
    assert len(server.chat_requests()) == 15 + 1  # one per unit, one text-only summary
    with open(results / "tables" / "answers.csv", newline="") as handle:
        answers = list(csv.DictReader(handle))
    assert {(a["condition"], a["question"]) for a in answers} == {(c, q) for c in ("DMSO", "compound_X") for q in QUESTIONS}
    summary = json.loads((results / "tables" / "run_summary.json").read_text())
    assert summary["uses_llm"] and summary["numbers_mismatched"] == [] and summary["text"].startswith("15 image units")
    page = (results / "report" / "report.html").read_text()
    assert "Review backend: LLM reviewer qwen2.5vl:7b via Ollama" in page and "no LLM was used" not in page
    assert "15 request(s), 1500 prompt tokens (images included)" in page  # the fake counts 100 a request
    assert len(server.probe_requests()) == 2  # the self-test, once per run (rule llm_check): two probes, not two per job


def test_the_llm_report_in_chromium_shows_provenance_answers_and_quoted_markup_as_text(llm_run):
    need_browser()
    with open_page(llm_run / "results" / "demo" / "report" / "report.html") as (page, problems):
        provenance = page.locator("#llm-provenance").inner_text()
        assert "qwen2.5vl:7b" in provenance and "0.12.6-fake" in provenance
        assert "review_prompt" in provenance and "summary_v2" in provenance  # prompt versions (file stems) of both calls
        assert "ab" * 32 in provenance and "unit review" in provenance and "run summary" in provenance
        assert page.locator("#answers-table tbody tr").count() == 4  # 2 conditions x 2 questions
        page.locator("#gallery .card[data-unit='ctrl_01']").click()
        detail = page.locator("#detail").inner_text()
        assert HOSTILE_NOTE in detail and "estimated by the LLM" in detail  # the model's answer, quoting the sheet
        assert page.evaluate("window.__pwned") is None
    assert problems == [], problems


def test_unchanged_rerun_plans_nothing_and_makes_no_call(llm_run, server, demo_dir):
    calls = len(server.chat_requests())
    result = snakemake(llm_run, "-n")
    assert "Nothing to be done" in result.stdout + result.stderr
    assert len(server.chat_requests()) == calls


def test_rerun_reviews_with_every_answer_cached_contact_no_server(llm_run, server):
    """Reviews and the narrative forced to run again: every answer is in the cache, the self-test's record is the run's,
    so not one request of any kind (not even a model list) reaches the server."""
    before = len(server.requests)
    narrative = json.loads((llm_run / "results" / "demo" / "tables" / "run_summary.json").read_text())["provenance"]
    result = snakemake(llm_run, "--forcerun", "review", "run_summary")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "llm_check" not in planned_jobs(result.stdout + result.stderr)
    assert server.requests[before:] == []
    reviews = [json.loads(line) for line in (llm_run / "results" / "demo" / "tables" / "reviews.jsonl").read_text().splitlines()]
    assert all(r["status"] == "reviewed" and r["reviewer"]["provenance"]["cache_hit"] for r in reviews)
    again = json.loads((llm_run / "results" / "demo" / "tables" / "run_summary.json").read_text())["provenance"]
    assert again["cache_hit"] and again["prompt_sha256"] == narrative["prompt_sha256"]  # no run bookkeeping in its prompt


def test_editing_the_prompt_or_model_reruns_exactly_the_reviews_and_what_follows(llm_run, server, demo_dir):
    downstream = {"review": 2, "refinement": 2, "gallery": 2, "tables": 1, "plots": 1, "run_summary": 1, "report": 1,
                  "ome_zarr": 1, "ro_crate": 1, "all": 1}
    prompt = llm_run / "review_prompt.txt"
    time.sleep(1)
    prompt.write_text(prompt.read_text().replace("expert microscopist", "careful microscopist"))
    assert planned_jobs(snakemake(llm_run, "-n").stdout) == downstream
    other = llm_run / "other-model.yaml"
    config = yaml.safe_load((llm_run / "config.yaml").read_text())
    config["review"]["llm"]["model"] = "gemma3:12b"
    other.write_text(yaml.safe_dump(config))
    assert planned_jobs(snakemake(llm_run, "-n", configfile=other).stdout) == {**downstream, "pipeline_info": 1, "llm_check": 1}
    config["review"]["llm"]["model"] = "qwen2.5vl:7b"
    config["review"]["llm"]["endpoint"] = "127.0.0.1:11434"  # where the server is does not change answers
    config["review"]["llm"]["timeout_s"] = 999
    other.write_text(yaml.safe_dump(config))  # a new endpoint is self-tested again; the reviews then come from the cache
    assert planned_jobs(snakemake(llm_run, "-n", configfile=other).stdout) == {**downstream, "pipeline_info": 1, "llm_check": 1}
    prompt.write_text(prompt.read_text().replace("careful microscopist", "expert microscopist"))


def test_unreachable_ollama_falls_back_visibly(tmp_path, demo_dir):
    (tmp_path / "samples.tsv").write_text("sample_id\tpath\ttreatment\tcell_line\n"
                                          f"ctrl_01\t{demo_dir}/images/ctrl_01.ome.tif\tDMSO\tHeLa\n")
    llm_config(tmp_path, demo_dir, "127.0.0.1:9")
    result = snakemake(tmp_path)
    assert result.returncode == 0, result.stdout[-2000:]
    page = (tmp_path / "results" / "demo" / "report" / "report.html").read_text()
    assert "reviewed by the rule-based fallback because the LLM reviewer was unavailable" in page
    review = json.loads((tmp_path / "results" / "demo" / "tables" / "reviews.jsonl").read_text())
    assert review["status"] == "fallback" and not review["reviewer"]["uses_llm"]
    llm_config(tmp_path, demo_dir, "127.0.0.1:9", on_unreachable="fail")
    result = snakemake(tmp_path, "--forcerun", "review")
    assert result.returncode != 0
    log = (tmp_path / "results" / "demo" / "logs" / "review" / "b0000.log").read_text()
    assert "no Ollama server answers at http://127.0.0.1:9" in log and "on_unreachable: fail" in log


@pytest.mark.parametrize("behaviour, reason", [("http500", "HTTP 500"), ("invalid_json", "invalid JSON"),
                                               ("schema_violation", "violates the schema")])
def test_a_server_that_only_fails_is_reported_honestly(tmp_path, demo_dir, behaviour, reason):
    """Every review answered with HTTP 500, text that is not JSON, or JSON that breaks the schema: the report and
    the terminal say the LLM reviewed nothing and why; with on_unreachable: fail the run fails instead of
    succeeding on the rules."""
    from fake_llm import FakeLLMServer

    (tmp_path / "samples.tsv").write_text("sample_id\tpath\ttreatment\tcell_line\n"
                                          + "".join(f"{n}\t{demo_dir}/images/{n}.ome.tif\tDMSO\tHeLa\n" for n in ("ctrl_01", "ctrl_02")))
    broken = FakeLLMServer().start()
    broken.script.extend([behaviour] * 1000)
    try:
        llm_config(tmp_path, demo_dir, broken.host, retries=1)
        result = snakemake(tmp_path)
        assert result.returncode == 0, result.stdout[-2000:]
        assert "0 reviewed by the LLM, 2 by the rules alone" in result.stdout
        page = (tmp_path / "results" / "demo" / "report" / "report.html").read_text()
        assert "No unit was reviewed by the LLM: all 2 attempted unit(s) stayed unreviewed" in page and reason in page
        assert "Review backend: deterministic rules" not in page  # an LLM was asked; it is not a rules-only run
        assert "<div class='n'>0</div><div>reviewed by the LLM</div>" in page
        assert "<div class='n'>2</div><div>not reviewed by the LLM</div>" in page
        if behaviour != "http500":
            return  # the failing run below is the same for every kind of invalid answer
        llm_config(tmp_path, demo_dir, broken.host, retries=1, on_unreachable="fail")
        result = snakemake(tmp_path, "--forcerun", "review")
        assert result.returncode != 0
        log = (tmp_path / "results" / "demo" / "logs" / "review" / "b0000.log").read_text()
        assert "the LLM gave no valid answer for any of 2 unit(s)" in log and "on_unreachable: fail" in log
    finally:
        broken.stop()


def test_openai_backend_with_a_review_budget_an_api_key_and_the_finetuning_export(tmp_path, demo_dir, monkeypatch):
    """A vLLM-style server behind an API key; the LLM sees the units the rules flag plus a seeded audit of the rest.
    The report says which units it saw and how often it agreed with the rules; the key is in no file of the run."""
    from fake_llm import FakeLLMServer

    key = "sk-site-4b1d9e77"
    monkeypatch.setenv("SITE_VLM_KEY", key)
    server = FakeLLMServer(models={"Qwen/Qwen2.5-VL-7B-Instruct": ""}, api_key=key).start()
    try:
        (tmp_path / "samples.tsv").write_text((demo_dir / "samples.tsv").read_text().replace("\timages/", f"\t{demo_dir}/images/"))
        llm_config(tmp_path, demo_dir, server.openai_base, backend="openai", model="Qwen/Qwen2.5-VL-7B-Instruct",
                      api_key_env="SITE_VLM_KEY", scope="flagged_and_audit", audit_fraction=0.5, questions=[])
        result = snakemake(tmp_path)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    finally:
        server.stop()
    results = tmp_path / "results" / "demo"
    reviews = [json.loads(line) for line in (results / "tables" / "reviews.jsonl").read_text().splitlines()]
    selection = {r["unit_id"]: r["llm_selection"] for r in reviews}
    assert {"flagged", "audit", "not_selected"} <= set(selection.values())
    for review in reviews:
        rules_verdict = review["second_opinion"]["verdict"]
        assert (review["status"] == "reviewed") == (selection[review["unit_id"]] != "not_selected")
        assert (selection[review["unit_id"]] == "flagged") == (rules_verdict != "pass")
    aggregates = json.loads((results / "tables" / "aggregates.json").read_text())
    audit = aggregates["llm"]["audit"]
    assert audit["units"] == sum(v == "audit" for v in selection.values()) and 0 <= audit["agreed"] <= audit["units"]
    (run,) = aggregates["llm"]["runs"]
    assert run["backend"] == "openai" and run["selftest"] == "passed" and run["batches"] == 2
    pairs = [json.loads(line) for line in (results / "tables" / "finetune.jsonl").read_text().splitlines()]
    assert {p["unit_id"] for p in pairs} == {r["unit_id"] for r in reviews if r["status"] == "reviewed"}
    for pair in pairs:
        assert all((results / image).is_file() for image in pair["images"]) and "<data>" in pair["prompt"]
        assert json.loads(pair["messages"][1]["content"])["verdict"] == pair["model_answer"]["verdict"]
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert leaked == [], leaked
    page = (results / "report" / "report.html").read_text()
    assert "via an OpenAI-compatible server" in page and "review.llm.scope: flagged_and_audit" in page
    assert "audit: LLM agrees with the rules" in page and "llm-selftest" in page
    assert "LLM reviewer: Qwen/Qwen2.5-VL-7B-Instruct via openai" in result.stdout and "self-test passed" in result.stdout


def test_a_model_that_fails_the_self_test_reviews_nothing_and_writes_no_narrative(tmp_path, demo_dir):
    """A text-only review model: the run's self-test refuses it (once), the rules review every unit, and the run summary
    is the rules' template, saying why, not the model's text. A text model named for the narrative writes it. The
    Parquet tables of both runs have one declared schema (issue 30: empty LLM columns were typed double)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from fake_llm import FakeLLMServer
    from snakescope.stages.report.columns import column_type

    (tmp_path / "samples.tsv").write_text("sample_id\tpath\ttreatment\tcell_line\n"
                                          f"ctrl_01\t{demo_dir}/images/ctrl_01.ome.tif\tDMSO\tHeLa\n")
    server = FakeLLMServer(models={"qwen2.5vl:7b": "sha256:" + "ab" * 32, "llama3.1:8b": "sha256:" + "ef" * 32},
                           blind={"llama3.1:8b"}).start()
    try:
        llm_config(tmp_path, demo_dir, server.host, model="llama3.1:8b")
        result = snakemake(tmp_path)
        assert result.returncode == 0, result.stdout[-2000:]
        results = tmp_path / "results" / "demo"
        check = json.loads((results / "review" / "llm_check.json").read_text())
        assert check["review"]["passed"] is False and "cannot see images" in check["review"]["error"]
        review = json.loads((results / "tables" / "reviews.jsonl").read_text())
        assert review["status"] == "fallback" and "the run's self-test failed" in review["summary"]
        summary = json.loads((results / "tables" / "run_summary.json").read_text())
        assert summary["uses_llm"] is False and "did not pass the run's self-test" in summary["llm_not_asked"]
        assert server.requests and not [r for r in server.requests if r["path"] == "/api/chat"]  # nothing asked of it
        rules_tables = {name: pq.read_table(results / "tables" / f"{name}.parquet") for name in ("units", "objects", "reviews")}
        llm_config(tmp_path, demo_dir, server.host, summary_model="llama3.1:8b")
        result = snakemake(tmp_path)
        assert result.returncode == 0, result.stdout[-2000:]
        check = json.loads((results / "review" / "llm_check.json").read_text())
        assert check["review"]["passed"] and check["summary"]["passed"] and check["summary"]["model"] == "llama3.1:8b"
        summary = json.loads((results / "tables" / "run_summary.json").read_text())
        assert summary["uses_llm"] and summary["provenance"]["model"] == "llama3.1:8b" and summary["text"].startswith("1 image units")
        for name, rules in rules_tables.items():  # the same declared schema whoever reviewed: runs concatenate
            llm = pq.read_table(results / "tables" / f"{name}.parquet")
            assert llm.schema == rules.schema, name
            assert all(column_type(name, c) for c in llm.column_names), [c for c in llm.column_names if not column_type(name, c)]
            assert pa.concat_tables([rules, llm]).num_rows == 2 * rules.num_rows
        reviews = rules_tables["reviews"].to_pydict()
        assert reviews["llm_verdict"] == [None] and rules_tables["reviews"].schema.field("llm_verdict").type == pa.string()
    finally:
        server.stop()

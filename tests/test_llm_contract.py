"""Contract tests against a real vision-model server of each kind, through snakescope's own clients.

Skipped unless an environment variable names a server. They check what the fake server in tests/ assumes about
the real ones: the endpoints, images (Ollama: base64 PNG; OpenAI-compatible: PNG data URLs), structured output
with a JSON schema, model ids and versions, a 404 for an unknown model, and that the model passes the self-test.

    SNAKESCOPE_OLLAMA_HOST=127.0.0.1:11434 SNAKESCOPE_OLLAMA_MODEL=qwen2.5vl:7b .venv/bin/python -m pytest -m llm_live
    SNAKESCOPE_OPENAI_BASE_URL=http://gpu01:8000/v1 SNAKESCOPE_OPENAI_MODEL=Qwen/Qwen2.5-VL-7B-Instruct \
        SNAKESCOPE_OPENAI_KEY_ENV=VLLM_API_KEY .venv/bin/python -m pytest -m llm_live
"""

from __future__ import annotations

import json
import os

import pytest

from conftest import ROOT

SERVERS = {
    "ollama": (os.environ.get("SNAKESCOPE_OLLAMA_HOST"), os.environ.get("SNAKESCOPE_OLLAMA_MODEL", "qwen2.5vl:7b"), ""),
    "openai": (os.environ.get("SNAKESCOPE_OPENAI_BASE_URL"), os.environ.get("SNAKESCOPE_OPENAI_MODEL", "Qwen/Qwen2.5-VL-7B-Instruct"),
               os.environ.get("SNAKESCOPE_OPENAI_KEY_ENV", "")),
}
pytestmark = pytest.mark.llm_live


@pytest.fixture(params=sorted(SERVERS))
def live(request):
    endpoint, model, key_env = SERVERS[request.param]
    if not endpoint:
        pytest.skip(f"no real {request.param} server named (see this module's docstring)")
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

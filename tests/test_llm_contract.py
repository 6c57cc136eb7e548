"""Contract tests against a real Ollama server with a vision model.

Skipped unless SNAKESCOPE_OLLAMA_HOST is set (and the model in SNAKESCOPE_OLLAMA_MODEL, default
qwen2.5vl:7b, is pulled there). They check what the fake server in tests/ assumes about Ollama:
the endpoints, structured output with a JSON schema, images as PNG bytes, and digests.

    SNAKESCOPE_OLLAMA_HOST=127.0.0.1:11434 SNAKESCOPE_OLLAMA_MODEL=gemma3:12b .venv/bin/python -m pytest -m ollama_live
"""

from __future__ import annotations

import json
import os

import pytest

from conftest import ROOT

HOST = os.environ.get("SNAKESCOPE_OLLAMA_HOST")
MODEL = os.environ.get("SNAKESCOPE_OLLAMA_MODEL", "qwen2.5vl:7b")
pytestmark = [pytest.mark.ollama_live,
              pytest.mark.skipif(not HOST, reason="set SNAKESCOPE_OLLAMA_HOST (and SNAKESCOPE_OLLAMA_MODEL) to run against a real Ollama")]


@pytest.fixture(scope="module")
def client():
    import ollama

    return ollama.Client(host=HOST, timeout=600)


def test_server_answers_version_and_has_the_model(client):
    from snakescope.mllm import OllamaSettings, model_digest, normalise_host, server_version

    host = normalise_host(HOST)
    assert server_version(host)
    assert len(model_digest(client, OllamaSettings(model=MODEL), host)) >= 12


def test_unknown_model_is_a_404(client):
    import ollama

    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="snakescope-no-such-model:1b", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 404


def test_review_of_a_demo_image_is_schema_valid_with_provenance(demo_batch, tmp_path):
    from snakescope.review import review_batch

    root = demo_batch["root"]
    settings = {"backend": "ollama", "ollama": {"host": HOST, "model": MODEL, "timeout_s": 600,
                                                "prompt": str(ROOT / "config" / "prompts" / "review_v1.txt"),
                                                "questions": ["Is the staining nuclear?"]}}
    doc = review_batch(root / "import" / "manifest.json", root / "quality.json", root / "inference" / "manifest.json",
                       root / "segmentation", ROOT / "config" / "knowledge_base.yaml", settings, ("DAPI",), tmp_path,
                       cache_dir=tmp_path / "cache")
    reviewed = [r for r in doc["reviews"] if r["status"] == "reviewed"]
    assert reviewed, json.dumps(doc["reviews"][0], indent=1)[:2000]
    for review in reviewed:
        prov = review["reviewer"]["provenance"]
        assert prov["model"] == MODEL and prov["ollama_version"] and prov["model_digest"]
        assert review["answers"][0]["answer"] in ("yes", "no", "unsure")
    empty = next(r for r in doc["reviews"] if r["unit_id"] == "empty_01")
    assert empty["verdict"] == "fail"  # the rules alone guarantee this; the model may add flags

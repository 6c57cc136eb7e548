"""The run's Workflow Run RO-Crate (stages/report/ro_crate.py), read back with the rocrate package."""

from __future__ import annotations

import json
from pathlib import Path

from rocrate.rocrate import ROCrate

from snakescope.core.records import sha256_file
from snakescope.stages.report.ro_crate import write_crate


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_sources_read_and_refused_are_in_the_crate_with_names_as_data(tmp_path):
    raw = tmp_path / "raw data #1"
    good = _write(raw / "well A01 [x].tif", "pixels")
    broken = _write(raw / "broken.czi", "not a czi")
    results = tmp_path / "results" / "screen"
    _write(results / "import" / "b0000" / "manifest.json", json.dumps({
        "batch": "b0000",
        "units": [{"unit_id": "a01-s0", "sample_id": "a01", "source_path": str(good), "source_sha256": sha256_file(good)},
                  {"unit_id": "a01-s1", "sample_id": "a01", "source_path": str(good), "source_sha256": sha256_file(good)}],
        "failures": [{"source_path": str(broken), "reason": "not a CZI file"}]}))
    params = _write(results / "pipeline_info" / "params.json", "{}")
    versions = _write(results / "pipeline_info" / "software_versions.json", json.dumps({
        "snakescope": "0.1.0", "python": "3.11.7", "workflow_git": {"commit": "abc123"}, "packages": {"numpy": "2.4.6", "torch": None}}))
    check = _write(results / "models" / "model_check.json", json.dumps({
        "name": "U-Net", "id": "affable-shark", "source": "affable-shark", "digest": "d1", "weights_sha256": "w1", "weight_format": "onnx"}))
    report = _write(results / "report" / "report.html", "<html></html>")
    (results / "ome_zarr").mkdir()
    write_crate(root=results, dataset="screen", imported=[str(results / "import" / "b0000")], results=[str(report), str(results / "ome_zarr")],
                params=str(params), versions=str(versions), model_check=str(check), out=results / "ro-crate-metadata.json")

    crate = ROCrate(results)
    (action,) = crate.get_by_type("CreateAction")
    files = [e for e in action["object"] if e.id.startswith("file:")]
    assert [e["name"] for e in files] == ["well A01 [x].tif"]  # one entity per file, whatever its scenes
    assert files[0].id == good.resolve().as_uri() and files[0]["sha256"] == sha256_file(good)
    assert "broken.czi: not a CZI file" in action["error"]
    model = next(e for e in action["object"] if "SoftwareSourceCode" in e.type)
    assert model["identifier"] == "affable-shark" and "digest d1" in model["description"]
    assert {e.id for e in action["result"]} == {"pipeline_info/software_versions.json", "report/report.html", "ome_zarr/"}
    workflow = crate.mainEntity
    assert workflow["identifier"] == "abc123" and workflow["version"] == "0.1.0"
    assert {s["name"] for s in workflow["softwareRequirements"]} == {"numpy", "Python"}  # absent packages not claimed

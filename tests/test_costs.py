"""Job memory follows the fields a batch holds (snakescope.core.costs), in the package and in the jobs Snakemake plans."""

from __future__ import annotations

import json
import re

import pytest

from snakescope.core.costs import STAGE_MEMORY, job_mem_mb, largest_field_pixels, pixels_held
from workflow_helpers import snakemake, write_config


def manifest(tmp_path, *shapes):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"units": [{"unit_id": f"u{i}", "shape": list(s)} for i, s in enumerate(shapes)]}))
    return path


def test_memory_is_the_rule_floor_until_fields_are_large(tmp_path):
    assert job_mem_mb(tmp_path / "absent.json", "quality", 2000) == 2000  # a dry run before the import
    small = manifest(tmp_path, (1, 256, 256), (2, 1024, 1344))
    assert largest_field_pixels(small) == 1024 * 1344
    assert job_mem_mb(small, "quality", 2000) == 2000
    large = manifest(tmp_path, (1, 256, 256), (1, 16384, 16384))
    # the stages work by blocks on large fields: a 16384² mosaic asks for what a block needs, within the floors
    for stage, floor in (("quality", 2000), ("infer", 6000), ("postprocess", 4000), ("gallery", 2000), ("review", 4000)):
        assert job_mem_mb(large, stage, floor) == floor, stage
    assert pixels_held("postprocess", 16384**2) == (2048 + 2 * 256) ** 2
    assert pixels_held("quality", 16384**2) == pixels_held("quality", 4096**2) == 4096**2
    # unless the blocks are made larger: then the block's memory is asked for
    base, per_pixel = STAGE_MEMORY["postprocess"]
    held = 16384**2  # the whole field: no larger than the block and its overlap
    assert job_mem_mb(large, "postprocess", 4000, postprocess_block_px=16384) == int(1.25 * (base + per_pixel * held / 1e6)) > 4000



def test_inference_asks_for_a_tile_per_field_it_predicts_side_by_side(tmp_path):
    """With OpenVINO an inference job predicts one field per thread (core.costs.inference_streams), each holding its
    tile and field: the job asks for that; with onnxruntime one field at a time, whatever its threads."""
    from snakescope.core.costs import inference_streams, tile_mb

    fields = manifest(tmp_path, (1, 2048, 2048))
    tiling = {"status": "passed", "rule": {"tile_px": 4024, "minimum": 8, "step": 8}, "bytes_per_tile_pixel": 216}
    checks = {}
    for name in ("openvino", "onnxruntime"):
        checks[name] = tmp_path / f"{name}.json"
        checks[name].write_text(json.dumps({"tiling": {**tiling, "engine": {"name": name}}}))
    base, per_pixel = STAGE_MEMORY["infer"]
    one = tile_mb(checks["openvino"], 2048**2) + per_pixel * 2048**2 / 1e6
    assert inference_streams({"name": "openvino"}, 2) == 2 and inference_streams({"name": "onnxruntime"}, 2) == 1
    assert job_mem_mb(fields, "infer", 600, model_check=checks["openvino"], workers=2) == int(1.25 * (base + 2 * one))
    assert job_mem_mb(fields, "infer", 600, model_check=checks["onnxruntime"], workers=2) == int(1.25 * (base + one))
    assert job_mem_mb(fields, "infer", 600, model_check=checks["openvino"], workers=1) == int(1.25 * (base + one))


@pytest.mark.slow
def test_snakemake_asks_for_the_memory_of_the_batch_it_runs(tmp_path, demo_dir):
    """After the import, each batch's quality, post-processing and gallery jobs ask for memory from its own largest
    field: a batch whose manifest holds an 8192² field asks for more than the rule's floor, the other batch does not."""
    (tmp_path / "samples.tsv").write_text((demo_dir / "samples.tsv").read_text().replace("\timages/", f"\t{demo_dir}/images/"))
    write_config(tmp_path, demo_dir, postprocess__block_px=16384)  # blocks larger than the field: it is held whole
    assert snakemake(tmp_path, "--until", "import_batch").returncode == 0
    path = tmp_path / "results" / "demo" / "import" / "b0000" / "manifest.json"
    doc = json.loads(path.read_text())
    doc["units"][0]["shape"] = [1, 8192, 8192]
    path.write_text(json.dumps(doc))
    result = snakemake(tmp_path, "-n")
    planned = {}
    for block in re.split(r"\n(?=rule |localrule )", result.stdout):
        name = block.split(":", 1)[0].split()[-1]
        batch = re.search(r"batch=(b\d{4})", block)
        memory = re.search(r"mem_mb=(\d+)", block)
        if batch and memory:
            planned[(name, batch.group(1))] = int(memory.group(1))
    assert planned[("postprocess", "b0000")] == job_mem_mb(path, "postprocess", 4000, postprocess_block_px=16384) > 4000
    assert planned[("postprocess", "b0001")] == 4000
    assert planned[("quality_metrics", "b0000")] == planned[("quality_metrics", "b0001")] == 2000  # by strips
    assert planned[("gallery", "b0000")] >= 2000

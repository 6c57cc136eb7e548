"""Effect of the critique-driven refinement on object-level F1 (IoU 0.5), on fields with known truth.

    python bench/refinement_f1.py [--fields 8]

Fields of touching nuclei (snakescope.demo.clustered_fields) go through import, the demo model and
post-processing with a given starting setting; the LLM reviewer (here tests/fake_llm.py, which
counts nuclei in the image it receives and critiques the outlines it sees) then drives the bounded
refinement. Prints F1 and count error before and after, per starting setting. With a real vision
model, pass --host to use it instead of the fake.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "workflow"), str(ROOT / "tests")]


def main() -> None:
    import tifffile

    from snakescope.stages.acquisition import import_batch
    from snakescope.core.settings import ImportSettings
    from snakescope.demo import clustered_fields, write_demo_model, write_fields
    from snakescope.stages.inference import check_model, predict_batch
    from snakescope.core.settings import ModelSettings
    from snakescope.core.inputs import read_sample_sheet
    from snakescope.stages.quality import quality_batch
    from snakescope.core.records import write_json
    from snakescope.core.knowledge import load_knowledge_base
    from snakescope.stages.refinement import refine_batch
    from snakescope.stages.review import review_batch
    from snakescope.stages.segmentation import postprocess_batch
    from snakescope.methods.measurements import object_f1
    from snakescope.core.settings import PostprocessSettings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fields", type=int, default=8)
    parser.add_argument("--host", default="", help="a real Ollama server (default: the fake test server)")
    parser.add_argument("--model", default="qwen2.5vl:7b")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="snakescope-refine-"))
    sheet = write_fields(clustered_fields(args.fields), root / "data")
    model = write_demo_model(root / "model")
    import_batch("b0000", read_sample_sheet(sheet), ImportSettings(), root / "import")
    quality_batch(root / "import" / "manifest.json", root / "quality.json")
    settings = ModelSettings(source=str(model), channels=("DAPI",))
    write_json(root / "check.json", check_model(settings, root / "cache"))
    predict_batch(root / "import" / "manifest.json", settings, root / "check.json", root / "inference")
    fake = None
    host = args.host
    if not host:
        from fake_llm import FakeLLMServer

        fake = FakeLLMServer().start()
        host = fake.host
    print(f"{args.fields} fields of touching nuclei; reviewer: {'fake test server' if fake else host}")
    print(f"{'start setting':42s} {'F1 before':>9s} {'F1 after':>9s} {'|count err| before':>19s} {'after':>6s} refined")
    for name, start in [("defaults (split_min_distance 0.4)", {}),
                        ("under-splitting (split_min_distance 3.0)", {"split_min_distance": 3.0}),
                        ("no splitting (split_touching false)", {"split_touching": False})]:
        seg = root / f"seg-{len(start)}-{abs(hash(name)) % 1000}"
        postprocess_batch(root / "import" / "manifest.json", root / "inference" / "manifest.json",
                          PostprocessSettings.from_config(start), ("DAPI",), seg)
        reviewed, out = root / f"review-{seg.name}", root / f"refinement-{seg.name}"
        review_batch(root / "import" / "manifest.json", root / "quality.json", root / "inference" / "manifest.json", seg,
                           ROOT / "config" / "knowledge_base.yaml",
                           {"backend": "ollama", "llm": {"endpoint": host, "model": args.model,
                                                         "prompt": str(ROOT / "config" / "prompts" / "review_v1.txt")}},
                           ("DAPI",), reviewed, cache_dir=root / "cache")
        doc = refine_batch(root / "import" / "manifest.json", root / "quality.json", root / "inference" / "manifest.json", seg,
                           reviewed, out, PostprocessSettings.from_config(start), ("DAPI",),
                           {"enabled": True, "max_iterations": 3, "split_min_distance": [0.15, 1.5],
                            "min_object_area_fraction": [0.05, 0.5]}, 0.2,
                           load_knowledge_base(ROOT / "config" / "knowledge_base.yaml"))
        before, after, err_before, err_after, refined = [], [], [], [], 0
        for review in doc["reviews"]:
            uid = review["unit_id"]
            truth = tifffile.imread(root / "data" / "truth" / f"{uid}.tif")
            first = tifffile.imread(seg / f"{uid}.labels.ome.tif")
            chosen = doc["segmentation"][uid]
            final = tifffile.imread(chosen["labels"])
            refined += chosen["refined"]
            before.append(object_f1(first, truth)["f1"])
            after.append(object_f1(final, truth)["f1"])
            err_before.append(abs(int(first.max()) - int(truth.max())))
            err_after.append(abs(int(final.max()) - int(truth.max())))
        print(f"{name:42s} {statistics.mean(before):9.3f} {statistics.mean(after):9.3f} "
              f"{statistics.mean(err_before):19.2f} {statistics.mean(err_after):6.2f} {refined}/{len(doc['reviews'])}")
    if fake:
        fake.stop()


if __name__ == "__main__":
    main()

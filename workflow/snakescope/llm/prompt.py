"""What the model is sent: the prompt with its delimited data block, the images, and the answer cache."""

from __future__ import annotations

import hashlib
import json
import string
from pathlib import Path
from typing import Any

from ..core.records import read_json, write_json

def sha256(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def data_block(data: dict[str, Any]) -> str:
    """JSON for the prompt's <data> block; '<' and '>' are escaped so text cannot close the block."""
    return json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False, default=str).replace("<", "\\u003c").replace(">", "\\u003e")


def render_prompt(template: str, data: dict[str, Any], **fields_: Any) -> str:
    """Fill a ``string.Template`` prompt: ``$data`` gets the delimited JSON, other fields their text."""
    return string.Template(template).substitute(data=data_block(data), **fields_)


def unit_data(unit: dict[str, Any], metrics: dict[str, float] | None, summary: dict[str, Any] | None,
              expected: dict[str, Any], line: str, rules_review: dict[str, Any]) -> dict[str, Any]:
    """What the model reads besides the image: metadata, metrics, counts, sizes, expected range."""
    keep = ("snr", "blur", "focus_laplacian", "percent_saturated", "foreground_fraction", "background", "noise", "max")
    return {
        "unit_id": unit["unit_id"],
        "file_name": Path(unit.get("source_path", "")).name,
        "scene": unit.get("scene_name"),
        "pixel_size_um": unit.get("pixel_size_um", {}).get("x"),
        "sample_sheet_metadata": unit.get("metadata", {}),
        "quality_metrics": {k: round(float(metrics[k]), 4) for k in keep if metrics and k in metrics},
        "segmentation": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in (summary or {}).items()},
        "expected_nucleus_diameter_um": {"cell_line": line, "min": expected.get("min"), "max": expected.get("max")},
        "rule_based_issues": [i["type"] for i in rules_review["issues"]],
    }



def prompt_version(path: str | Path) -> str:
    return Path(path).stem


def review_images(image: Any, labels: Any, pixel_um: float, per_request: int, edges: Any = None) -> list[bytes]:
    """PNG bytes the model sees: one two-panel image (raw | outlines), or the two panels separately. ``edges``:
    outline pixels instead of labels (a large field's reduced view)."""
    from ..core.rendering import overlay_png, png_bytes, rgb_panel

    if per_request >= 2:
        return [png_bytes(rgb_panel(image, None, pixel_um, 512)), png_bytes(rgb_panel(image, labels, pixel_um, 512, edges=edges))]
    return [overlay_png(image, labels, pixel_um, edges=edges)]


def fill_answers(answer: dict[str, Any], questions: tuple[str, ...]) -> list[dict[str, str]]:
    """One answer per configured question, in order; a question the model skipped is 'unsure'."""
    given = {a["question"].strip().lower(): a for a in answer.get("answers", [])}
    out = []
    for index, question in enumerate(questions):
        match = given.get(question.strip().lower())
        if match is None and index < len(answer.get("answers", [])):
            match = answer["answers"][index]
        out.append({"question": question, "answer": match["answer"] if match else "unsure",
                    "evidence": (match["evidence"] if match else "not answered by the model")[:500]})
    return out



class ReviewCache:
    """Answers on disk, keyed by image content, prompt, backend, model id, options and schema."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder) / "llm-answers"

    @staticmethod
    def key(images: list[bytes], prompt: str, backend: str, model: str, model_id: str, options: dict[str, Any],
            schema: Any) -> str:
        return sha256(json.dumps({"images": [sha256(i) for i in images], "prompt": sha256(prompt), "backend": backend,
                                  "model": model, "model_id": model_id, "options": options,
                                  "schema": sha256(json.dumps(schema, sort_keys=True))}, sort_keys=True))

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.folder / key[:2] / f"{key}.json"
        return read_json(path) if path.is_file() else None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        write_json(self.folder / key[:2] / f"{key}.json", entry)

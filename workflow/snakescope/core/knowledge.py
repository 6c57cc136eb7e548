"""The knowledge base (``review.knowledge_base``): what the measurements are checked against, e.g. the expected nucleus
diameter of each cell line, each entry with its source."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_knowledge_base(path: str | Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}


def expected_diameter(metadata: dict[str, str], knowledge_base: dict[str, Any], column: str) -> tuple[str, dict[str, Any]]:
    """The knowledge-base range for a unit's cell line (case-insensitive), else the default range."""
    ranges = knowledge_base.get("nucleus_diameter_um", {})
    wanted = (metadata.get(column) or "").strip().lower()
    for name, entry in ranges.items():
        if name.lower() == wanted and name != "default":
            return name, entry
    return "default", ranges.get("default", {"min": 0.0, "max": float("inf"), "source": "none configured"})

"""Resolve the workflow's inputs: sample sheet or glob patterns -> source files -> batches.

Imported by the Snakefile at parse time, so it stays light (standard library only).
"""

from __future__ import annotations

import csv
import glob
import re
from dataclasses import dataclass, field
from pathlib import Path

REQUIRED_COLUMNS = ("sample_id", "path")
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class InputError(ValueError):
    """A problem with the configured inputs; the message names the file or key."""


@dataclass(frozen=True)
class Source:
    """One acquisition file and the free-text metadata of its sample sheet row."""

    sample_id: str
    path: str
    metadata: dict[str, str] = field(default_factory=dict)


def safe_id(text: str) -> str:
    """A file-system and URL safe identifier derived from ``text``."""
    cleaned = _SAFE.sub("_", text).strip("_.")
    if not cleaned:
        raise InputError(f"cannot derive an identifier from {text!r}")
    return cleaned


def _expand(pattern: str, base: Path) -> list[Path]:
    path = Path(pattern).expanduser()
    if not path.is_absolute():
        path = base / path
    if glob.has_magic(str(path)):
        return sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    return [path]


def read_sample_sheet(sheet: str | Path) -> list[Source]:
    """Read a TSV sample sheet; relative paths are resolved against the sheet's folder.

    A row whose ``path`` is a glob yields one source per match, with the sample id
    suffixed by the file name. Every other column is kept as free-text metadata.
    """
    sheet = Path(sheet)
    if not sheet.is_file():
        raise InputError(f"sample sheet not found: {sheet} (config key 'samples')")
    with sheet.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader((line for line in handle if not line.startswith("#")), delimiter="\t"))
        columns = rows[0].keys() if rows else []
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if rows and missing:
        raise InputError(f"sample sheet {sheet} lacks column(s) {', '.join(missing)}; it needs {', '.join(REQUIRED_COLUMNS)}")
    sources: list[Source] = []
    for line_no, row in enumerate(rows, start=2):
        sample_id = (row.get("sample_id") or "").strip()
        pattern = (row.get("path") or "").strip()
        if not sample_id or not pattern:
            raise InputError(f"sample sheet {sheet}, line {line_no}: empty sample_id or path")
        metadata = {k: (v or "").strip() for k, v in row.items() if k not in REQUIRED_COLUMNS and k is not None}
        matches = _expand(pattern, sheet.parent)
        if not matches or (len(matches) == 1 and not matches[0].exists()):
            raise InputError(f"sample sheet {sheet}, line {line_no}: no file matches {pattern!r} (sample {sample_id!r})")
        if len(matches) == 1 and not glob.has_magic(pattern):
            sources.append(Source(safe_id(sample_id), str(matches[0]), metadata))
        else:
            sources.extend(Source(safe_id(f"{sample_id}-{m.name}"), str(m), metadata) for m in matches)
    return _checked(sources, str(sheet))


def sources_from_globs(patterns: list[str], base: str | Path = ".") -> list[Source]:
    """Sources from glob patterns; sample ids are the file names."""
    sources: list[Source] = []
    for pattern in patterns:
        matches = _expand(pattern, Path(base))
        if not matches or not matches[0].exists():
            raise InputError(f"no file matches {pattern!r} (config key 'inputs')")
        sources.extend(Source(safe_id(m.name), str(m)) for m in matches)
    return _checked(sources, "config key 'inputs'")


def _checked(sources: list[Source], origin: str) -> list[Source]:
    if not sources:
        raise InputError(f"no input files: {origin} lists none")
    seen: dict[str, str] = {}
    for src in sources:
        if src.sample_id in seen:
            raise InputError(f"duplicate sample id {src.sample_id!r} in {origin} ({seen[src.sample_id]} and {src.path})")
        seen[src.sample_id] = src.path
    return sources


def batches(sources: list[Source], batch_size: int) -> dict[str, list[Source]]:
    """Split sources, in order, into batches of ``batch_size`` files named ``b0000``, ``b0001``..."""
    if batch_size < 1:
        raise InputError("config key 'batch_size' must be at least 1")
    return {
        f"b{i // batch_size:04d}": sources[i : i + batch_size] for i in range(0, len(sources), batch_size)
    }

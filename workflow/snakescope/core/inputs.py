"""Resolve the workflow's inputs: sample sheet or glob patterns -> source files -> batches.

Imported by the Snakefile at parse time, so it stays light (standard library only).
"""

from __future__ import annotations

import csv
import glob
import re
from typing import Any
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


MAX_CELL_CHARS = 10_000  # metadata travels in job parameters and the report; a longer cell is an error in the sheet
LINE = "\0line"  # the sheet line of a row, kept beside its cells while reading


def _sheet_rows(sheet: Path) -> list[dict[str, Any]]:
    """The sheet's rows (comment lines skipped), each with its line number; any problem names the sheet and line."""
    rows: list[dict[str, Any]] = []
    line_no = 0  # the sheet line last handed to the csv reader: the line a row (or an error) ends on

    def lines(handle):
        nonlocal line_no
        for number, line in enumerate(handle, start=1):
            if not line.startswith("#"):
                line_no = number
                yield line

    try:
        with sheet.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(lines(handle), delimiter="\t"):
                for column, value in row.items():
                    if value is not None and not isinstance(value, str):  # more cells than header columns
                        if not any(v.strip() for v in value):
                            continue  # trailing tabs
                        raise InputError(f"sample sheet {sheet}, line {line_no}: more cells than columns "
                                         f"({len(row) - 1 + len(value)} for {len(row) - 1})")
                    if isinstance(value, str) and len(value) > MAX_CELL_CHARS:
                        raise InputError(f"sample sheet {sheet}, line {line_no}, column {column!r}: a cell of {len(value):,} "
                                         f"characters (at most {MAX_CELL_CHARS:,})")
                rows.append({**row, LINE: line_no})
    except csv.Error as exc:
        raise InputError(f"sample sheet {sheet}, line {line_no}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"sample sheet {sheet}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8 TSV") from None
    return rows


def read_sample_sheet(sheet: str | Path, growing: bool = False) -> list[Source]:
    """Read a TSV sample sheet; relative paths are resolved against the sheet's folder.

    A row whose ``path`` is a glob yields one source per match, with the sample id
    suffixed by the file name. Every other column is kept as free-text metadata.
    ``growing``: a sheet still being written during an acquisition (watch mode): a last line without its
    newline may be cut short and is left for later, and so are rows whose file does not exist yet.
    """
    sheet = Path(sheet)
    if not sheet.is_file():
        raise InputError(f"sample sheet not found: {sheet} (config key 'samples')")
    rows = _sheet_rows(sheet)
    if growing and rows and not sheet.read_bytes().endswith(b"\n"):
        rows = rows[:-1]
    columns = rows[0].keys() if rows else []
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if rows and missing:
        raise InputError(f"sample sheet {sheet} lacks column(s) {', '.join(missing)}; it needs {', '.join(REQUIRED_COLUMNS)}")
    sources: list[Source] = []
    for row in rows:
        line_no = row.pop(LINE)
        sample_id = (row.get("sample_id") or "").strip()
        pattern = (row.get("path") or "").strip()
        if not sample_id or not pattern:
            raise InputError(f"sample sheet {sheet}, line {line_no}: empty sample_id or path")
        metadata = {k: (v or "").strip() for k, v in row.items() if k not in REQUIRED_COLUMNS and k is not None}
        matches = _expand(pattern, sheet.parent)
        if growing and (not matches or (len(matches) == 1 and not matches[0].exists())):
            continue  # not acquired yet
        if not matches or (len(matches) == 1 and not matches[0].exists()):
            raise InputError(f"sample sheet {sheet}, line {line_no}: no file matches {pattern!r} (sample {sample_id!r})")
        if len(matches) == 1 and not glob.has_magic(pattern):
            sources.append(Source(safe_id(sample_id), str(matches[0]), metadata))
        else:
            sources.extend(Source(safe_id(f"{sample_id}-{m.name}"), str(m), metadata) for m in matches)
    return _checked(sources, str(sheet)) if sources or not growing else []


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

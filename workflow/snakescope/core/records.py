"""Plain records passed between stages, and their JSON files."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

# Label images: OME-TIFF with the unit's pixel size, so napari, Fiji and bioio open them calibrated.
LABELS_SUFFIX = ".labels.ome.tif"


def utc_now() -> str:
    """This moment in UTC, ISO 8601 to the second: how every record and report stamps its time."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Failure:
    """An input or unit that a stage could not process, with the reason in one line."""

    stage: str
    source_path: str
    reason: str
    sample_id: str = ""
    unit_id: str = ""
    metadata: dict[str, str] = field(default_factory=dict)  # the sample sheet's columns (well, plate, ...)

    @classmethod
    def from_exception(cls, stage: str, source_path: str, exc: BaseException, **ids: Any) -> "Failure":
        text = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
        return cls(stage=stage, source_path=source_path, reason=reason, **ids)


@dataclass
class Unit:
    """One 2D image unit (a scene, timepoint or plane of a source file) after import."""

    unit_id: str
    sample_id: str
    source_path: str
    source_sha256: str
    scene_index: int
    scene_name: str
    source_dims: dict[str, int]
    selection: dict[str, Any]
    dtype: str
    shape: list[int]
    channel_names: list[str]
    pixel_size_um: dict[str, float | None]
    pixel_size_origin: str
    image_path: str
    reader: str
    metadata: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    background: dict[str, Any] = field(default_factory=dict)  # channel name -> fitted surface (snakescope.core.background)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def json_safe(value: Any) -> Any:
    """``value`` with every NaN/inf (Python or numpy float) replaced by None: JSON has no NaN, and one
    ``NaN`` in a document makes ``JSON.parse`` in the report fail."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist") and getattr(value, "ndim", 0) > 0:  # numpy arrays
        return json_safe(value.tolist())
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename) so a killed job leaves no partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    # mode "x" creates the file with 0666 minus the umask, like any other output (mkstemp would make it 0600)
    with open(tmp, "x", encoding="utf-8") as handle:
        json.dump(json_safe(data), handle, indent=1, sort_keys=True, default=_jsonable, allow_nan=False)
    os.replace(tmp, path)


def read_csv(path: str | Path, delimiter: str = ",") -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter=delimiter))


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def manifest(batch: str, units: list[Unit], failures: list[Failure], **extra: Any) -> dict[str, Any]:
    """The JSON document every batch stage writes: its units, its failures, and stage extras."""
    return {"batch": batch, "units": [asdict(u) for u in units], "failures": [asdict(f) for f in failures], **extra}



class ObjectTable:
    """Object rows kept as columns (8 bytes a number instead of a dict entry of ~100): a large field's tens of
    thousands of objects. Rows are added a block at a time and come back as the same dicts, in the same order."""

    def __init__(self) -> None:
        self._chunks: list[tuple[list[str], dict[str, Any]]] = []
        self._length = 0

    def extend(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        columns = list(dict.fromkeys(k for row in rows for k in row))
        packed: dict[str, Any] = {}
        for key in columns:
            values = [row.get(key) for row in rows]
            kinds = {type(v) for v in values if v is not None}
            if kinds <= {float, int} and kinds and not (kinds == {int} and None in values):
                kind = int if kinds == {int} else float
                packed[key] = (kind, np.array([np.nan if v is None else v for v in values], np.int64 if kind is int else np.float64),
                               np.array([v is None for v in values]))
            elif kinds == {bool}:
                packed[key] = (bool, np.array(values, bool), np.zeros(len(values), bool))
            else:  # text (the unit id): one reference per row
                packed[key] = (object, np.array(values, object), np.zeros(len(values), bool))
        self._chunks.append((columns, packed))
        self._length += len(rows)

    def __len__(self) -> int:
        return self._length

    def __iter__(self):
        for columns, packed in self._chunks:
            converted = {key: (kind, values.tolist(), missing) for key, (kind, values, missing) in packed.items()}
            for i in range(len(next(iter(packed.values()))[1])):
                yield {key: None if missing[i] else (kind(values[i]) if kind is not object else values[i])
                       for key, (kind, values, missing) in converted.items()}


# Actions a microscope (or its operator) can carry out; adjust_segmentation and none are analysis-side.
ACQUISITION_ACTIONS = ("refocus", "reduce_exposure", "increase_exposure", "skip_field", "reacquire", "check_sample")

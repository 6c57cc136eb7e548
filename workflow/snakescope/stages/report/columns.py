"""The declared column types of the run's tables (``tables/<name>.csv`` and ``.parquet``): one schema per table, the
same whether or not an LLM or a person reviewed and whatever the values, so tables of different runs concatenate.

Columns named by pattern: ``meta_*`` (the sample sheet's free text) are strings, ``mean_intensity_<channel>`` floats.
A column a table gains must be declared here (a test checks every column of a demo run, with and without an LLM).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

S, I, F, B = "string", "int64", "float64", "bool"

_METRICS = ("snr", "blur", "focus_laplacian", "power_log_log_slope", "focus_normalized_variance", "percent_saturated",
            "percent_minimal", "foreground_fraction", "background", "background_unevenness", "noise", "mean", "max",
            "density_per_mm2", "diameter_um_median", "diameter_um_p10", "diameter_um_p90", "area_um2_median",
            "diameter_px_median", "typical_diameter_px", "fraction_large", "fraction_low_solidity", "pixel_size_x_um",
            "pixel_size_y_um", "percent_non_finite")

TABLES: dict[str, dict[str, str]] = {
    "units": {
        **dict.fromkeys(("unit_id", "sample_id", "batch", "scene", "source_path", "status", "pixel_size_origin", "channels",
                         "length_unit", "verdict", "issues", "machine_verdict", "human_verdict", "human_comment",
                         "review_backend", "review_status", "llm_selection", "llm_verdict", "overlay", "actions",
                         "decided_by", "overruled"), S),
        **dict.fromkeys(_METRICS, F),
        **dict.fromkeys(("height", "width", "object_count", "removed_low_contrast", "llm_estimated_count", "flags"), I),
        "refined": B,
    },
    "objects": {
        **dict.fromkeys(("unit_id", "sample_id"), S),
        **dict.fromkeys(("label",), I),
        **dict.fromkeys(("centroid_y_px", "centroid_x_px", "area_px", "equivalent_diameter_px", "centroid_y_um", "centroid_x_um",
                         "area_um2", "equivalent_diameter_um", "perimeter_um", "circularity", "eccentricity", "solidity",
                         "major_axis_um", "minor_axis_um", "mean_intensity", "contrast_snr"), F),
        "touches_border": B,
    },
    "reviews": {
        **dict.fromkeys(("unit_id", "backend", "status", "llm_selection", "verdict", "llm_verdict", "rules_verdict", "issues",
                         "evidence", "actions", "summary"), S),
        "uses_llm": B,
        "confidence": F,
        **dict.fromkeys(("flags", "segmented_count", "estimated_count"), I),
    },
}


def column_type(table: str, column: str) -> str | None:
    """The declared type of a column, or None when it is not declared."""
    if column.startswith("meta_"):
        return S
    if table == "objects" and column.startswith("mean_intensity_"):
        return F
    return TABLES[table].get(column)


def _values(raw: list[str], kind: str, where: str) -> list[Any]:
    """CSV text as typed values; an empty cell is null. A value that does not parse stops with its column named."""
    out: list[Any] = []
    for text in raw:
        if text == "":
            out.append(None)
        elif kind == S:
            out.append(text)
        elif kind == B:
            if text not in ("True", "False", "true", "false"):
                raise ValueError(f"{where}: {text!r} is not a boolean")
            out.append(text in ("True", "true"))
        elif kind == I:
            number = float(text)
            if not number.is_integer():
                raise ValueError(f"{where}: {text!r} is not an integer")
            out.append(int(number))
        else:
            out.append(float(text))
    return out


def write_parquet(csv_path: Path, table: str) -> Path:
    """The CSV table again as Parquet beside it, every column in its declared type (an undeclared one as text)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        rows = list(reader)
    arrow = {S: pa.string(), I: pa.int64(), F: pa.float64(), B: pa.bool_()}
    columns, fields = [], []
    for index, name in enumerate(header):
        kind = column_type(table, name) or S
        columns.append(pa.array(_values([r[index] for r in rows], kind, f"{csv_path.name} column {name}"), type=arrow[kind]))
        fields.append(pa.field(name, arrow[kind]))
    path = csv_path.with_suffix(".parquet")
    pq.write_table(pa.Table.from_arrays(columns, schema=pa.schema(fields)), path)
    return path

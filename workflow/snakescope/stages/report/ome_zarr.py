"""The run's images and final segmentations as OME-Zarr (NGFF 0.5), for napari, Fiji (MoBIE, BigDataViewer), Fractal,
MCMICRO and the bioimage.io tools: written with ome-zarr-py, read back by napari's reader in the tests.

When the sample sheet names wells (``report.well_column``), each plate is one HCS store, ``<plate>.ome.zarr`` (plate /
row / column / field, the fields of a well in the run's unit order); the other units are one image store each,
``<unit_id>.ome.zarr``. Every image is a multiscale pyramid down to about 256 px, chunked (a large field is streamed
from its OME-TIFF, never read whole), with its physical pixel size in µm (none when the unit is uncalibrated), its
channel names, and ``labels/nuclei``, the unit's final segmentation (``image-label``). How the unit's plane was made
from the source (a Z projection, the time point) is in each image's ``snakescope`` attributes. The OME-TIFFs stay.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from ...core.records import read_json
from .plots import parse_well, row_name

CHUNK_PX = 1024
SMALLEST_LEVEL_PX = 256


def safe_name(text: str) -> str:
    """A name usable as a file or group name everywhere (names are data: nothing in them reaches the path as is)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "unnamed"


def _lazy(path: str) -> Any:
    """The OME-TIFF's pixels as a CYX dask array, read block by block."""
    import dask.array as da
    import tifffile
    import zarr

    node = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
    array = da.from_zarr(node if hasattr(node, "shape") else node["0"])
    return array[None] if array.ndim == 2 else array


def _levels(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Downscale factors (2, 4, ...) until the field's longer side is about SMALLEST_LEVEL_PX."""
    factors, factor = [], 2
    while max(shape[-2:]) / factor >= SMALLEST_LEVEL_PX:
        factors.append(factor)
        factor *= 2
    return tuple(factors)


def _provenance(unit: dict[str, Any]) -> dict[str, Any]:
    """How this plane came from the source file: the projection or plane choice, the source and its axes."""
    selection = unit.get("selection") or {}
    dims = unit.get("source_dims") or {}
    z = selection.get("z")
    plane = (f"maximum-intensity projection of {dims.get('Z')} Z planes" if z == "max" and (dims.get("Z") or 1) > 1
             else f"Z plane {z}" if isinstance(z, int) else "single plane")
    return {"unit_id": unit["unit_id"], "sample_id": unit.get("sample_id"), "source_path": unit.get("source_path"),
            "source_sha256": unit.get("source_sha256"), "scene": unit.get("scene_name"), "source_dims": dims,
            "selection": selection, "plane": plane, "pixel_size_origin": unit.get("pixel_size_origin")}


def write_image_group(group: Any, unit: dict[str, Any], labels_path: str | None) -> None:
    """One unit as an NGFF image (multiscale, channels, scale) with its labels, into the zarr ``group``."""
    import tifffile
    from ome_zarr.writer import write_image, write_labels

    image = _lazy(unit["image_path"])
    size = unit.get("pixel_size_um") or {}
    calibrated = bool(size.get("y") and size.get("x"))
    scale = {"y": float(size["y"]), "x": float(size["x"])} if calibrated else None
    units = {"y": "micrometer", "x": "micrometer"} if calibrated else None
    chunks = (1, min(CHUNK_PX, image.shape[-2]), min(CHUNK_PX, image.shape[-1]))
    top = float(image.max().compute()) or 1.0  # one pass over the blocks
    window = {"start": 0.0, "end": top, "min": 0.0, "max": top}
    channels = [{"label": str(name), "color": "FFFFFF", "active": True, "window": window} for name in unit["channel_names"]]
    write_image(image, group, scale_factors=_levels(image.shape), axes="cyx", scale=scale, axes_units=units,
                storage_options={"chunks": chunks}, omero={"channels": channels, "name": unit["unit_id"]})
    group.attrs["snakescope"] = _provenance(unit)
    if labels_path:
        labels = tifffile.imread(labels_path)
        labels = labels.reshape(labels.shape[-2:])
        write_labels(labels, group, name="nuclei", scaler=None, scale_factors=_levels(labels.shape), axes="yx", scale=scale, axes_units=units,
                     storage_options={"chunks": chunks[1:]}, label_metadata={"source": {"image": "../../"}})
        # ome-zarr-py 0.18 leaves the version out of the labels group (ome-zarr-models refuses it without)
        labels_group = group["labels"]
        labels_group.attrs["ome"] = {**labels_group.attrs.get("ome", {}), "version": "0.5"}


def write_ome_zarr(units: list[dict[str, Any]], labels: dict[str, str], out_dir: Path, *, plate_column: str, well_column: str,
                   dataset: str) -> list[Path]:
    """Every unit (failed ones left out) as OME-Zarr under ``out_dir``: HCS plates for units in wells, images otherwise."""
    import zarr
    from ome_zarr.writer import write_plate_metadata, write_well_metadata

    out_dir.mkdir(parents=True, exist_ok=True)
    plates: dict[str, dict[tuple[int, int], list[dict[str, Any]]]] = {}
    written = []
    for unit in units:
        well = parse_well((unit.get("metadata") or {}).get(well_column) or "")
        if well is None:
            store = out_dir / f"{safe_name(unit['unit_id'])}.ome.zarr"
            write_image_group(zarr.open_group(store, mode="w"), unit, labels.get(unit["unit_id"]))
            written.append(store)
            continue
        plate = (unit.get("metadata") or {}).get(plate_column) or dataset
        plates.setdefault(plate, {}).setdefault(well, []).append(unit)
    for plate, wells in plates.items():
        store = out_dir / f"{safe_name(plate)}.ome.zarr"
        root = zarr.open_group(store, mode="w")
        rows = [row_name(r) for r in sorted({r for r, _ in wells})]
        columns = [str(c) for c in sorted({c for _, c in wells})]
        paths = [f"{row_name(r)}/{c}" for r, c in sorted(wells)]
        write_plate_metadata(root, rows, columns, paths, name=str(plate), field_count=max(map(len, wells.values())))
        for (r, c), members in sorted(wells.items()):
            well_group = root.require_group(f"{row_name(r)}/{c}")
            write_well_metadata(well_group, [{"path": str(i)} for i in range(len(members))])
            for index, unit in enumerate(members):
                write_image_group(well_group.require_group(str(index)), unit, labels.get(unit["unit_id"]))
        written.append(store)
    return written


def run_ome_zarr(*, imported: list[str], refinement: list[str], ome_zarr: str, plate_column: str, well_column: str,
                 dataset: str) -> None:
    """Rule ``ome_zarr``: the run's units and final labels as OME-Zarr -> ``ome_zarr/``."""
    from ...core.layout import manifest

    units = [u for path in imported for u in read_json(manifest(path))["units"] if u.get("image_path")]
    labels = {uid: seg["labels"] for folder in refinement
              for uid, seg in (read_json(Path(folder) / "final.json").get("segmentation") or {}).items() if seg.get("labels")}
    stores = write_ome_zarr(units, labels, Path(ome_zarr), plate_column=plate_column, well_column=well_column, dataset=dataset)
    print(f"[ome_zarr] {len(units)} unit(s) in {len(stores)} OME-Zarr store(s) under {ome_zarr}", file=sys.stderr)

"""Stage 1, acquisition import: every scene of every file -> 2D CYX image units (OME-TIFF + record)."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..core.settings import ImportSettings
from ..core.inputs import Source, safe_id
from ..core.images import finite, write_ome_tiff
from ..core.records import Failure, Unit, manifest, sha256_file, write_json

LUMINANCE = np.array([0.2126, 0.7152, 0.0722])


def open_image(path: str, reader: str) -> Any:
    """Open ``path`` read-only with bioio's ``BioImage`` or aicsimageio's ``AICSImage`` (same API)."""
    if reader == "aicsimageio":
        from aicsimageio import AICSImage

        return AICSImage(path)
    from bioio import BioImage

    share_ome_binding_context()
    return BioImage(path, use_plugin_cache=True)  # the installed readers, found once per process, not per file


def share_ome_binding_context() -> bool:
    """Let ome-types parse every OME-XML with one xsdata binding context per process; True when in place.

    ome-types 0.7 makes a new ``XmlParser`` (and with it a new ``XmlContext``) for each document, so the binding
    metadata of the whole OME model is rebuilt from type hints every time, and bioio-ome-tiff parses each file's
    OME-XML three times (choosing the reader, checking it, reading). That was about 55 of the 74 ms it took to
    open a small OME-TIFF (measured). xsdata's documentation says to reuse one context; the parse is the same, the
    context only caches class metadata. Where ome-types no longer builds its parser this way, nothing is changed.
    """
    try:
        import ome_types._conversion as conversion
        from xsdata_pydantic_basemodel.bindings import XmlContext, XmlParser
    except ImportError:
        return False
    current = getattr(conversion, "XmlParser", None)
    if getattr(current, "shared_context", None) is not None:
        return True
    if current is not XmlParser:
        return False

    class SharedContextParser(XmlParser):
        shared_context = XmlContext()

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("context", self.shared_context)
            super().__init__(*args, **kwargs)

    conversion.XmlParser = SharedContextParser
    return True


def reader_version(reader: str) -> str:
    package = "aicsimageio" if reader == "aicsimageio" else "bioio"
    return f"{package} {importlib.metadata.version(package)}"


def planes(data: Any, settings: ImportSettings) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    """Yield (selection, CYX array) for one scene's xarray (dims T,C,Z,Y,X[,S]).

    Z and T are reduced or split as configured; an RGB ``S`` axis becomes channels
    or a luminance channel. Lazy (dask) arrays are computed one plane at a time.
    """
    sizes = dict(data.sizes)
    n_t, n_z = sizes.get("T", 1), sizes.get("Z", 1)
    if settings.t == "per_timepoint":
        t_values = list(range(n_t))
    else:
        if not 0 <= settings.t_index < n_t:
            raise IndexError(f"import.t_index={settings.t_index} but the scene has {n_t} timepoint(s)")
        t_values = [settings.t_index]
    if settings.z == "per_plane":
        z_values: list[int | str] = list(range(n_z))
    elif settings.z == "plane":
        if not 0 <= settings.z_plane < n_z:
            raise IndexError(f"import.z_plane={settings.z_plane} but the scene has {n_z} plane(s)")
        z_values = [settings.z_plane]
    else:
        z_values = ["max"]
    for t in t_values:
        stack = data.isel(T=t) if "T" in sizes else data
        for z in z_values:
            if "Z" not in sizes:
                plane = stack
            elif z == "max":
                plane = stack.max(dim="Z")
            else:
                plane = stack.isel(Z=z)
            array = np.asarray(plane.transpose("C", "Y", "X", *(["S"] if "S" in sizes else [])).values)
            selection: dict[str, Any] = {"t": t, "z": z}
            if array.ndim == 4:  # colour samples (RGB, RGBA, grey + alpha)
                array, selection["samples"] = without_constant_alpha(array)
            if array.ndim == 4 and array.shape[-1] == 1:  # grey + an alpha that was dropped
                array = array[..., 0]
            if array.ndim == 4:
                if settings.rgb == "luminance" and array.shape[-1] == 3:
                    array = np.tensordot(array.astype(np.float32), LUMINANCE, axes=([-1], [0]))
                    selection["rgb"] = "luminance"
                else:
                    array = np.moveaxis(array, -1, 1).reshape(-1, *array.shape[1:3])
                    selection["rgb"] = "channels"
            yield selection, array


TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
SAMPLE_LABELS = {2: ("grey", "alpha"), 3: ("R", "G", "B"), 4: ("R", "G", "B", "alpha")}


def without_constant_alpha(array: np.ndarray) -> tuple[np.ndarray, str]:
    """A CYXS array without its alpha sample when that is one value throughout (an opaque PNG's 255: no image
    in it, and as a channel it would read as saturated); (array, the sample labels kept, e.g. ``"RGB"``).
    Only 2 (grey + alpha) and 4 (RGBA) samples carry an alpha; a varying alpha is kept as a channel."""
    n = array.shape[-1]
    labels = SAMPLE_LABELS.get(n, tuple(str(i) for i in range(n)))
    if n in (2, 4):
        alpha = array[..., -1]
        if alpha.size and alpha.min() == alpha.max():
            array, labels = array[..., :-1], labels[:-1]
    return array, ",".join(labels)


def large_tiff_series(path: Path, scene_index: int, sizes: dict[str, int]) -> Any | None:
    """The tifffile series of a TIFF scene whose planes are large (``blocks.is_large``), to be copied a strip at a
    time instead of read whole (bioio's TIFF readers hand over whole planes); None when the scene is small, not a
    TIFF, has RGB samples or axes other than T, C, Z, Y, X, or its shape differs from what bioio reports."""
    from ..core.blocks import is_large

    if path.suffix.lower() not in TIFF_SUFFIXES or "S" in sizes or not is_large((sizes.get("Y", 0), sizes.get("X", 0))):
        return None
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if scene_index >= len(tif.series):
            return None
        series = tif.series[scene_index]
        axes, shape, dtype = series.axes.upper(), series.shape, series.dtype
    known = {a: n for a, n in zip(axes, shape)}
    if any(a not in "TCZYX" and n > 1 for a, n in known.items()) or any(known.get(a, 1) != sizes.get(a, 1) for a in "TCZYX"):
        return None
    return {"path": path, "series": scene_index, "axes": axes, "shape": shape, "dtype": dtype}


def large_czi_scene(path: Path, scene_index: int, sizes: dict[str, int], dtype: Any) -> dict[str, Any] | None:
    """A large CZI scene (``blocks.is_large``; a tile scan or a mosaic), to be read a strip of rows at a time through
    pylibCZIrw's region reads (the CZI's own tile index) instead of whole planes: bioio-czi's default backend
    reads a whole plane even for a window. None when the scene is small, has RGB samples, or its region in the
    file does not have the size bioio reports (then bioio reads it whole, once)."""
    from ..core.blocks import is_large

    if path.suffix.lower() != ".czi" or "S" in sizes or not is_large((sizes.get("Y", 0), sizes.get("X", 0))):
        return None
    from pylibCZIrw import czi as pyczi

    with pyczi.open_czi(str(path)) as czi:
        scenes = czi.scenes_bounding_rectangle_no_pyramid
        box = czi.total_bounding_box
        if scenes:  # bioio numbers the CZI's scenes in order
            keys = sorted(scenes)
            if scene_index >= len(keys):
                return None
            scene, rect = keys[scene_index], scenes[keys[scene_index]]
        else:
            scene, rect = None, czi.total_bounding_rectangle_no_pyramid
    if (rect.h, rect.w) != (sizes["Y"], sizes["X"]) or any(box.get(a, (0, 1))[1] - box.get(a, (0, 1))[0] != sizes.get(a, 1) for a in "TCZ"):
        return None
    return {"czi": str(path), "scene": scene, "origin": (rect.x, rect.y), "begin": {a: box.get(a, (0, 1))[0] for a in "TCZ"},
            "axes": "TCZYX", "shape": tuple(sizes.get(a, 1) for a in "TCZYX"), "dtype": np.dtype(dtype)}


def czi_rgb_scene(path: Path, scene_index: int, sizes: dict[str, int]) -> Any | None:
    """A CZI scene with RGB samples (Bgr24/Bgr48 pixels), read with pylibCZIrw (Zeiss's libCZI) as TCZYXS in R, G, B
    order; None for other files and scenes. bioio-czi 3.0.1 returns the samples in the file's B, G, R order, and
    on some files the same sample three times."""
    if path.suffix.lower() != ".czi" or sizes.get("S", 1) != 3:
        return None
    import xarray as xr
    from pylibCZIrw import czi as pyczi

    with pyczi.open_czi(str(path)) as czi:
        scenes = czi.scenes_bounding_rectangle_no_pyramid
        box = czi.total_bounding_box
        if scenes:  # bioio numbers the CZI's scenes in order
            scene = sorted(scenes)[scene_index]
            rect = scenes[scene]
        else:
            scene, rect = None, czi.total_bounding_rectangle_no_pyramid
        ranges = {a: range(*box.get(a, (0, 1))) for a in "TCZ"}
        stack = np.stack([np.stack([np.stack([
            czi.read(roi=(rect.x, rect.y, rect.w, rect.h), plane={"T": t, "C": c, "Z": z}, scene=scene)[..., ::-1]
            for z in ranges["Z"]]) for c in ranges["C"]]) for t in ranges["T"]])
    return xr.DataArray(stack, dims=("T", "C", "Z", "Y", "X", "S"))


class PlaneTiles:
    """One selected (t, z or max over z) CYX plane of a large scene, yielded as TIFF tiles (channel by channel,
    rows of tiles) from strips of source rows: memory follows a strip, not the plane. The strips come from a
    TIFF series through zarr (:func:`large_tiff_series`) or from a CZI's region reads (:func:`large_czi_scene`)."""

    def __init__(self, series: dict[str, Any], t: int, z: int | str) -> None:
        self.series, self.t, self.z = series, t, z
        known = dict(zip(series["axes"], series["shape"]))
        self.shape = (known.get("C", 1), known["Y"], known["X"])
        self.dtype = series["dtype"]

    def _strip(self, array: Any, channel: int, rows: slice) -> np.ndarray:
        index, reduce_z = [], False
        for axis, n in zip(self.series["axes"], self.series["shape"]):
            if axis == "T":
                index.append(self.t)
            elif axis == "C":
                index.append(channel)
            elif axis == "Z":
                reduce_z = self.z == "max"
                index.append(slice(None) if reduce_z else self.z)
            elif axis == "Y":
                index.append(rows)
            elif axis == "X":
                index.append(slice(None))
            else:
                index.append(0)
        values = np.asarray(array[tuple(index)])
        return values.max(axis=[a for a in self.series["axes"] if a in "ZYX"].index("Z")) if reduce_z else values

    def _region(self, czi: Any, channel: int, rows: slice) -> np.ndarray:
        """Rows of one channel of a CZI scene (the maximum over Z when so selected), from region reads."""
        x, y = self.series["origin"]
        begin, n_z = self.series["begin"], dict(zip(self.series["axes"], self.series["shape"]))["Z"]
        values = None
        for z in (range(n_z) if self.z == "max" else [self.z]):
            plane = {"T": begin["T"] + self.t, "C": begin["C"] + channel, "Z": begin["Z"] + z}
            read = czi.read(roi=(x, y + rows.start, self.shape[2], rows.stop - rows.start), plane=plane, scene=self.series["scene"])
            read = read[..., 0]
            values = read if values is None else np.maximum(values, read, out=values)
        return values

    def tiles(self) -> Iterator[np.ndarray]:
        import contextlib

        from ..core.blocks import TIFF_TILE

        with contextlib.ExitStack() as stack:
            if "czi" in self.series:
                from pylibCZIrw import czi as pyczi

                source = stack.enter_context(pyczi.open_czi(self.series["czi"]))
                read_strip = self._region
            else:
                import tifffile
                import zarr

                tif = stack.enter_context(tifffile.TiffFile(self.series["path"]))
                source = zarr.open(tif.series[self.series["series"]].aszarr(), mode="r")
                read_strip = self._strip
            _, height, width = self.shape
            for channel in range(self.shape[0]):
                for y in range(0, height, TIFF_TILE):
                    strip = read_strip(source, channel, slice(y, min(height, y + TIFF_TILE)))
                    for x in range(0, width, TIFF_TILE):
                        tile = np.zeros((TIFF_TILE, TIFF_TILE), self.dtype)
                        part = strip[:, x:x + TIFF_TILE]
                        tile[: part.shape[0], : part.shape[1]] = part
                        yield tile


def streamed_planes(series: dict[str, Any], sizes: dict[str, int], settings: ImportSettings) -> Iterator[tuple[dict[str, Any], "PlaneTiles"]]:
    """:func:`planes` for a large scene read by strips: the same selections, each a :class:`PlaneTiles`."""
    n_t, n_z = sizes.get("T", 1), sizes.get("Z", 1)
    t_values = list(range(n_t)) if settings.t == "per_timepoint" else [settings.t_index]
    if settings.z == "per_plane":
        z_values: list[int | str] = list(range(n_z))
    elif settings.z == "plane":
        z_values = [settings.z_plane]
    else:
        z_values = ["max"] if n_z > 1 else [0]
    for t in t_values:
        if not 0 <= t < n_t:
            raise IndexError(f"import.t_index={t} but the scene has {n_t} timepoint(s)")
        for z in z_values:
            if z != "max" and not 0 <= int(z) < n_z:
                raise IndexError(f"import.z_plane={z} but the scene has {n_z} plane(s)")
            yield {"t": t, "z": "max" if settings.z == "max" else z}, PlaneTiles(series, t, z)


def _channel_names(raw: list[Any], n_channels_out: int, selection: dict[str, Any]) -> list[str]:
    """Channel names of a plane's CYX array; colour samples (``selection["samples"]``, set by :func:`planes`) as
    ``name:R``, ``name:G``, ... when they became channels."""
    names = [str(n) for n in raw] or [f"C{i}" for i in range(max(1, n_channels_out))]
    labels = selection["samples"].split(",") if "samples" in selection else []
    if selection.get("rgb") == "channels" and len(labels) > 1:
        names = [f"{n}:{s}" for n in names for s in labels]
    elif selection.get("rgb") == "luminance":
        names = [f"{n}:luminance" for n in names]
    if len(names) != n_channels_out:
        names = [f"C{i}" for i in range(n_channels_out)]
    return names


def fitted_backgrounds(array: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Each channel's smooth background (:mod:`.background`), by channel name, for the unit's record."""
    from ..core.background import fit_background

    return {name: fit_background(finite(array[i])).as_dict() for i, name in enumerate(names)}


def check_samples(array: np.ndarray, names: list[str], selection: dict[str, Any], path: Path) -> tuple[np.ndarray, list[str], str | None]:
    """Sanity-check RGB samples a reader returned.

    Several channels whose R, G and B samples are all identical are a reader fault (bioio-czi 3.0.1
    copies sample 0 into all three for RGB CZI): refused. One RGB channel with R = G = B is a grey image
    stored as RGB: kept as one channel, with a note. One RGB channel with one sample that varies and two
    blank ones (every pixel the same) is one stain exported in a colour (DAPI in blue): kept as that sample,
    so ``model.channels: [0]`` is the stain and not a blank sample.
    """
    if selection.get("rgb") != "channels" or array.shape[0] % 3 or not all(n.endswith((":R", ":G", ":B")) for n in names):
        return array, names, None
    samples = array.reshape(-1, 3, *array.shape[1:])
    identical = [bool(np.array_equal(c[0], c[1]) and np.array_equal(c[0], c[2])) for c in samples]
    if len(samples) == 1 and not identical[0]:
        varying = [i for i in range(3) if samples[0, i].min() != samples[0, i].max()]
        if len(varying) == 1:
            kept = varying[0]
            blank = " and ".join(names[i].rsplit(":", 1)[1] for i in range(3) if i != kept)
            return samples[:, kept], [names[kept]], \
                f"{blank} samples are blank: imported as one channel, the {names[kept].rsplit(':', 1)[1]} sample"
    if not all(identical):
        return array, names, None
    if len(identical) > 1:
        raise ValueError(f"{path}: the reader returned identical R, G and B samples in all {len(identical)} channels "
                         "(a known fault of bioio-czi 3.0.1 with RGB CZI files); refusing wrong colour data. Export the "
                         "file to OME-TIFF (e.g. with Fiji/Bio-Formats) or read it with a reader that returns the samples")
    return samples[:, 0], [names[0].rsplit(":", 1)[0]], "R, G and B samples are identical: imported as one grey channel"


def import_source(source: Source, settings: ImportSettings, out_dir: Path) -> tuple[list[Unit], list[Failure]]:
    """Import every scene of one source file into units under ``out_dir``.

    Raises if the file cannot be opened at all; a scene that cannot be read becomes a failure
    and the file's other scenes continue.
    """
    path = Path(source.path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    out_dir.mkdir(parents=True, exist_ok=True)
    checksum = sha256_file(path)
    image = open_image(str(path), settings.reader)
    scenes = list(image.scenes)
    if not scenes:
        raise ValueError(f"{path}: the reader found no image scenes")
    reader = f"{reader_version(settings.reader)} ({type(image.reader).__module__.split('.')[0]})"
    units: list[Unit] = []
    failures: list[Failure] = []
    for scene_index, scene in enumerate(scenes):
        try:
            units.extend(_import_scene(source, image, scene_index, scene, len(scenes), checksum, reader, settings, out_dir))
        except Exception as exc:  # noqa: BLE001 - one unreadable scene must not lose the others
            failure = Failure.from_exception("import", str(path), exc, sample_id=source.sample_id, metadata=dict(source.metadata))
            failure.reason = f"scene {scene_index} ({scene}): {failure.reason}"
            failures.append(failure)
    return units, failures


SPECTRAL_AXES = {"λ": "em", "Λ": "ex"}


def frame_axes(dims: tuple[str, ...]) -> tuple[str, str] | None:
    """The two axes of a Leica frame as the file defines them: the last two of liffile's dimensions, (Y, X) for
    an XY scan, (Z, X) for an XZ or XZY scan; None when the frame is not 2D in space (a line scan over time)."""
    frame = tuple(dims[-2:])
    if len(frame) == 2 and set(frame) <= {"X", "Y", "Z"}:
        return frame[0], frame[1]
    return None


def lif_scene(path: Path, scene_index: int) -> tuple[Any, dict[str, float | None], list[str], str] | None:
    """Read a Leica scene with liffile when bioio-lif 2.0 cannot: a wavelength sweep (λ/Λ axis, read as
    channels), an XZ scan (Z and X frame axes, imported as a 2D image with Z as its vertical axis) or an XZY scan
    (XZ frames stepped along Y: a volume, imported as a Z stack like any other).

    Returns (TCZYX data, pixel size, channel names, note), or None when bioio-lif reads the scene.
    Raises with the reason for frames that are not 2D images in space (line scans over time, points).
    """
    import liffile
    import xarray as xr

    with liffile.LifFile(path) as lif:
        lim = lif.images[scene_index]
        dims = tuple(lim.dims)
        spectral = [d for d in dims if d in SPECTRAL_AXES]
        frame = frame_axes(dims)
        if frame is None:
            raise ValueError(f"scene {scene_index} ({lim.name}) has dimensions {dims}: not a 2D image in space "
                             "(a line or point scan over time or wavelength); snakescope imports XY and XZ frames only")
        if not spectral and frame == ("Y", "X"):
            return None
        array = lim.asarray()
        coords = {k: np.asarray(v) for k, v in lim.coords.items()}
    rename = {d: "C" for d in spectral}
    xz_section = frame == ("Z", "X") and "Y" not in dims
    if xz_section:
        rename["Z"] = "Y"
    data = xr.DataArray(array, dims=[rename.get(d, d) for d in dims])
    data = data.expand_dims([d for d in ("T", "C", "Z") if d not in data.dims]).transpose("T", "C", "Z", "Y", "X")
    step = {ax: abs(float(np.diff(coords[ax][:2])[0])) * 1e6 if ax in coords and len(coords[ax]) > 1 else None
            for ax in ("X", "Y", "Z")}
    names = [f"{SPECTRAL_AXES[spectral[0]]} {w * 1e9:.0f} nm" for w in coords[spectral[0]]] if spectral else []
    if xz_section:
        note = "XZ scan: image rows are Z (pixel_size y is the Z step)"
        return data, {"x": step["X"], "y": step["Z"], "z": None}, names, note
    note = "XZY scan: XZ frames stepped along Y, imported as a Z stack" if frame == ("Z", "X") else \
        "wavelength axis as channels"
    return data, {"x": step["X"], "y": step["Y"], "z": step["Z"]}, names, note


def _import_scene(source: Source, image: Any, scene_index: int, scene: str, n_scenes: int, checksum: str, reader: str,
                  settings: ImportSettings, out_dir: Path) -> list[Unit]:
    from ..core.calibration import PixelSize, from_reader, metamorph_channel_name, resolve

    path = Path(source.path)
    image.set_scene(scene)
    leica = lif_scene(path, scene_index) if path.suffix.lower() == ".lif" else None
    notes: list[str] = []
    if leica is not None:
        data, size, raw_names, note = leica
        stated = PixelSize(size["x"], size["y"], size["z"], origin="file metadata (liffile)")
        reader = f"{reader}; liffile {importlib.metadata.version('liffile')} ({note})"
        notes.append(note)
    else:
        data = image.xarray_dask_data
        rgb = czi_rgb_scene(path, scene_index, dict(data.sizes))
        if rgb is not None:
            data = rgb
            reader = f"{reader}; RGB samples read with pylibCZIrw {importlib.metadata.version('pylibCZIrw')}"
        stated = from_reader(image, path)
        raw_names = list(image.channel_names or [])
        if path.suffix.lower() in (".tif", ".tiff", ".stk") and len(raw_names) == 1 and raw_names[0].startswith("Channel:"):
            raw_names = [metamorph_channel_name(path) or raw_names[0]]
    if path.suffix.lower() in LOSSY_SUFFIXES:
        notes.append(f"{path.name} is JPEG-compressed (lossy): intensities and the quality metrics are approximate")
    pixel = resolve(stated, source.metadata.get("pixel_size_um"), settings.default_pixel_size_um, path, str(scene))
    if pixel.warning:
        notes.append(pixel.warning)
        print(f"WARNING: {pixel.warning}", file=sys.stderr)
    sizes = {k: int(v) for k, v in dict(data.sizes).items()}
    units = []
    streamed = (large_tiff_series(path, scene_index, sizes) or large_czi_scene(path, scene_index, sizes, data.dtype)) \
        if leica is None else None
    for selection, array in (streamed_planes(streamed, sizes, settings) if streamed is not None else planes(data, settings)):
        # checked once the pixels were read: a file that cannot be read says that first, not "no pixel size"
        if not pixel.known and settings.missing_pixel_size == "fail":
            raise ValueError(f"{pixel.warning} (config import.missing_pixel_size: fail)")
        parts = [source.sample_id]
        if n_scenes > 1:
            parts.append(f"s{scene_index}")
        if settings.t == "per_timepoint" and sizes.get("T", 1) > 1:
            parts.append(f"t{selection['t']}")
        if settings.z == "per_plane" and sizes.get("Z", 1) > 1:
            parts.append(f"z{selection['z']}")
        unit_id = safe_id("_".join(parts))
        image_path = out_dir / f"{unit_id}.ome.tif"
        if isinstance(array, PlaneTiles):  # a large plane, copied a strip of tiles at a time (not flattened: see config/README)
            names, note, background = _channel_names(raw_names, array.shape[0], selection), None, {}
            write_ome_tiff(image_path, array.tiles(), names, pixel.as_dict(), shape=array.shape, dtype=array.dtype)
        else:
            names = _channel_names(raw_names, array.shape[0], selection)
            array, names, note = check_samples(array, names, selection, path)
            note = "; ".join(n for n in (note, non_finite_note(array)) if n) or None
            write_ome_tiff(image_path, array, names, pixel.as_dict())
            background = fitted_backgrounds(array, names) if settings.background == "flatten" else {}
        units.append(Unit(
            unit_id=unit_id, sample_id=source.sample_id, source_path=str(path), source_sha256=checksum,
            scene_index=scene_index, scene_name=str(scene), source_dims=sizes, selection=selection,
            dtype=str(np.dtype(array.dtype)), shape=list(array.shape), channel_names=names, pixel_size_um=pixel.as_dict(),
            pixel_size_origin=pixel.origin, image_path=str(image_path), reader=reader, metadata=dict(source.metadata),
            warnings=notes + ([note] if note else []), background=background,
        ))
    return units


def non_finite_note(array: np.ndarray) -> str | None:
    """A warning for a float image with NaN or infinite pixels (the stages fill them with the plane's median; a
    field that is mostly such pixels becomes a ``no_data`` review), or None."""
    if not np.issubdtype(array.dtype, np.floating):
        return None
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if not bad:
        return None
    return (f"{bad} of {array.size} pixels ({100 * bad / array.size:.3g}%) are NaN or infinite: the metrics and the model "
            "see them filled with the plane's median of the finite pixels")


def import_one(source: Source, settings: ImportSettings, out: Path, label: str, position: str = "") -> tuple[list[Unit], list[Failure]]:
    """Import one source file into ``out``: its units and failed scenes, or its failure if it cannot be read.
    ``label`` starts the progress and failure lines (``[import b0000]``), ``position`` says where in the batch (``3/50``)."""
    try:
        new, scene_failures = import_source(source, settings, out)
        print(" ".join(filter(None, (label, position, f"{source.path}: {len(new)} unit(s), {len(scene_failures)} failed scene(s)"))),
              file=sys.stderr)
        return new, scene_failures
    except Exception as exc:  # noqa: BLE001 - any reader error is recorded, not fatal
        failure = Failure.from_exception("import", source.path, exc, sample_id=source.sample_id, metadata=dict(source.metadata))
        print(f"{label} FAILED {source.path}: {failure.reason}", file=sys.stderr)
        return [], [failure]


def import_batch(batch: str, sources: list[Source], settings: ImportSettings, out_dir: str | Path,
                 workers: int = 1) -> dict[str, Any]:
    """Import a batch of sources, ``workers`` files at a time; an unreadable file becomes a recorded failure, the
    rest continue."""
    from ..core.fields import map_fields

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    units: list[Unit] = []
    failures: list[Failure] = []
    numbered = list(enumerate(sources, start=1))
    done = map_fields(lambda item: import_one(item[1], settings, out, f"[import {batch}]", f"{item[0]}/{len(sources)}"),
                      numbered, workers=workers, label=f"import {batch}")
    for new, failed in done:
        units.extend(new)
        failures.extend(failed)
    doc = manifest(batch, units, failures, settings=settings.__dict__)
    write_json(out / "manifest.json", doc)
    return doc


def run_import(*, batch: str, sources: list[dict[str, Any]], settings: ImportSettings, imported: str,
               threads: int = 1) -> None:
    """Rule ``import_batch``: every scene of the batch's source files -> ``import/<batch>/`` (units and manifest)."""
    from ..core.progress import stage_progress

    doc = import_batch(batch, [Source(**s) for s in sources], settings, imported, workers=threads)
    stage_progress("import", doc, len(doc["units"]))

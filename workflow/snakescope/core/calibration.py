"""Physical pixel sizes: where they come from, and when not to believe them.

A pixel size is taken, in this order, from the sample sheet (a ``pixel_size_um`` column), from the
file's own microscopy metadata (OME, ImageJ, MetaMorph, vendor formats), or from
``import.default_pixel_size_um``. TIFF resolution tags in inches or without a unit (72/96 dpi screen
defaults), ImageJ's ``unit=pixel`` and sizes outside what a light microscope produces are treated as
*missing*, never as µm. Every unit records the origin of its size; a missing or doubtful one comes
with one message naming the file and how to set it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Light microscopy pixel sizes: 1 nm (beyond super-resolution) to 100 µm (macro/slide scanners overview).
PLAUSIBLE_UM = (0.001, 100.0)
LENGTH_UNITS_UM = {"nm": 1e-3, "nanometer": 1e-3, "um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "microns": 1.0,
                   "micrometer": 1.0, "mm": 1e3, "millimeter": 1e3, "cm": 1e4, "centimeter": 1e4, "m": 1e6}
SAMPLE_SHEET_COLUMN = "pixel_size_um"
HOW_TO_SET = (f"set it per sample in a '{SAMPLE_SHEET_COLUMN}' column of the sample sheet, "
              "or for all such files with config key import.default_pixel_size_um")


@dataclass(frozen=True)
class PixelSize:
    """Pixel size in µm (None: unknown), where it came from, and a warning when it is missing or doubtful."""

    x: float | None
    y: float | None
    z: float | None = None
    origin: str = "missing"
    warning: str | None = None

    @property
    def known(self) -> bool:
        return self.x is not None and self.y is not None

    def as_dict(self) -> dict[str, float | None]:
        return {"x": self.x, "y": self.y, "z": self.z}


def plausible(value: float | None) -> bool:
    return value is not None and PLAUSIBLE_UM[0] <= float(value) <= PLAUSIBLE_UM[1]


def unit_factor(unit: Any) -> float | None:
    """µm per ``unit`` for a length unit name, else None (``pixel``, ``inch`` screen units, empty...)."""
    text = str(unit or "").strip().lower().replace("\\u00b5", "µ")
    return LENGTH_UNITS_UM.get(text)


def tiff_pixel_size(path: str | Path) -> tuple[float | None, float | None, str]:
    """(y, x, origin or reason) from a TIFF's MetaMorph, ImageJ or resolution tags.

    Returns sizes only when the file states them in a length unit a microscope would use.
    """
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        tags = page.tags
        uic = tags.get("UIC1tag")
        if uic is not None and isinstance(uic.value, dict) and uic.value.get("SpatialCalibration"):
            meta = uic.value
            factor = unit_factor(meta.get("CalibrationUnits"))
            if factor and meta.get("XCalibration") and meta.get("YCalibration"):
                return float(meta["YCalibration"]) * factor, float(meta["XCalibration"]) * factor, "MetaMorph calibration tags"
            return None, None, f"MetaMorph calibration in unit {meta.get('CalibrationUnits')!r}"
        resolution = _resolution(tags)
        if tif.is_imagej:
            unit = (tif.imagej_metadata or {}).get("unit")
            factor = unit_factor(unit)
            if factor is None:
                return None, None, f"ImageJ unit {unit!r} is not a length" if unit else "ImageJ file without a unit"
            if resolution is None:
                return None, None, "ImageJ unit without resolution tags"
            return factor / resolution[0], factor / resolution[1], f"ImageJ metadata (unit {unit})"
        if resolution is None:
            return None, None, "no resolution tags"
        unit = tags.get("ResolutionUnit")
        unit_value = int(unit.value) if unit is not None else 2  # the TIFF default is inch
        if unit_value == 3:  # centimeter
            return 1e4 / resolution[0], 1e4 / resolution[1], "TIFF resolution tags (centimeter)"
        dpi = resolution[1]
        kind = "inch" if unit_value == 2 else "no unit"
        return None, None, f"TIFF resolution {dpi:g} per {kind} (a display setting, not a pixel size)"


def metamorph_channel_name(path: str | Path) -> str | None:
    """The channel name MetaMorph stores in its UIC1 tag (e.g. 'DAPI'); plain-TIFF readers report 'Channel:0:0'."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            uic = tif.pages.first.tags.get("UIC1tag")
            name = uic.value.get("Name") if uic is not None and isinstance(uic.value, dict) else None
            return str(name) if name else None
    except (OSError, ValueError, tifffile.TiffFileError):
        return None


def _resolution(tags: Any) -> tuple[float, float] | None:
    """(y, x) pixels per resolution unit from YResolution/XResolution, or None."""
    values = []
    for name in ("YResolution", "XResolution"):
        tag = tags.get(name)
        if tag is None:
            return None
        value = tag.value  # a rational (numerator, denominator)
        number = value[0] / value[1] if isinstance(value, tuple) and value[1] else 0.0
        if number <= 0:
            return None
        values.append(float(number))
    return values[0], values[1]


TIFF_READER_MODULES = ("bioio_tifffile", "aicsimageio.readers.tiff_reader", "aicsimageio.readers.default_reader")


def from_reader(image: Any, path: str | Path) -> PixelSize:
    """The size the file states, checked: plain-TIFF readers are not trusted, their tags are read here."""
    module = type(image.reader).__module__
    pps = image.physical_pixel_sizes
    z = float(pps.Z) if pps.Z and plausible(pps.Z) else None
    if module.startswith(TIFF_READER_MODULES) or Path(path).suffix.lower() in (".tif", ".tiff") and "ome" not in module:
        y, x, origin = tiff_pixel_size(path)
        if y is None or x is None:
            return PixelSize(None, None, z, origin=f"missing ({origin})")
        return _checked(y, x, z, origin)
    if not pps.X or not pps.Y:
        return PixelSize(None, None, z, origin=f"missing (the {module.split('.')[0]} reader found none)")
    return _checked(float(pps.Y), float(pps.X), z, f"file metadata ({module.split('.')[0]})")


def _checked(y: float, x: float, z: float | None, origin: str) -> PixelSize:
    if not (plausible(x) and plausible(y)):
        return PixelSize(None, None, z, origin=f"missing ({origin} says {y:g} x {x:g} µm, outside "
                                               f"{PLAUSIBLE_UM[0]:g}-{PLAUSIBLE_UM[1]:g} µm: not believed)")
    return PixelSize(x, y, z, origin=origin)


def resolve(stated: PixelSize, sample_sheet_value: str | None, default_um: float | None, path: str | Path,
            scene: str) -> PixelSize:
    """The pixel size a unit uses: sample sheet, else the file's (if believable), else the config default.

    A missing size yields a PixelSize that is not ``known`` with a warning naming the file and the ways to set it.
    """
    where = f"{path} scene {scene!r}"
    if sample_sheet_value not in (None, ""):
        try:
            value = float(str(sample_sheet_value).strip())
        except ValueError:
            raise ValueError(f"{where}: sample sheet column {SAMPLE_SHEET_COLUMN!r} holds {sample_sheet_value!r}, not a number") from None
        if not plausible(value):
            raise ValueError(f"{where}: sample sheet column {SAMPLE_SHEET_COLUMN!r} = {value:g} µm is outside "
                             f"{PLAUSIBLE_UM[0]:g}-{PLAUSIBLE_UM[1]:g} µm")
        warning = None
        if stated.known and abs(stated.x - value) / value > 0.05:  # type: ignore[operator]
            warning = f"{where}: sample sheet pixel size {value:g} µm overrides the file's {stated.x:g} µm ({stated.origin})"
        return PixelSize(value, value, stated.z, origin=f"sample sheet column {SAMPLE_SHEET_COLUMN}", warning=warning)
    if stated.known:
        return stated
    if default_um is not None:
        return PixelSize(float(default_um), float(default_um), stated.z, origin="config import.default_pixel_size_um")
    reason = stated.origin.removeprefix("missing (").removesuffix(")")
    return PixelSize(None, None, stated.z, origin=stated.origin,
                     warning=f"{where} has no usable pixel size ({reason}); measured in pixels. To calibrate, {HOW_TO_SET}")

"""The config's sections as typed, frozen settings: parsed once, passed to every stage and to watch mode.

Each class holds one section (or the part of it a stage reads); its defaults are the schema's
(``workflow/schemas/config.schema.yaml``, tested equal), so a stage called without the workflow behaves as one
called through it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, TypeVar

T = TypeVar("T")


class Section:
    """A settings class read from its config section; keys it does not hold (another stage's) are ignored."""

    @classmethod
    def from_config(cls: type[T], section: dict[str, Any]) -> T:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in section.items() if k in known})



@dataclass(frozen=True)
class ImportSettings:
    """How files become units (config section ``import``)."""

    reader: str = "bioio"  # bioio | aicsimageio
    z: str = "max"  # max | plane | per_plane
    z_plane: int = 0
    t: str = "first"  # first | per_timepoint
    t_index: int = 0
    rgb: str = "channels"  # channels | luminance
    default_pixel_size_um: float | None = None
    missing_pixel_size: str = "pixels"  # pixels (import uncalibrated, warned) | fail
    background: str = "flatten"  # flatten (fit each channel's smooth background; later stages look at it flattened) | none

    @classmethod
    def from_config(cls, section: dict[str, Any], reader: str = "bioio") -> "ImportSettings":
        return cls(reader=reader, **section)


@dataclass(frozen=True)
class ModelSettings:
    """Config section ``model``."""

    source: str
    weight_format: str = "onnx"
    device: str = "cpu"
    channels: tuple[str | int, ...] = (0,)
    output_channel: int = 0
    run_test: bool = True
    normalization: str = "per_image"  # per_image (the model's own) | dataset (statistics pooled over the run)
    # auto: the fastest tiles the model check validates, bounded by memory; model: the model's own; an int: up to this
    # edge (snakescope.methods.tiling)
    tile_px: int | str | None = "auto"
    # auto: OpenVINO when the model check finds it gives the model's own probabilities, else onnxruntime; onnxruntime;
    # openvino (snakescope.methods.engines)
    engine: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))  # a list from YAML or a param: hashable, compared as given

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> "ModelSettings":
        return cls(**section)


@dataclass(frozen=True)
class PostprocessSettings(Section):
    """Config section ``postprocess``.

    Scales are relative to the typical nucleus of each field (estimated from the probability map, or
    ``nucleus_diameter_um`` when set), so the same defaults fit small dense nuclei and large sparse
    ones, calibrated images and uncalibrated ones. Defaults were chosen on the real BBBC039 and
    DSB2018 nuclei in ../shared (see config/README.md), not on the synthetic demo.
    """

    probability_threshold: float = 0.5
    nucleus_diameter_um: float | None = None  # None: estimate the typical nucleus per field
    split_touching: bool = True
    split_min_distance: float = 0.4  # nucleus centres at least this many typical radii apart
    split_smoothing: float = 0.25  # smoothing of the marker map, in typical radii
    split_intensity_weight: float = 0.5  # markers from intensity (1) or from shape/distance (0)
    min_object_area_fraction: float = 0.1  # of the typical nucleus area
    min_object_area_um2: float = 0.0  # absolute floor, calibrated images only
    min_object_snr: float = 10.0  # (object mean - background) / noise x sqrt(area): integrated signal-to-noise
    min_relative_contrast: float = 0.1  # of the contrast of the field's bright objects (their 90th percentile)
    boundary_fraction: float = 0.35  # outline where intensity falls below this fraction of the object's contrast
    fill_holes: bool = True
    exclude_border_objects: bool = False
    block_px: int = 2048  # fields with a side longer than this are processed in blocks of this size (bounded memory)
    block_overlap_px: int = 256  # context around each block: object clusters up to about this size come out whole



@dataclass(frozen=True)
class ReviewThresholds(Section):
    """Config section ``review.thresholds``: when a metric becomes an issue (see config/README.md).

    The quality limits were calibrated on real fields (BBBC039 and DSB2018 nuclei, untouched and with
    generated blur, clipping, dimming with noise and empty fields; ``bench/accuracy.py``), not on the demo.
    """

    saturated_percent_warn: float = 1.0
    saturated_percent_fail: float = 5.0
    snr_warn: float = 12.0
    snr_fail: float = 5.0
    blur_warn: float = 0.65
    blur_fail: float = 0.8
    empty_foreground_fraction: float = 0.002
    no_data_percent: float = 50.0
    outlier_mad: float = 6.0
    size_out_of_range_fraction: float = 0.3
    large_object_fraction: float = 0.15
    low_solidity_fraction: float = 0.2
    count_tolerance: float = 0.2



@dataclass(frozen=True)
class GallerySettings(Section):
    """Config section ``report`` (the image part): sizes in pixels of the longest side, WebP quality."""

    thumbnail_px: int = 160
    detail_px: int = 384
    image_quality: int = 75



@dataclass(frozen=True)
class ReportSettings(Section):
    """Config section ``report`` (the page part)."""

    page_size: int = 50
    detail_images_max_units: int = 1000
    plate_column: str = "plate"
    well_column: str = "well"



@dataclass(frozen=True)
class WatchSettings(Section):
    """Config section ``watch``."""

    stable_s: float = 1.0
    retry_s: float = 10.0
    poll_s: float = 0.2
    actions_file: str = ""
    max_reacquisitions_per_well: int = 2
    exposure_factor_min: float = 0.5
    exposure_factor_max: float = 2.0
    threads: int = 0  # inference threads; 0: every core this process may use


# Run-relative checks: metric, transform (robust z on the log for ratios), the side that is bad, MAD floor.
RELATIVE_CHECKS = {"snr": ("log", -1, 0.1), "blur": ("linear", +1, 0.02)}

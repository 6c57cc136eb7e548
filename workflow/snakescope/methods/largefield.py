"""Post-processing of fields larger than a block (``postprocess.block_px``): the same labels and measurements as
the whole field would give, block by block, with memory bounded by the block and its overlap, not the field.

The probabilities (``.npy``, mapped a block at a time) and the unit's intensity (its TIFF through zarr: only
the strips or tiles a block covers) are read block by block, in passes (:mod:`.blocks` for the layout):

1. **Scale**: every connected object's inscribed radius and area, counted by the one block that owns it,
   pooled into the field's typical radius and tissue decision as :func:`segmentation.field_scale` makes them.
2. **Intensity range** of the marker map: histograms outside and inside the foreground (exact for integers).
3. **Split**: :func:`segmentation.split_objects` on each block and its overlap with the scale pinned; a block
   writes the objects of the clusters it owns into a label array on disk, numbered on from earlier blocks.
4. **Outlines**: the background behind them (an exact median over the field, two passes), then each object
   outlined and small ones removed by the block that owns it.
5. **Dim objects**: the field's background and noise around the outlined objects, then the contrast tests.
6. **Numbers and measurements**: the kept objects numbered 1..n; each measured by its block, its contrast
   against the field's background; the overlay and the labels TIFF made a strip of tiles at a time.

Equal to the whole field's result up to the labels' numbering (tests/test_largefield.py), with two
exceptions: in tissue the top-hat threshold is set per block, and NaN pixels of float images count as 0 (the
whole-field path gives them the median).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..core.blocks import Histogram, PlaneReader, complete_and_owned, layout, npy_shape, npy_tiles, read_npy, refined_median, value_range, write_npy
from ..core.records import ObjectTable
from ..core.settings import PostprocessSettings
from .instances import (
    TISSUE_RATIO,
    TISSUE_SURE_THRESHOLD,
    FieldScale,
    confident_objects,
    foreground,
    grown_by_2,
    inscribed_radii,
    min_object_px,
    numbered,
    smoothed,
    split_margin,
    split_objects,
    tissue_mask,
    tissue_source,
    trim_to_intensity,
    typical_radius,
)
from .measurements import channel_column, measure_objects, summarize_objects


def _probability(path: str | Path, box: tuple[slice, slice]) -> np.ndarray:
    return np.nan_to_num(read_npy(path, box).astype(np.float32), nan=0.0)


def _radii_and_areas(mask: np.ndarray, block: Any, shape: tuple[int, int],
                     probability: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Inscribed radius, area and, given the model's ``probability``, confidence (:func:`segmentation.confident_objects`)
    of the objects of ``mask`` (a block's outer region) that this block owns."""
    components, n = ndi.label(mask)
    if n == 0:
        return np.zeros(0), np.zeros(0), (None if probability is None else np.zeros(0, bool))
    complete, starts = complete_and_owned(components, block, shape, margin=1)  # the distance transform reaches 1 px out
    owned = complete & starts
    radii = inscribed_radii(mask, components, n)
    areas = np.bincount(components.ravel(), minlength=n + 1)[1:].astype(float)
    sure = None if probability is None else confident_objects(components, n, probability)[owned[1:]]
    return radii[owned[1:]], areas[owned[1:]], sure


def pooled_scale(probability_path: str | Path, reader: PlaneReader, channel: int, pixel: tuple[float, float] | None,
                 settings: PostprocessSettings, blocks: list[Any]) -> FieldScale:
    """Pass 1 and 2: the field's scale from all its blocks (see the module's docstring)."""
    shape = reader.shape
    info: dict[str, Any] = {}
    tissue = False
    if settings.nucleus_diameter_um and pixel:
        radius: float | None = settings.nucleus_diameter_um / 2 / float(np.sqrt(pixel[0] * pixel[1]))
        info["scale_source"] = "config postprocess.nucleus_diameter_um"
    else:
        found: dict[str, list[np.ndarray]] = {"radii": [], "areas": [], "confident": [], "sure_radii": [], "sure_areas": []}
        check_tissue = settings.probability_threshold < TISSUE_SURE_THRESHOLD
        for block in blocks:
            probability = _probability(probability_path, block.outer)
            for key, mask in (("", foreground(probability, settings)),
                              ("sure_", probability >= TISSUE_SURE_THRESHOLD if check_tissue else None)):
                if mask is not None:
                    # the sure cores are confident by their threshold: no confidence asked
                    radii, areas, confident = _radii_and_areas(mask, block, shape, None if key else probability)
                    found[key + "radii"].append(radii)
                    found[key + "areas"].append(areas)
                    if confident is not None:
                        found["confident"].append(confident)
        radius = typical_radius(np.concatenate(found["radii"]), np.concatenate(found["areas"]), np.concatenate(found["confident"]))
        sure = typical_radius(np.concatenate(found["sure_radii"]), np.concatenate(found["sure_areas"])) if check_tissue else None
        info["scale_source"] = "estimated from this field (pooled over its blocks)"
        if radius and sure and radius > TISSUE_RATIO * sure:
            radius, tissue = sure, True
            info.update(tissue=True, scale_source=tissue_source("its nuclei are the blobs brighter than the tissue "
                                                                "around them (top-hat, threshold per block)"))
    if radius is None or not settings.split_touching or settings.split_intensity_weight <= 0:
        return FieldScale(radius, tissue, None, info)
    return FieldScale(radius, tissue, intensity_range(probability_path, reader, channel, pixel, settings, blocks,
                                                      FieldScale(radius, tissue)), info)


def intensity_range(probability_path: str | Path, reader: PlaneReader, channel: int, pixel: tuple[float, float] | None,
                    settings: PostprocessSettings, blocks: list[Any], scale: FieldScale) -> tuple[float, float]:
    """What :func:`segmentation._intensity_scale` gives on the whole field: the median intensity outside the
    foreground (without its small objects) and the 95th percentile inside it, from per-block histograms of the
    blocks' own pixels."""

    integer = np.issubdtype(reader.dtype, np.integer)
    lo, hi = value_range(reader, channel, blocks)
    outside, inside = Histogram(lo, hi, integer), Histogram(lo, hi, integer)
    min_px = min_object_px(max(scale.radius or 1.0, 1.0), pixel, settings)
    for block in blocks:
        probability = _probability(probability_path, block.outer)
        mask = foreground(probability, settings)
        intensity = reader.read(channel, block.outer)
        if scale.tissue:
            mask = tissue_mask(mask, probability, intensity, scale.radius, settings)[0]
        del probability
        if min_px > 1:  # small objects are background here, as on the whole field; a cut one is at least the overlap
            components, _ = ndi.label(mask)
            complete, _ = complete_and_owned(components, block, reader.shape, margin=0)
            small = np.bincount(components.ravel()) < min_px
            small[0] = False
            mask &= ~(small & complete)[components]
            del components
        inner = block.inner
        values, fg = intensity[inner], mask[inner]
        if not integer:
            values = np.nan_to_num(values.astype(np.float32), nan=0.0)
        outside.add(values[~fg])
        inside.add(values[fg])
    if outside.total < 64:  # as background_noise: too little background, every pixel instead
        outside.counts = outside.counts + inside.counts
    return outside.median(), inside.percentile(95, np.float32) if inside.total else outside.median()


class _Passes:
    """The passes over one large unit's blocks once its scale is known. Label arrays live in ``.npy`` files beside
    the outputs, read and written a block at a time: ``split`` (objects at the model's edge) and ``final``
    (outlined, then numbered 1..n)."""

    def __init__(self, unit: dict[str, Any], probability_path: str | Path, reader: PlaneReader, channel: int,
                 pixel: tuple[float, float] | None, settings: PostprocessSettings, scale: FieldScale, out: Path) -> None:
        self.unit, self.probability_path, self.reader, self.channel = unit, probability_path, reader, channel
        self.pixel, self.settings, self.scale = pixel, settings, scale
        self.shape = reader.shape
        self.blocks = layout(self.shape, settings.block_px, settings.block_overlap_px)
        self.radius = max(scale.radius or 1.0, 1.0)
        # what an object's result depends on around it: the split's reach, the outline's smoothing (4 sigma) and
        # the 2 px ring kept out of the background
        self.margin = split_margin(self.radius, settings) + 6
        self.min_px = min_object_px(self.radius, pixel, settings)
        self.integer = np.issubdtype(reader.dtype, np.integer)
        self.split = out / f".{unit['unit_id']}.split.npy"
        self.final = out / f".{unit['unit_id']}.final.npy"
        for path in (self.split, self.final):
            np.lib.format.open_memmap(path, mode="w+", dtype=np.int32, shape=self.shape).flush()

    def cleanup(self) -> None:
        for path in (self.split, self.final):
            if path.exists():
                os.unlink(path)

    def intensity(self, box: tuple[slice, slice], channel: int | None = None) -> np.ndarray:
        """A block of a channel as :func:`segmentation.object_contrast` sees it (floats: NaN as 0)."""
        values = self.reader.read(self.channel if channel is None else channel, box)
        return values if self.integer else np.nan_to_num(values.astype(np.float64), nan=0.0)

    def split_pass(self) -> tuple[int, int]:
        """Objects split at the model's edge, each cluster written by the block that owns it: (objects, clusters
        left out because they are larger than the overlap)."""
        count, left_out = 0, 0
        for block in self.blocks:
            labels, components, _, _ = split_objects(_probability(self.probability_path, block.outer),
                                                     self.reader.read(self.channel, block.outer), self.pixel, self.settings,
                                                     pinned=self.scale)
            complete, starts = complete_and_owned(components, block, self.shape, self.margin)
            left_out += int(np.sum(starts & ~complete))  # complete in no block: larger than the overlap
            mine = numbered(np.where((complete & starts)[components] & (labels > 0), labels, 0))
            found = int(mine.max())
            if found:
                mine[mine > 0] += count
                write_npy(self.split, block.outer, mine, mine > 0)
            count += found
        return count, left_out

    def background(self, path: Path, smooth: bool) -> tuple[float, float]:
        """:func:`segmentation.background_noise` of the (σ = 1 px ``smooth``-ed) intensity outside the objects in
        ``path`` grown by 2 px, over the whole field: (level, noise). The level is exact; the noise is exact for
        integer images and to 1/65536 of the range for float ones (it is not used for smoothed values)."""
        def values_of(block: Any) -> tuple[np.ndarray, np.ndarray]:
            """(the block's own values outside the grown objects, all its own values)"""
            values = self.intensity(block.outer)
            values = (smoothed(values) if smooth else values)[block.inner]
            grown = grown_by_2(read_npy(path, block.outer) > 0)[block.inner]
            return values[~grown], values.ravel()

        lo, hi = value_range(self.reader, self.channel, self.blocks)
        integer = self.integer and not smooth
        outside, everywhere = Histogram(lo, hi, integer), Histogram(lo, hi, integer)
        for block in self.blocks:
            own, every = values_of(block)
            outside.add(own)
            everywhere.add(every)
        use_all = outside.total < 64  # as background_noise: too little background, every pixel instead
        histogram = everywhere if use_all else outside
        sample = lambda block: values_of(block)[1 if use_all else 0]  # noqa: E731
        if histogram.total == 0:
            return 0.0, 1.0
        level = refined_median(sample, self.blocks, histogram)
        if smooth:
            return level, 1.0
        return level, histogram.robust_noise(level)

    def outline_pass(self, count: int, level: float | None) -> tuple[np.ndarray, np.ndarray]:
        """Each object outlined from its intensity (:func:`segmentation.trim_to_intensity` at the field's ``level``)
        and small ones removed, by the block that owns it: (mean intensity, area) per object id."""
        from skimage.morphology import remove_small_objects
        from skimage.segmentation import relabel_sequential

        means, areas = np.zeros(count + 1), np.zeros(count + 1)
        self.touches = np.zeros(count + 1, bool)  # on the field's border (after outlining)
        for block in self.blocks:
            labels = read_npy(self.split, block.outer)
            local, _, inverse = relabel_sequential(labels)
            intensity = self.intensity(block.outer)
            if level is not None and local.max() > 0:
                local = trim_to_intensity(local, intensity, self.settings.boundary_fraction, level)
            if self.min_px > 1:
                local = remove_small_objects(local, max_size=self.min_px - 1)
            _, starts = complete_and_owned(labels, block, self.shape, 0)
            owned_pixels = starts[labels]
            outlined = np.asarray(inverse)[local]
            write_npy(self.final, block.outer, outlined, owned_pixels)  # split stays as it was for later blocks
            ids = np.flatnonzero(starts)
            if ids.size:
                kept = np.where(owned_pixels, outlined, 0)
                areas[ids] = np.bincount(kept.ravel(), minlength=count + 1)[ids]
                present = ids[areas[ids] > 0]
                if present.size:
                    means[present] = ndi.mean(intensity, kept, present)
                oy, ox = block.offset
                for label, box in enumerate(ndi.find_objects(kept), start=1):
                    if box is not None:
                        self.touches[label] = (box[0].start + oy == 0 or box[1].start + ox == 0
                                               or box[0].stop + oy == self.shape[0] or box[1].stop + ox == self.shape[1])
        return means, areas

    def number_pass(self, keep: np.ndarray) -> int:
        """The kept outlined objects numbered 1..n in the order of their ids, in place in ``final``; n."""
        lookup = np.zeros(keep.size, np.int32)
        n = int(keep.sum())
        lookup[np.flatnonzero(keep)] = np.arange(1, n + 1, dtype=np.int32)
        for block in self.blocks:  # each core once: in place is safe
            write_npy(self.final, block.core, lookup[read_npy(self.final, block.core)])
        return n

    def measure_pass(self, background: tuple[float, float]) -> ObjectTable:
        """Every object measured by the block that owns it; its contrast against the field's ``background``."""
        rows = ObjectTable()
        uid, names = self.unit["unit_id"], self.unit["channel_names"]
        for block in self.blocks:
            final = read_npy(self.final, block.outer)
            _, starts = complete_and_owned(final, block, self.shape, 0)
            ids = np.flatnonzero(starts)
            if not ids.size:
                continue
            mine = np.where(starts[final], final, 0)
            local = np.searchsorted(ids, mine) + 1  # ids (ascending) -> 1..k
            local[mine == 0] = 0
            intensity = self.intensity(block.outer)
            measured = measure_objects(local, intensity, self.pixel, uid, offset=block.offset, field_shape=self.shape,
                                       occupied=final > 0)
            index = np.arange(1, ids.size + 1)
            for c, name in enumerate(names):
                plane = intensity if c == self.channel else self.reader.read(c, block.outer)
                for row, value in zip(measured, ndi.mean(plane.astype(np.float64), local, index)):
                    row[channel_column(c, name)] = round(float(value), 3)
            for row in measured:
                row["label"] = int(ids[row["label"] - 1])
                row["contrast_snr"] = round((row["mean_intensity"] - background[0]) / background[1], 3)
            rows.extend(measured)
        return rows

    def overlay_and_labels(self, labels_path: Path, n: int) -> None:
        """The overlay PNG from a reduced view (outline pixels from every block) and the tiled labels TIFF."""
        from ..core.images import write_ome_tiff
        from ..core.rendering import downscale_factor, overlay_png, reduced_view

        factor = downscale_factor(self.shape, 512)
        grey, edges = reduced_view(lambda box: self.reader.read(self.channel, box), lambda box: read_npy(self.final, box),
                                   self.shape, factor, self.settings.block_px)
        uid = self.unit["unit_id"]
        (labels_path.parent / f"{uid}.overlay.png").write_bytes(
            overlay_png(grey, None, self.pixel[1] * factor if self.pixel else None, edges=edges))
        dtype = np.uint32 if n > 65535 else np.uint16
        write_ome_tiff(labels_path, npy_tiles(self.final, dtype), [f"labels of {uid}"], self.unit.get("pixel_size_um") or {},
                       shape=(1, *self.shape), dtype=dtype)


def postprocess_large(unit: dict[str, Any], probability_path: str | Path, settings: PostprocessSettings,
                      channels: tuple[str | int, ...], pixel: tuple[float, float] | None, out: Path,
                      labels_path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Labels (tiled OME-TIFF at ``labels_path``), overlay and objects of one large unit, block by block; the
    same steps as :func:`segmentation.instance_labels` with every field-wide statistic pooled over the blocks."""
    from ..core.channels import channel_indices

    uid = unit["unit_id"]
    with PlaneReader(unit["image_path"]) as reader:
        shape = reader.shape
        if npy_shape(probability_path)[-2:] != shape:
            raise ValueError(f"probabilities {npy_shape(probability_path)} do not match the image {shape}")
        channel = channel_indices(unit["channel_names"], channels, len(unit["channel_names"]))[0]
        blocks = layout(shape, settings.block_px, settings.block_overlap_px)
        print(f"[postprocess] {uid}: {shape[0]} x {shape[1]} px in {len(blocks)} blocks of {settings.block_px} px "
              f"(+{settings.block_overlap_px} px overlap)", file=sys.stderr)
        scale = pooled_scale(probability_path, reader, channel, pixel, settings, blocks)
        info: dict[str, Any] = {"typical_diameter_px": round(2 * max(scale.radius, 1.0), 2) if scale.radius else None,
                                "removed_small": None, "removed_low_contrast": 0, **(scale.info or {}),
                                "blocks": len(blocks), "left_out_large": 0}
        objects: ObjectTable | list[dict[str, Any]] = []
        if scale.radius is not None:
            passes = _Passes(unit, probability_path, reader, channel, pixel, settings, scale, out)
            try:
                count, info["left_out_large"] = passes.split_pass()
                level = passes.background(passes.split, smooth=True)[0] if settings.boundary_fraction > 0 else None
                means, areas = passes.outline_pass(count, level)
                keep = areas > 0
                keep[0] = False
                if settings.min_object_snr > 0 or settings.min_relative_contrast > 0:
                    low = _low_contrast(means, areas, keep, passes.background(passes.final, smooth=False), settings)
                    info["removed_low_contrast"] = int(low.sum())
                    keep &= ~low
                if settings.exclude_border_objects:
                    keep &= ~passes.touches
                n = passes.number_pass(keep)
                objects = passes.measure_pass(passes.background(passes.final, smooth=False))
                passes.overlay_and_labels(labels_path, n)
            finally:
                passes.cleanup()
        else:
            from ..core.images import write_ome_tiff
            from ..core.blocks import TIFF_TILE

            empty = (np.zeros((TIFF_TILE, TIFF_TILE), np.uint16) for _ in range(-(-shape[0] // TIFF_TILE) * -(-shape[1] // TIFF_TILE)))
            write_ome_tiff(labels_path, empty, [f"labels of {uid}"], unit.get("pixel_size_um") or {}, shape=(1, *shape), dtype=np.uint16)
    if info["left_out_large"]:
        print(f"[postprocess] {uid}: {info['left_out_large']} object cluster(s) larger than the block overlap were left out; "
              f"raise config key postprocess.block_overlap_px (now {settings.block_overlap_px})", file=sys.stderr)
    return summarize_objects(objects, shape, pixel, info), objects


def _low_contrast(means: np.ndarray, areas: np.ndarray, keep: np.ndarray, background: tuple[float, float],
                  settings: PostprocessSettings) -> np.ndarray:
    """:func:`segmentation._drop_low_contrast`'s choice from the objects' means and areas and the field's background."""
    level, noise = background
    contrast = (means - level) / noise
    values = contrast[keep]
    floor = settings.min_relative_contrast * float(np.percentile(values, 90)) if settings.min_relative_contrast > 0 and values.size else -np.inf
    return keep & ((contrast * np.sqrt(areas) < settings.min_object_snr) | (contrast < floor))

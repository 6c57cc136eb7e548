"""Instance segmentation: a model's probability map to labelled objects (field scale, split of touching nuclei,
outlines on the intensity, small and dim objects removed). The object statistics the labelling itself needs
(background level, contrast, per-label means) live here too; what is measured per object is in :mod:`.measurements`."""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..core.blocks import Histogram
from ..core.orderstats import SortedValues, label_percentiles
from ..core.settings import PostprocessSettings


# Tissue detection: when the objects at the probability threshold are TISSUE_RATIO times wider than the
# objects the model is sure of (probability >= 0.99), the foreground is tissue holding nuclei (real DSB2018
# embryo fields: 11-22x; every field of separate nuclei in BBBC039 and DSB2018: at most 2.3x). The nuclei
# are then the blobs brighter than the tissue around them (see tissue_nuclei); without an intensity image,
# the cores at TISSUE_CORE_THRESHOLD. On the two embryo fields: cores at 0.999 F1 0.59/0.57, top-hat 0.73/0.64.
TISSUE_SURE_THRESHOLD = 0.99
CONFIDENT_PROBABILITY = 0.9  # an object the model is sure of somewhere counts in the field's scale
TISSUE_CORE_THRESHOLD = 0.999
TISSUE_RATIO = 5.0
TISSUE_BACKGROUND_RADII = 2.0  # the opening that estimates the tissue around the nuclei, in nucleus radii
# Larger fields are processed one connected component at a time (distance transforms, splitting): the extra
# memory then follows the largest cluster of touching nuclei, not the field; the results are the same. With the
# default blocks (postprocess.block_px 2048, block_overlap_px 256) every block and every unblocked field fits.
WHOLE_FIELD_PIXELS = (2048 + 2 * 256) ** 2
ROWS_PER_BLOCK = 512  # rows compared at a time where a full-size temporary is not needed



def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``ndi.binary_fill_holes(mask)``: background not 4-connected to the array's edge becomes foreground; made by
    labelling the background once instead of scipy's iterated dilation (the same result, tested; 2x faster)."""
    background, n = ndi.label(~mask)
    if n == 0:
        return mask.copy()
    edge = np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
    outside = np.zeros(n + 1, bool)
    outside[edge] = True
    outside[0] = False
    return ~outside[background]


def grown_by_2(mask: np.ndarray) -> np.ndarray:
    """``ndi.binary_dilation(mask, iterations=2)`` (4-neighbour steps): shifted copies OR-ed, no scipy pass."""
    out = mask.copy()
    for _ in range(2):
        step = out.copy()
        step[1:] |= out[:-1]
        step[:-1] |= out[1:]
        step[:, 1:] |= out[:, :-1]
        step[:, :-1] |= out[:, 1:]
        out = step
    return out


def calibrated(pixel_size_um: tuple[float | None, float | None] | None) -> tuple[float, float] | None:
    """(y, x) in µm when both are known and positive, else None (the unit is measured in pixels)."""
    if not pixel_size_um or any(v is None or not np.isfinite(v) or v <= 0 for v in pixel_size_um):
        return None
    return float(pixel_size_um[0]), float(pixel_size_um[1])


def typical_radius_px(mask: np.ndarray, edt: np.ndarray | None = None, probability: np.ndarray | None = None) -> float | None:
    """The typical nucleus radius of a field, in pixels, from its foreground mask.

    Each connected object's largest inscribed radius (distance-transform maximum) is one nucleus
    radius whether the object is one nucleus or a cluster of touching ones. The area-weighted median
    finds the scale that holds most of the foreground (specks of debris barely count); the median over
    objects at least 0.4 of that scale is the estimate. ``edt``: the mask's distance transform, if already made.
    ``probability``: the model's map; then only objects the model is sure of somewhere (:func:`confident_objects`)
    count, when there are any.
    """
    components, n = ndi.label(mask)
    if n == 0:
        return None
    radii = inscribed_radii(mask, components, n, edt)
    areas = np.bincount(components.ravel())[1:].astype(float)
    sure = confident_objects(components, n, probability) if probability is not None else None
    del components
    return typical_radius(radii, areas, sure)


def confident_objects(components: np.ndarray, n: int, probability: np.ndarray) -> np.ndarray:
    """Which of ``n`` labelled objects reach CONFIDENT_PROBABILITY somewhere. A per-image-normalising model turns
    camera noise into thousands of specks that never do (measured: at most 0.88, against 1.0 in real nuclei, on a
    2048 x 1024 field of BBBC039 background noise holding three real nuclei); counted in the scale, they made its
    typical nucleus 2 px across and split the three nuclei into 134 pieces."""
    return np.bincount(components[probability >= CONFIDENT_PROBABILITY], minlength=n + 1)[1:] > 0


def typical_radius(radii: np.ndarray, areas: np.ndarray, sure: np.ndarray | None = None) -> float | None:
    """:func:`typical_radius_px` from every object's inscribed radius and area (pooled over blocks of a large field);
    ``sure``: which objects the model is confident of (only those count when there are any)."""
    if sure is not None and sure.any():
        radii, areas = radii[sure], areas[sure]
    if len(radii) == 0:
        return None
    order = np.argsort(radii)
    cumulative = np.cumsum(areas[order])
    weighted_median = radii[order][np.searchsorted(cumulative, cumulative[-1] / 2)]
    return float(np.median(radii[radii >= 0.4 * weighted_median]))


def inscribed_radii(mask: np.ndarray, components: np.ndarray, n: int, edt: np.ndarray | None = None) -> np.ndarray:
    """Each component's largest inscribed radius (its distance-transform maximum).

    Small fields: one distance transform of the whole mask. Larger fields: one per component, in its bounding
    box plus half the box's longer side: going straight out of a component in any direction the first pixel
    not in it is background (another component would touch it), so every distance inside is within that reach
    and equals the whole-field one (tested); memory follows the largest component, not the field.
    """
    if mask.size <= WHOLE_FIELD_PIXELS:
        radii = np.zeros(n + 1)  # per-label maximum in one pass (ndi.maximum's per-label selection is 25x slower)
        np.maximum.at(radii, components[mask], (distance_to_background(mask) if edt is None else edt)[mask])
        return radii[1:]
    radii = np.zeros(n)
    for index, box in enumerate(ndi.find_objects(components)):
        if box is None:
            continue
        reach = (max(b.stop - b.start for b in box) + 1) // 2 + 2
        crop = tuple(slice(max(0, b.start - reach), min(size, b.stop + reach)) for b, size in zip(box, mask.shape))
        own = components[crop] == index + 1
        radii[index] = float(distance_to_background(mask[crop])[own].max())
    return radii


@dataclass(frozen=True)
class FieldScale:
    """What the labelling takes from the whole field: the typical nucleus radius (px), whether the foreground is
    tissue (its nuclei then come from the top-hat, at the radius of the model's confident cores), and the
    intensity range mapped to 0..1 for the marker map (None when intensity is not used). Made from the field
    itself by :func:`instance_labels`, or pooled over the blocks of a large field (:mod:`.largefield`)."""

    radius: float | None
    tissue: bool = False
    intensity_scale: tuple[float, float] | None = None
    info: dict[str, Any] | None = None


def foreground(probability: np.ndarray, settings: PostprocessSettings) -> np.ndarray:
    """The probability map at the threshold, holes filled (if set)."""
    mask = probability >= settings.probability_threshold
    return fill_holes(mask) if settings.fill_holes else mask


def min_object_px(radius: float, pixel: tuple[float, float] | None, settings: PostprocessSettings) -> int:
    """The smallest object kept: ``min_object_area_fraction`` of a typical nucleus, at least ``min_object_area_um2``."""
    min_px = settings.min_object_area_fraction * np.pi * radius**2
    if pixel and settings.min_object_area_um2 > 0:
        min_px = max(min_px, settings.min_object_area_um2 / (pixel[0] * pixel[1]))
    return max(1, int(round(min_px)))


def instance_labels(probability: np.ndarray, intensity: np.ndarray | None, pixel_size_um: tuple[float, float] | None,
                    settings: PostprocessSettings, *, helper: Executor | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Instance labels from a foreground probability map, and how they were made.

    Threshold, fill holes, estimate the typical nucleus radius r; remove objects smaller than
    ``min_object_area_fraction`` of a typical nucleus; split touching nuclei by a marker-controlled
    watershed on a map that mixes normalised intensity (nuclei are brighter in the middle than where
    they touch) with the distance to the background capped at r (the shape), smoothed at a fraction of
    r, markers at least ``split_min_distance`` radii apart; outline each object where its intensity falls
    to ``boundary_fraction`` of its contrast; finally drop objects whose integrated
    signal-to-noise ((mean - background) / noise x sqrt(area)) is below ``min_object_snr``: noise the model
    took for nuclei (a model that normalises each image finds "nuclei" in an empty field), and objects far
    dimmer than the field's bright ones (``min_relative_contrast``: faint cytoplasm beside nuclei).

    ``helper``: a thread that smooths the intensity for the outlines while the objects are split, floods the lower
    half of the objects while this one floods the upper half, and finds the background level outlines are placed
    against while this one takes each object's 90th percentile (the same labels, sooner when a core is free).
    """
    smoothing = None
    if helper is not None and outlines_from_intensity(intensity, settings):
        smoothing = helper.submit(smoothed, intensity)
    labels, _, min_px, info = split_objects(probability, intensity, pixel_size_um, settings, helper=helper)
    return finish_objects(labels, intensity, settings, min_px, info,
                          smoothed_intensity=smoothing.result() if smoothing is not None else None, helper=helper), info


def field_scale(probability: np.ndarray, mask: np.ndarray, intensity: np.ndarray | None, pixel: tuple[float, float] | None,
                settings: PostprocessSettings, edt: np.ndarray | None) -> tuple[FieldScale, np.ndarray, np.ndarray | None]:
    """The field's radius and tissue decision from its own mask: (scale without intensity range, mask, edt); in
    tissue the mask is the nuclei's (and its distance transform is remade)."""
    info: dict[str, Any] = {}
    if settings.nucleus_diameter_um and pixel:
        info["scale_source"] = "config postprocess.nucleus_diameter_um"
        return FieldScale(settings.nucleus_diameter_um / 2 / float(np.sqrt(pixel[0] * pixel[1])), info=info), mask, edt
    radius = typical_radius_px(mask, edt, probability)
    info["scale_source"] = "estimated from this field"
    sure = typical_radius_px(probability >= TISSUE_SURE_THRESHOLD) if settings.probability_threshold < TISSUE_SURE_THRESHOLD else None
    if not (radius and sure and radius > TISSUE_RATIO * sure):
        return FieldScale(radius, info=info), mask, edt
    # the model took a whole tissue (an embryo, a cell sheet on bright cytoplasm) for one nucleus: the nuclei are
    # the blobs brighter than the tissue around them, at the scale of the model's confident cores
    mask, radius, how = tissue_mask(mask, probability, intensity, sure, settings)
    if intensity is None:
        radius = typical_radius_px(mask) or sure
    info.update(tissue=True, scale_source=tissue_source(how))
    return FieldScale(radius, tissue=True, info=info), mask, whole_field_edt(mask)


def tissue_mask(mask: np.ndarray, probability: np.ndarray, intensity: np.ndarray | None, sure: float,
                settings: PostprocessSettings) -> tuple[np.ndarray, float, str]:
    """The nuclei inside a tissue foreground: (mask, radius, how)."""
    if intensity is not None:
        return tissue_nuclei(mask, intensity, sure), sure, "its nuclei are the blobs brighter than the tissue around them (top-hat)"
    core = probability >= TISSUE_CORE_THRESHOLD
    return (fill_holes(core) if settings.fill_holes else core), sure, \
        f"its nuclei are the model's confident cores (probability >= {TISSUE_CORE_THRESHOLD})"


def tissue_source(how: str) -> str:
    return (f"the foreground is tissue, not separate nuclei; {how}; scale from the cores "
            f"the model is sure of (probability >= {TISSUE_SURE_THRESHOLD})")


def split_objects(probability: np.ndarray, intensity: np.ndarray | None, pixel_size_um: tuple[float, float] | None,
                  settings: PostprocessSettings, pinned: FieldScale | None = None, *,
                  helper: Executor | None = None) -> tuple[np.ndarray, np.ndarray, int, dict[str, Any]]:
    """The first half of :func:`instance_labels`: (objects split at the model's edge, their connected components,
    the smallest object kept in pixels, info). ``pinned``: the field's scale, given (a block of a large field)
    instead of estimated from this array; ``helper``: see :func:`instance_labels`."""
    pixel = calibrated(pixel_size_um)
    probability = np.nan_to_num(np.asarray(probability, np.float32), nan=0.0)
    mask = foreground(probability, settings)
    edt = None  # the mask's distance transform, shared by the scale estimate and the split (small fields)
    if pinned is None:
        if not (settings.nucleus_diameter_um and pixel):
            edt = whole_field_edt(mask)
        scale, mask, edt = field_scale(probability, mask, intensity, pixel, settings, edt)
    else:
        scale = pinned
        if scale.tissue and scale.radius:
            mask = tissue_mask(mask, probability, intensity, scale.radius, settings)[0]
    radius = scale.radius
    info: dict[str, Any] = {"typical_diameter_px": None, "scale_source": None, "removed_small": 0, "removed_low_contrast": 0,
                            **(scale.info or {})}
    empty = np.zeros(mask.shape, np.int32)
    if radius is None or not mask.any():
        return empty, empty, 1, info
    radius = max(radius, 1.0)
    info["typical_diameter_px"] = round(2 * radius, 2)
    min_px = min_object_px(radius, pixel, settings)
    components, before = ndi.label(mask)
    n_components = before
    if min_px > 1:  # components of fewer pixels removed; the rest numbered 1..n in their order, as labelling what is
        kept = np.bincount(components.ravel(), minlength=before + 1) >= min_px  # left would number them (tested)
        kept[0] = False
        components = (np.cumsum(kept) * kept).astype(components.dtype)[components]
        mask = components > 0
        n_components = int(kept.sum())
    if n_components == 0:
        info["removed_small"] = before
        return empty, empty, min_px, info
    info["removed_small"] = before - n_components
    if not settings.split_touching:
        return components.copy(), components, min_px, info
    intensity_scale = pinned.intensity_scale if pinned is not None else _intensity_scale(intensity, mask, settings)
    if mask.size > WHOLE_FIELD_PIXELS:
        labels = _split_by_component(mask, components, intensity, radius, settings, intensity_scale)
    else:
        labels = _split_whole_field(mask, components, intensity, radius, settings, intensity_scale, edt, helper)
    del edt
    orphans, _ = ndi.label(mask & (labels == 0))  # an object without a marker keeps one label of its own
    has_orphan = orphans > 0
    labels[has_orphan] = orphans[has_orphan] + labels.max()
    return labels, components, min_px, info


def outlines_from_intensity(intensity: np.ndarray | None, settings: PostprocessSettings) -> bool:
    """Whether objects are outlined on their intensity (:func:`trim_to_intensity`)."""
    return intensity is not None and settings.boundary_fraction > 0


def finish_objects(labels: np.ndarray, intensity: np.ndarray | None, settings: PostprocessSettings, min_px: int,
                   info: dict[str, Any], smoothed_intensity: np.ndarray | None = None, *,
                   helper: Executor | None = None) -> np.ndarray:
    """The second half of :func:`instance_labels`: outlines from intensity, small and dim objects removed,
    border objects (if set), labels numbered 1..n. ``smoothed_intensity``: :func:`smoothed` of it, if made already;
    ``helper``: see :func:`trim_to_intensity`."""
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import clear_border

    if outlines_from_intensity(intensity, settings) and labels.max() > 0:
        labels = trim_to_intensity(labels, intensity, settings.boundary_fraction, values=smoothed_intensity, helper=helper)
    labels = remove_small_objects(labels, max_size=min_px - 1) if min_px > 1 else labels
    if intensity is not None and (settings.min_object_snr > 0 or settings.min_relative_contrast > 0) and labels.max() > 0:
        labels, info["removed_low_contrast"] = _drop_low_contrast(labels, intensity, settings.min_object_snr,
                                                                  settings.min_relative_contrast)
    if settings.exclude_border_objects:
        labels = clear_border(labels)
    return numbered(labels.astype(np.int32, copy=False))


def numbered(labels: np.ndarray) -> np.ndarray:
    """``skimage.segmentation.relabel_sequential(labels)[0]`` of non-negative integer labels: the objects numbered
    1..n in the order of their labels, through one lookup table (the same array and type, tested; a few times
    faster than its general mapping)."""
    from skimage.segmentation import relabel_sequential

    if labels.size == 0 or int(labels.max()) > labels.size or int(labels.min()) < 0:  # sparse or odd labels
        return relabel_sequential(labels)[0]
    present = np.bincount(labels.ravel()) > 0
    present[0] = False
    return (np.cumsum(present) * present).astype(labels.dtype)[labels]


def tissue_nuclei(tissue: np.ndarray, intensity: np.ndarray, radius: float) -> np.ndarray:
    """Nuclei inside a tissue the model took as one foreground: where the (σ=1 px smoothed) intensity rises above
    the tissue around it. The surrounding level is a grey opening with a disk of TISSUE_BACKGROUND_RADII nucleus
    radii (larger than a nucleus, so it removes them and keeps the tissue), the white top-hat is the rise above
    it, and Otsu's threshold over the tissue's top-hat values separates nuclei from the tissue between them."""
    from skimage.filters import threshold_otsu
    from skimage.morphology import disk

    if tissue.sum() < 16:
        return tissue
    smooth = ndi.gaussian_filter(np.nan_to_num(np.asarray(intensity, np.float32), nan=0.0), 1.0)
    tophat = smooth - ndi.grey_opening(smooth, footprint=disk(max(1, int(round(TISSUE_BACKGROUND_RADII * radius)))))
    del smooth
    values = tophat[tissue]
    if values.min() == values.max():
        return tissue
    return fill_holes((tophat > threshold_otsu(values)) & tissue)


def distance_to_background(mask: np.ndarray) -> np.ndarray:
    """The exact Euclidean distance of every mask pixel to the nearest background pixel (0 off the mask), float64.

    ``scipy.ndimage.distance_transform_edt``'s values to float32 precision (tested), from the ``edt`` package's separable
    algorithm: 6-8x faster at 1024² (measured 0.025 s against 0.2 s), which matters where a field's latency counts
    (watch mode). A mask without background keeps scipy's convention (``edt`` gives infinity there)."""
    import edt

    if mask.all():
        return ndi.distance_transform_edt(mask)
    return edt.edt(np.ascontiguousarray(mask), black_border=False, parallel=1).astype(np.float64)


def whole_field_edt(mask: np.ndarray) -> np.ndarray | None:
    """The mask's distance transform on fields small enough to hold one (larger fields work per component)."""
    return distance_to_background(mask) if mask.size <= WHOLE_FIELD_PIXELS else None


def _marker_map(mask: np.ndarray, norm: np.ndarray | None, radius: float, settings: PostprocessSettings,
                edt: np.ndarray | None = None) -> np.ndarray:
    """(1 - w) * min(distance to background / r, 1) + w * normalised intensity, smoothed, zero off the mask; the
    arithmetic in place (on a large field every full-size temporary costs 8 bytes per pixel).

    ``edt``: the distance transform of a mask this one was made from by removing whole 4-connected components
    (small objects); used up (changed in place). Inside a kept component it equals this mask's own: from a pixel
    p of component C, a removed pixel q lies in another component, and a monotone 4-connected path from p to q
    inside the rectangle they span leaves C through a background pixel (another component there would touch C),
    which is no farther from p than q. Off the mask it is zeroed, as this mask's own transform is."""
    weight = settings.split_intensity_weight if norm is not None else 0.0
    if edt is None:
        marker_map = distance_to_background(mask)
    else:
        marker_map = edt
        marker_map[~mask] = 0
    marker_map /= radius
    np.minimum(marker_map, 1.0, out=marker_map)
    marker_map *= 1 - weight
    if weight > 0:
        marker_map += weight * norm
    if settings.split_smoothing > 0:
        marker_map = ndi.gaussian_filter(marker_map, settings.split_smoothing * radius, output=marker_map)
    marker_map[~mask] = 0
    return marker_map


def _intensity_scale(intensity: np.ndarray | None, mask: np.ndarray, settings: PostprocessSettings) -> tuple[float, float] | None:
    """(background median, 95th percentile of the foreground) that map intensity to 0 and 1 for the marker map,
    from the whole field; None when intensity is not used."""
    if intensity is None or settings.split_intensity_weight <= 0:
        return None
    # integers convert exactly to float32: the statistics on the pixels themselves equal those on a float copy
    values = intensity if np.issubdtype(intensity.dtype, np.integer) else np.nan_to_num(intensity.astype(np.float32), nan=0.0)
    background, _ = background_noise(values, mask)
    return background, float(np.percentile(values[mask].astype(np.float32), 95))


def _normalise(intensity: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    background, top = scale
    values = np.nan_to_num(intensity.astype(np.float32), nan=0.0)
    return np.clip((values - background) / max(top - background, 1e-6), 0, 1.5)


def spaced(coords: np.ndarray, spacing: int) -> np.ndarray:
    """``coords`` (in order of preference) without those closer than ``spacing`` (Chebyshev) to one kept before
    them: the greedy rule of scikit-image's ``ensure_spacing`` with its default infinity norm."""
    n = len(coords)
    if n < 2:
        return coords
    keep = np.ones(n, bool)
    if n <= 512:  # small: all pairwise distances at once
        close = np.abs(coords[:, None, :] - coords[None, :, :]).max(axis=-1) < spacing
        for i in range(n):
            if keep[i]:
                keep[i + 1:] &= ~close[i, i + 1:]
        return coords[keep]
    from scipy.spatial import cKDTree

    tree = cKDTree(coords)
    for i in range(n):
        if keep[i]:
            near = np.asarray(tree.query_ball_point(coords[i], r=spacing - 0.5, p=np.inf), int)
            keep[near[near > i]] = False
    return coords[keep]


def label_peaks(image: np.ndarray, labels: np.ndarray, min_distance: int, threshold: float | None = None) -> np.ndarray:
    """The peaks of ``image`` within each object of ``labels``: the coordinates, in the same order, that
    ``skimage.feature.peak_local_max(image, min_distance=min_distance, labels=labels, exclude_border=False)`` gives
    (tested), with its spacing pass done by :func:`spaced`, without a k-d tree per object (the half of its time
    on a field of a few hundred nuclei, measured). ``threshold``: the lowest value of the image it is part of, when
    ``image`` is a part (a peak must be above it)."""
    threshold = image.min() if threshold is None else threshold
    background = np.finfo(image.dtype).min if np.issubdtype(image.dtype, np.floating) else np.iinfo(image.dtype).min
    size = 2 * min_distance + 1
    found = []
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        own = labels[box] == index
        values = image[box].copy()
        values[~own] = background  # other objects in the box do not count
        if size > 1 and values.size > 1:
            peak = values == ndi.maximum_filter(values, size=size, mode="nearest")
            if peak[own].all():  # a flat object: no peak, unless it is an isolated pixel
                peak[:] = False
                peak[own ^ ndi.binary_opening(own)] = True
            peak &= values > threshold
        else:
            peak = values > threshold
        where = np.nonzero(peak)
        coords = np.transpose(where)[np.argsort(-values[where], kind="stable")]
        if min_distance > 1:
            coords = spaced(coords, min_distance)
        found.append(coords + [b.start for b in box])
    return np.vstack(found) if found else np.empty((0, image.ndim), int)


def _flood(marker_map: np.ndarray, peak_labels: np.ndarray, mask: np.ndarray, min_distance: int,
           first_id: int) -> tuple[np.ndarray, int]:
    """Markers at the marker map's peaks within each of ``peak_labels``' objects (numbered from ``first_id`` + 1),
    then the watershed of the inverted map (inverted in place) within ``mask``; returns (labels, markers found)."""
    from skimage.segmentation import watershed

    peaks = label_peaks(marker_map, peak_labels, min_distance)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(first_id + 1, first_id + len(peaks) + 1)
    np.negative(marker_map, out=marker_map)
    return watershed(marker_map, markers, mask=mask), len(peaks)


def _split_whole_field(mask: np.ndarray, components: np.ndarray, intensity: np.ndarray | None, radius: float,
                       settings: PostprocessSettings, scale: tuple[float, float] | None,
                       edt: np.ndarray | None = None, helper: Executor | None = None) -> np.ndarray:
    """Touching nuclei split by a marker-controlled watershed over the whole field (small fields); with a
    ``helper``, its objects in two halves at once (:func:`_flood_in_halves`)."""
    marker_map = _marker_map(mask, _normalise(intensity, scale) if scale else None, radius, settings, edt)
    min_distance = max(1, int(round(settings.split_min_distance * radius)))
    if helper is not None:
        labels = _flood_in_halves(marker_map, components, min_distance, helper)
        if labels is not None:
            return labels
    return _flood(marker_map, components, mask, min_distance, 0)[0]


def _flood_in_halves(marker_map: np.ndarray, components: np.ndarray, min_distance: int,
                     helper: Executor) -> np.ndarray | None:
    """:func:`_flood` of the whole field (markers numbered from 1 in the order of the components) made as two
    floods, of the components starting in the upper half of the mask's pixels (this thread) and of the rest (the
    ``helper``), each in the rows its components span; None when the halves could differ from one flood.

    The watershed's queue orders pixels by value, then by when they were queued; the markers are all queued first,
    at the same time. Components never meet (the flood stays in the mask, whose 4-connected parts they are), so
    within one component the pixels leave the queue in the same order in a flood of fewer components, as long as
    no two of its markers hold the same value (their order would then rest on the queue's layout): then the halves
    give the whole field's labels, which the markers' renumbering (upper and lower interleaved by component)
    makes identical (tested). With such a tie, None: the caller floods the whole field in one."""
    boxes = ndi.find_objects(components)
    first_rows = np.array([box[0].start if box else -1 for box in boxes])
    pixels = np.cumsum(np.count_nonzero(components, axis=1))
    middle = int(np.searchsorted(pixels, pixels[-1] / 2)) if len(pixels) else 0
    lowest = marker_map.min()
    upper = np.zeros(len(boxes) + 1, bool)
    upper[1:] = (first_rows >= 0) & (first_rows <= middle)
    lower = np.zeros(len(boxes) + 1, bool)
    lower[1:] = (first_rows >= 0) & ~upper[1:]

    def peaks_of(group: np.ndarray) -> tuple[slice, np.ndarray, np.ndarray] | None:
        """(rows its components span, their labels there, their markers' coordinates in the group's order)"""
        spans = [boxes[i - 1][0] for i in np.flatnonzero(group)]
        if not spans:
            return None
        rows = slice(min(r.start for r in spans), max(r.stop for r in spans))
        own = np.where(group[components[rows]], components[rows], 0)
        return rows, own, label_peaks(marker_map[rows], own, min_distance, lowest)

    def tied(rows: slice, own: np.ndarray, peaks: np.ndarray) -> bool:
        at = tuple(peaks.T)
        of, values = own[at], marker_map[rows][at]
        order = np.lexsort((values, of))
        return bool(np.any((np.diff(of[order]) == 0) & (np.diff(values[order]) == 0)))

    def flood(rows: slice, own: np.ndarray, peaks: np.ndarray) -> tuple[slice, np.ndarray, np.ndarray, np.ndarray]:
        """(rows, own pixels there, labels numbered 1..k in the group's order, each marker's component)"""
        from skimage.segmentation import watershed

        at = tuple(peaks.T)
        markers = np.zeros(own.shape, np.int32)
        markers[at] = np.arange(1, len(peaks) + 1)
        inside = own > 0
        return rows, inside, watershed(-marker_map[rows], markers, mask=inside), own[at]

    # the peak search holds the interpreter (a loop over objects); the floods do not: the lower half floods on the
    # helper while this thread finds the upper half's peaks and floods it
    below = peaks_of(lower)
    if below and tied(*below):
        return None
    pending = helper.submit(flood, *below) if below else None
    above = peaks_of(upper)
    if above and tied(*above):
        if pending is not None:
            pending.result()
        return None
    halves = [flood(*above) if above else None, pending.result() if pending is not None else None]
    halves = [half for half in halves if half is not None]
    owners = np.concatenate([half[3] for half in halves]) if halves else np.empty(0, int)
    number = np.empty(len(owners), np.int32)  # markers in the order of their components, each component's in its order
    number[np.argsort(owners, kind="stable")] = np.arange(1, len(owners) + 1)
    labels = np.zeros(components.shape, np.int32)
    start = 0
    for rows, own, local, of in halves:
        lookup = np.zeros(len(of) + 1, np.int32)
        lookup[1:] = number[start:start + len(of)]
        start += len(of)
        labels[rows][own] = lookup[local[own]]
    return labels


def _split_by_component(mask: np.ndarray, components: np.ndarray, intensity: np.ndarray | None, radius: float,
                        settings: PostprocessSettings, scale: tuple[float, float] | None) -> np.ndarray:
    """The same split, one connected component at a time in its bounding box plus a margin, so the extra memory
    follows the largest object cluster, not the field. The margin holds everything a box pixel's value depends
    on (the smoothing's reach, 4 sigma, plus the capped distance's, r), so markers and labels equal the
    whole-field ones (tested); markers are numbered in the same order. One exception, as in
    :func:`_flood_in_halves`: two markers of one object at exactly the same value leave the watershed's queue in an
    order that rests on its layout, so their shared boundary may differ from a whole-field flood's by a few
    pixels; it is the same every run (this path has no whole-field flood to fall back to: its memory is the point)."""
    margin = split_margin(radius, settings)
    min_distance = max(1, int(round(settings.split_min_distance * radius)))
    labels = np.zeros(mask.shape, np.int32)
    next_id = 0
    for index, box in enumerate(ndi.find_objects(components), start=1):
        if box is None:
            continue
        crop = tuple(slice(max(0, b.start - margin), min(n, b.stop + margin)) for b, n in zip(box, mask.shape))
        sub_mask = mask[crop]
        marker_map = _marker_map(sub_mask, _normalise(intensity[crop], scale) if scale else None, radius, settings)
        own = components[crop] == index
        flooded, found = _flood(marker_map, own.astype(np.int32), own, min_distance, next_id)
        next_id += found
        labels[crop][own] = flooded[own]
    return labels


def split_margin(radius: float, settings: PostprocessSettings) -> int:
    """How far beyond an object cluster its split looks: the marker map's smoothing (4 sigma) plus the capped
    distance's reach (r)."""
    return int(4.0 * settings.split_smoothing * radius + 0.5) + int(np.ceil(radius)) + 2


def trim_to_intensity(labels: np.ndarray, intensity: np.ndarray, fraction: float, level: float | None = None,
                      values: np.ndarray | None = None, *, helper: Executor | None = None) -> np.ndarray:
    """Each object's outline where its (σ=1 px smoothed) intensity falls to ``fraction`` of its contrast.

    A model's probability edge sits outside the nucleus (it is smooth and its training masks were
    generous); the object's own intensity profile places the edge, as a half-maximum would. Contrast is
    the object's 90th percentile above the background around all objects; holes left inside are filled.
    ``values``: :func:`smoothed` of the intensity, if made already; ``helper``: a thread that finds the background
    level while this one takes the objects' percentiles.
    """
    values = smoothed(intensity) if values is None else values
    pending = None
    if level is None:  # given: the whole field's, for a block of a large field
        if helper is not None:
            pending = helper.submit(trim_level, values, labels)
        else:
            level = trim_level(values, labels)
    n = int(labels.max())
    top = label_percentiles(values, labels, n=n, q=90, default=np.nan if pending is not None else level)
    if pending is not None:  # the smoothed values are finite: NaN marks the labels without a pixel
        level = pending.result()
        top[np.isnan(top)] = level
    cutoff = np.full(n + 1, np.inf)
    cutoff[1:] = level + fraction * (top - level)
    kept = np.empty(labels.shape, bool)  # values >= their object's cutoff (the background's is inf), by row blocks:
    for start in range(0, labels.shape[0], ROWS_PER_BLOCK):  # no full-size float array of cutoffs beside the values
        rows = slice(start, start + ROWS_PER_BLOCK)
        kept[rows] = values[rows] >= cutoff[labels[rows]]
    del values
    kept = fill_holes(kept)
    kept &= labels > 0
    out = labels.copy()
    out[~kept] = 0
    return out


def smoothed(intensity: np.ndarray) -> np.ndarray:
    """The intensity as float64, NaN as 0, smoothed with σ = 1 px (what outlines are placed on)."""
    values = np.nan_to_num(intensity.astype(np.float64), nan=0.0, copy=False)
    return ndi.gaussian_filter(values, 1.0, output=values)  # in place: one full-size float array, not two


def trim_level(values: np.ndarray, labels: np.ndarray) -> float:
    """The background level outlines are placed against: the median of the smoothed intensity more than 2 px
    from every object."""
    return background_noise(values, grown_by_2(labels > 0))[0]


def background_noise(intensity: np.ndarray, foreground: np.ndarray | None = None) -> tuple[float, float]:
    """Background level and noise SD from pixels outside ``foreground`` (robust: median and 1.4826 MAD)."""
    outside = foreground is not None and (~foreground).sum() >= 64
    values = intensity[~foreground] if outside else intensity.ravel()
    if values.size and np.issubdtype(values.dtype, np.integer) and values.dtype.itemsize <= 2:
        # grey levels counted, not sorted: the same order statistics, exactly (core.blocks.Histogram)
        histogram = Histogram.of_integers(values)
        level = histogram.median()
        return level, histogram.robust_noise(level)
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    ordered = SortedValues(values)  # one sort for the median and the MAD around it (np.median's values, exactly)
    level = ordered.median()
    noise = 1.4826 * ordered.median_abs_deviation(level)
    if noise <= 0:  # integer images with a flat background: fall back to the SD
        noise = float(values.astype(np.float64, copy=False).std())
    return level, max(noise, 1e-6)


def _drop_low_contrast(labels: np.ndarray, intensity: np.ndarray, min_snr: float,
                       min_relative: float = 0.0) -> tuple[np.ndarray, int]:
    """Remove objects whose integrated signal-to-noise (contrast x sqrt(area)) is below ``min_snr``, or whose
    contrast is below ``min_relative`` of the field's bright objects' (the 90th percentile of object contrasts).

    Calibrated on real fields: noise objects a per-image-normalising U-Net finds in empty fields reach about 8,
    nuclei dimmed to 1.5 noise SDs stay above 20 (bench/accuracy.py, ../shared nuclei). The relative test
    removes faint cytoplasm and autofluorescence the model outlines beside bright nuclei: on the 32 real
    BBBC039 and DSB2018 fields, objects below 0.1 of the field's bright ones were 14 false objects and no
    nucleus (0.15: 21 and 1; 0.25: 29 and 9); nuclear stains vary a few-fold within a field, not ten-fold.
    """
    contrast = object_contrast(labels, intensity)
    areas = np.bincount(labels.ravel())
    values = np.array(list(contrast.values()))
    floor = min_relative * float(np.percentile(values, 90)) if min_relative > 0 and values.size else -np.inf
    low = [label for label, value in contrast.items() if value * np.sqrt(areas[label]) < min_snr or value < floor]
    if low:
        drop = np.zeros(int(labels.max()) + 1, bool)
        drop[low] = True
        labels = labels.copy()
        labels[drop[labels]] = 0
    return labels, len(low)


def object_contrast(labels: np.ndarray, intensity: np.ndarray, occupied: np.ndarray | None = None) -> dict[int, float]:
    """Per object: (mean intensity - background) / background noise SD, background outside every object
    (``occupied``: the pixels of every object, when ``labels`` holds only some of them)."""
    # integer pixels are used as they are (ndi.mean and the background statistics compute in float64 anyway):
    # no full-size float copy of the field
    values = intensity if np.issubdtype(intensity.dtype, np.integer) else np.nan_to_num(intensity.astype(np.float64), nan=0.0, copy=False)
    grown = grown_by_2(labels > 0 if occupied is None else occupied)
    level, noise = background_noise(values, grown)
    ids, means = label_means(values, labels)
    return {int(i): (float(m) - level) / noise for i, m in zip(ids, means)}


def label_means(values: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the labels present, the mean of ``values`` on each): ``ndi.mean``'s own sums (a bincount over the labels,
    divided in float64), without its search for the labels present."""
    flat = labels.ravel()
    counts = np.bincount(flat)
    ids = np.flatnonzero(counts[1:]) + 1
    return ids, np.bincount(flat, weights=values.ravel())[ids] / counts[ids].astype(np.float64)

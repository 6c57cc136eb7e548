"""The smooth background fitted at import and taken out of what the model, segmentation and quality metrics see,
on real nuclei fields (../shared) given the ramps and vignettes of uneven illumination."""

import numpy as np
import pytest
import tifffile

from conftest import SHARED, needs_shared
from snakescope.core.background import BackgroundSurface, fit_background, flattened

NUCLEI = SHARED / "data" / "nuclei"


def real_field(name: str, stem: str) -> tuple[np.ndarray, np.ndarray]:
    needs_shared(NUCLEI)
    path = next((NUCLEI / name / "images").glob(f"{stem}*.tif"))
    return tifffile.imread(path), tifffile.imread(NUCLEI / name / "masks" / path.name)


def uneven(image: np.ndarray, rise: float) -> tuple[np.ndarray, np.ndarray]:
    """The field plus a diagonal ramp and a vignette that together rise by ``rise``; (field, what was added)."""
    h, w = image.shape
    y, x = np.mgrid[0:h, 0:w]
    added = 0.7 * rise * (x / w + y / h) / 2 + 0.3 * rise * (1 - ((y - h / 2) ** 2 / (h / 2) ** 2 + (x - w / 2) ** 2 / (w / 2) ** 2) / 2)
    top = np.iinfo(image.dtype).max
    return np.clip(np.round(image + added), 0, top).astype(image.dtype), added


def contrast(image: np.ndarray) -> float:
    return float(np.percentile(image, 99) - np.median(image))


@pytest.mark.parametrize("name, stem", [("bbbc039", "IXMtest_A15"), ("dsb2018", "77ceeb87"), ("dsb2018", "c53326fe")])
def test_a_ramp_and_vignette_on_a_real_field_are_found_and_taken_out(name, stem):
    """Sparse, dense and small-nuclei real fields: the surface found follows what was added to within 5 % of the
    field's contrast (after removing the constant, which flattening keeps), although half the pixels are nuclei."""
    image, _ = real_field(name, stem)
    rise = 0.5 * contrast(image)
    field, added = uneven(image, rise)
    surface = fit_background(field)
    found = np.vstack([surface.rows(0, field.shape[0])])
    error = (found - found.mean()) - (added - added.mean())
    own = fit_background(image)
    own_surface = own.rows(0, image.shape[0])
    # what the untouched field's own background does is not error of the fit
    error -= own_surface - own_surface.mean()
    assert np.abs(error).max() < 0.05 * contrast(image)
    assert surface.range > 0.8 * float(np.ptp(added))
    flat = flattened(field, surface)
    assert flat.dtype == np.float32
    assert abs(float(np.median(flat)) - float(np.median(image)) - float(np.median(added))) < 0.05 * contrast(image)


def test_nearly_flat_real_fields_stay_nearly_flat():
    """On every untouched real field the surface moves by well under the nuclei's contrast (BBBC039: under 6 %)."""
    needs_shared(NUCLEI)
    for path in sorted((NUCLEI / "bbbc039" / "images").glob("*.tif")):
        image = tifffile.imread(path)
        assert fit_background(image).range < 0.06 * contrast(image), path.name


def test_the_surface_evaluated_by_rows_and_its_record():
    """Blocks of rows give the whole surface; the record round-trips; too few boxes (a 20 x 66 strip seen with a
    larger grid) give a constant, and a constant flattens nothing."""
    surface = BackgroundSurface(2, (10.0, 1.0, -2.0, 0.5, 0.25, -0.75), (700, 300), 10.0, 5.0)
    whole = surface.rows(0, 700)
    assert np.allclose(np.vstack([surface.rows(s, min(700, s + 256)) for s in range(0, 700, 256)]), whole)
    assert BackgroundSurface.from_dict(surface.as_dict()) == surface
    strip = np.random.default_rng(0).poisson(50, (20, 66)).astype(np.uint16)
    constant = fit_background(strip, grid=3)
    assert constant.order == 0 and constant.range == 0
    assert flattened(strip, constant) is strip


def test_import_records_the_fit_and_quality_and_segmentation_see_the_field_flattened(tmp_path, unet_model):
    """A real DSB2018 field with a ramp of 40 % of its contrast (a widefield field without flat-field correction):
    imported with the fit recorded per channel; the quality metrics find its nuclei (without flattening: an empty
    field, foreground 0.03 against 0.32) and the segmentation finds them as on the untouched field (without: F1 0.34 against 0.90);
    the unit's pixels stay as read and the objects are measured on them."""
    from dataclasses import replace

    from snakescope.stages.acquisition import import_batch
    from snakescope.core.settings import ImportSettings
    from snakescope.core.images import read_unit
    from snakescope.stages.inference import check_model, predict_batch
    from snakescope.core.settings import ModelSettings
    from snakescope.core.inputs import Source
    from snakescope.stages.quality import quality_batch
    from snakescope.core.records import write_json
    from snakescope.stages.segmentation import postprocess_batch
    from snakescope.methods.measurements import object_f1
    from snakescope.core.settings import PostprocessSettings

    image, truth = real_field("dsb2018", "77ceeb87")
    h, w = image.shape
    ramped = np.clip(image + 0.4 * contrast(image) * np.arange(w)[None, :] / w, 0, 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "ramped.tif", ramped)
    tifffile.imwrite(tmp_path / "untouched.tif", image)
    sources = [Source("ramped", str(tmp_path / "ramped.tif")), Source("untouched", str(tmp_path / "untouched.tif"))]
    settings = ModelSettings(source=str(unet_model))
    write_json(tmp_path / "check.json", check_model(settings, tmp_path / "cache"))
    f1, metrics = {}, {}
    for mode in ("flatten", "none"):
        out = tmp_path / mode
        doc = import_batch("b0000", sources, replace(ImportSettings(), background=mode), out / "import")
        ramped_unit = doc["units"][0]
        assert np.array_equal(read_unit(ramped_unit["image_path"])[0], ramped)
        assert bool(ramped_unit["background"]) == (mode == "flatten")
        metrics[mode] = quality_batch(out / "import" / "manifest.json", out / "quality.json")["metrics"]
        predict_batch(out / "import" / "manifest.json", settings, tmp_path / "check.json", out / "inference")
        postprocess_batch(out / "import" / "manifest.json", out / "inference" / "manifest.json", PostprocessSettings(), (0,),
                          out / "segmentation")
        f1[mode] = {uid: object_f1(tifffile.imread(out / "segmentation" / f"{uid}.labels.ome.tif"), truth)["f1"]
                    for uid in ("ramped", "untouched")}
    name = doc["units"][0]["channel_names"][0]
    flat, plain = metrics["flatten"]["ramped"][name], metrics["none"]["ramped"][name]
    untouched = metrics["flatten"]["untouched"][name]
    assert plain["foreground_fraction"] < 0.2 * untouched["foreground_fraction"]  # near "empty" without flattening
    assert flat["foreground_fraction"] == pytest.approx(untouched["foreground_fraction"], abs=0.1)
    assert flat["background_unevenness"] > 0.4 and untouched["background_unevenness"] < 0.2
    assert f1["none"]["ramped"] < 0.5
    assert f1["flatten"]["ramped"] > 0.85 and f1["flatten"]["ramped"] >= f1["none"]["untouched"] - 0.03

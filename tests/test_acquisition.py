"""Import on files the tests write (multi-scene, T/Z stacks, RGB) and on the real vendor files in ../shared."""

from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import FORMATS, needs_shared
from snakescope.stages.acquisition import import_batch, import_source
from snakescope.core.settings import ImportSettings
from snakescope.core.images import read_unit
from snakescope.core.inputs import Source
from snakescope.core.records import read_json, sha256_file


def write_ome(path: Path, arrays, axes, pixel=0.5, channels=("DAPI",), photometric=None):
    meta = {"axes": axes, "PhysicalSizeX": pixel, "PhysicalSizeY": pixel, "Channel": {"Name": list(channels)}}
    with tifffile.TiffWriter(path, ome=True) as tif:
        for a in arrays:
            tif.write(a, metadata=meta, photometric=photometric)
    return path


def test_multi_scene_file_gives_one_unit_per_scene(tmp_path):
    rng = np.random.default_rng(0)
    scenes = [rng.integers(0, 1000, (1, 40, 50), dtype=np.uint16) for _ in range(3)]
    path = write_ome(tmp_path / "plate.ome.tif", scenes, "CYX", pixel=0.325)
    units, _ = import_source(Source("plate", str(path)), ImportSettings(), tmp_path / "out")
    assert [u.unit_id for u in units] == ["plate_s0", "plate_s1", "plate_s2"]
    for unit, scene in zip(units, scenes):
        assert unit.pixel_size_um["x"] == pytest.approx(0.325)
        assert unit.channel_names == ["DAPI"]
        np.testing.assert_array_equal(read_unit(unit.image_path), scene)


def test_tz_stack_max_projection_plane_and_per_plane(tmp_path):
    stack = np.zeros((2, 1, 3, 20, 20), np.uint16)  # T C Z Y X
    for t in range(2):
        for z in range(3):
            stack[t, 0, z] = 10 * t + z
    path = write_ome(tmp_path / "tz.ome.tif", [stack], "TCZYX")
    src = Source("tz", str(path))
    (unit,), _ = import_source(src, ImportSettings(z="max"), tmp_path / "a")
    assert read_unit(unit.image_path).max() == 2 and unit.source_dims["Z"] == 3 and unit.source_dims["T"] == 2
    (unit,), _ = import_source(src, ImportSettings(z="plane", z_plane=1, t_index=1), tmp_path / "b")
    assert read_unit(unit.image_path).max() == 11
    units, _ = import_source(src, ImportSettings(z="per_plane", t="per_timepoint"), tmp_path / "c")
    assert [u.unit_id for u in units] == [f"tz_t{t}_z{z}" for t in range(2) for z in range(3)]
    assert [int(read_unit(u.image_path).max()) for u in units] == [0, 1, 2, 10, 11, 12]
    units, (failure,) = import_source(src, ImportSettings(z="plane", z_plane=7), tmp_path / "d")
    assert units == [] and "z_plane=7" in failure.reason


def test_rgb_samples_become_channels_or_luminance(tmp_path):
    rgb = np.zeros((30, 40, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 10
    path = tmp_path / "he.tif"
    tifffile.imwrite(path, rgb, photometric="rgb")
    settings = ImportSettings(default_pixel_size_um=0.5)
    (unit,), _ = import_source(Source("he", str(path)), settings, tmp_path / "a")
    array = read_unit(unit.image_path)
    assert array.shape == (3, 30, 40) and list(array[:, 0, 0]) == [200, 100, 10]
    assert unit.source_dims.get("S") == 3
    (unit,), _ = import_source(Source("he", str(path)), ImportSettings(rgb="luminance", default_pixel_size_um=0.5), tmp_path / "b")
    assert read_unit(unit.image_path).shape == (1, 30, 40)
    assert read_unit(unit.image_path)[0, 0, 0] == pytest.approx(0.2126 * 200 + 0.7152 * 100 + 0.0722 * 10, rel=1e-4)


def test_real_czi_and_lif(tmp_path):
    needs_shared(FORMATS)
    czi, lif = FORMATS / "s_1_t_1_c_1_z_1.czi", FORMATS / "LeicaLASX_wavelength-sweep_example.lif"
    (unit,), _ = import_source(Source("czi", str(czi)), ImportSettings(), tmp_path / "czi")
    assert unit.shape == [1, 325, 475] and unit.dtype == "uint16"
    assert unit.pixel_size_um["x"] == pytest.approx(1.0833, rel=1e-3) and unit.channel_names == ["Bright"]
    units, failures = import_source(Source("lif", str(lif)), ImportSettings(), tmp_path / "lif")
    # wavelength sweeps: bioio-lif 2.0.1 reports C=1 but cannot read the pixels; liffile does, λ becomes channels
    assert failures == []
    assert [u.scene_name for u in units] == ["x_y_lambdaEmi", "x_y_lambdaExc", "x_y_z_t_lambdaEmi"]
    assert [u.shape for u in units] == [[20, 64, 64], [15, 64, 64], [10, 64, 64]]
    assert units[2].source_dims == {"T": 2, "C": 10, "Z": 11, "Y": 64, "X": 64}
    assert units[0].channel_names[0].startswith("em ") and units[1].channel_names[0].startswith("ex ")
    assert units[0].pixel_size_um["x"] == pytest.approx(0.10481, rel=1e-3)
    assert units[2].pixel_size_um["z"] == pytest.approx(0.5002, rel=1e-3)


def test_leica_xz_xzt_and_xzy_scenes_each_with_their_own_frame_axes(tmp_path):
    """readlif's public test file: an XZY scene (XZ frames stepped along Y) failed before with "cannot select
    frame dimension 'Z'"; each scene is now imported with the frame axes the file defines, and its pixels are
    those of an independent reader (readlif)."""
    from readlif.reader import LifFile

    lif = Path(__file__).parent / "data" / "leica" / "testdata_2channel_xz.lif"
    before = sha256_file(lif)
    units, failures = import_source(Source("leica", str(lif)), ImportSettings(), tmp_path)
    assert failures == []
    assert [u.scene_name for u in units] == ["xzt", "xzy", "xz"]
    xzt, xzy, xz = units
    assert xzy.source_dims == {"T": 1, "C": 2, "Z": 128, "Y": 23, "X": 128} and xzy.shape == [2, 23, 128]
    assert xzy.pixel_size_um["x"] == pytest.approx(0.14028, rel=1e-3)
    assert xzy.pixel_size_um["y"] == pytest.approx(0.22906, rel=1e-3)  # the Y step between XZ frames
    assert xzy.pixel_size_um["z"] == pytest.approx(0.14028, rel=1e-3)
    assert any("XZY" in w for w in xzy.warnings) and any("XZ scan" in w for w in xz.warnings)
    assert xz.shape == [2, 512, 512] and xz.pixel_size_um["z"] is None
    assert xzt.source_dims["T"] == 20 and xzt.selection["t"] == 0

    reference = LifFile(str(lif))
    planes = reference.get_image(1)
    volume = np.stack([[np.asarray(planes.get_plane(c=c, requested_dims={2: y})) for y in range(23)]
                       for c in range(2)])  # C, Y, Z, X
    assert np.array_equal(read_unit(xzy.image_path), volume.max(axis=2))  # the Z stack's maximum projection
    section = reference.get_image(2)
    assert np.array_equal(read_unit(xz.image_path), np.stack([np.asarray(section.get_plane(c=c)) for c in range(2)]))
    time_series = reference.get_image(0)
    assert np.array_equal(read_unit(xzt.image_path)[1], np.asarray(time_series.get_plane(c=1, requested_dims={4: 0})))
    assert sha256_file(lif) == before


def test_broken_file_is_recorded_and_others_continue_inputs_untouched(tmp_path):
    good = write_ome(tmp_path / "good.ome.tif", [np.ones((1, 16, 16), np.uint16)], "CYX")
    broken = tmp_path / "broken.ome.tif"
    broken.write_bytes(b"II*\x00" + b"\x00garbage" * 10)
    before = {p: sha256_file(p) for p in (good, broken)}
    doc = import_batch("b0000", [Source("broken", str(broken)), Source("good", str(good))], ImportSettings(), tmp_path / "out")
    assert [u["unit_id"] for u in doc["units"]] == ["good"]
    (failure,) = doc["failures"]
    assert failure["source_path"] == str(broken) and failure["stage"] == "import" and failure["reason"]
    assert read_json(tmp_path / "out" / "manifest.json")["failures"][0]["sample_id"] == "broken"
    assert {p: sha256_file(p) for p in (good, broken)} == before
    assert doc["units"][0]["source_sha256"] == before[good]


def test_a_truncated_file_fails_with_the_readers_own_reason_not_a_pixel_size(tmp_path):
    """A file cut short in transfer: the reason names the short read, in both missing_pixel_size modes."""
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, np.random.default_rng(0).integers(0, 4000, (2, 256, 256), dtype=np.uint16), ome=True,
                     metadata={"axes": "CYX"})  # an OME-TIFF without a pixel size, like many exported files
    cut = tmp_path / "cut.ome.tif"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])
    for mode in ("pixels", "fail"):
        units, (failure,) = import_source(Source("cut", str(cut)), ImportSettings(missing_pixel_size=mode), tmp_path / mode)
        assert units == [] and "failed to read" in failure.reason and "pixel size" not in failure.reason, failure.reason


NUCLEI = FORMATS.parent / "nuclei"


def test_missing_pixel_size_is_measured_in_pixels_with_a_warning_or_fails_or_is_set(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.ones((16, 16), np.uint16), resolution=(72, 72), resolutionunit="INCH")
    (unit,), failures = import_source(Source("p", str(path)), ImportSettings(), tmp_path / "a")
    assert failures == [] and unit.pixel_size_um["x"] is None and unit.pixel_size_origin.startswith("missing")
    (warning,) = unit.warnings
    assert str(path) in warning and "72 per inch" in warning and "pixel_size_um" in warning and "import.default_pixel_size_um" in warning
    units, (failure,) = import_source(Source("p", str(path)), ImportSettings(missing_pixel_size="fail"), tmp_path / "b")
    assert units == [] and str(path) in failure.reason and "import.missing_pixel_size: fail" in failure.reason
    (unit,), _ = import_source(Source("p", str(path)), ImportSettings(default_pixel_size_um=0.65), tmp_path / "c")
    assert unit.pixel_size_um["x"] == 0.65 and unit.pixel_size_origin.startswith("config") and unit.warnings == []
    (unit,), _ = import_source(Source("p", str(path), {"pixel_size_um": "0.325"}), ImportSettings(default_pixel_size_um=0.65), tmp_path / "d")
    assert unit.pixel_size_um == {"x": 0.325, "y": 0.325, "z": None} and unit.pixel_size_origin == "sample sheet column pixel_size_um"
    units, (failure,) = import_source(Source("p", str(path), {"pixel_size_um": "about 0.3"}), ImportSettings(), tmp_path / "e")
    assert "pixel_size_um" in failure.reason and "'about 0.3'" in failure.reason


def test_imagej_units(tmp_path):
    pixel = tmp_path / "pixel.tif"
    tifffile.imwrite(pixel, np.ones((16, 16), np.uint16), imagej=True, resolution=(1 / 0.105, 1.0), metadata={"unit": "pixel"})
    (unit,), _ = import_source(Source("p", str(pixel)), ImportSettings(), tmp_path / "a")
    assert unit.pixel_size_um["x"] is None and "ImageJ unit 'pixel'" in unit.pixel_size_origin
    micron = tmp_path / "micron.tif"
    tifffile.imwrite(micron, np.ones((16, 16), np.uint16), imagej=True, resolution=(1 / 0.2, 1 / 0.25), metadata={"unit": "micron"})
    (unit,), _ = import_source(Source("m", str(micron)), ImportSettings(), tmp_path / "b")
    assert unit.pixel_size_um["x"] == pytest.approx(0.2) and unit.pixel_size_um["y"] == pytest.approx(0.25)
    assert unit.pixel_size_origin.startswith("ImageJ") and unit.warnings == []


def test_impossible_sizes_from_a_reader_are_not_believed(tmp_path):
    path = write_ome(tmp_path / "odd.ome.tif", [np.ones((1, 16, 16), np.uint16)], "CYX", pixel=5000.0)
    (unit,), _ = import_source(Source("o", str(path)), ImportSettings(), tmp_path / "a")
    assert unit.pixel_size_um["x"] is None and "not believed" in unit.pixel_size_origin and unit.warnings


def test_real_metamorph_tiffs_carry_their_calibration(tmp_path):
    needs_shared(NUCLEI)
    files = sorted((NUCLEI / "bbbc039" / "images").glob("*.tif"))
    assert len(files) >= 10
    doc = import_batch("b0000", [Source(f"f{i}", str(f)) for i, f in enumerate(files)], ImportSettings(), tmp_path / "a")
    assert doc["failures"] == [] and len(doc["units"]) == len(files)
    for unit in doc["units"]:  # 0.645 µm in the MetaMorph tags; the 72-dpi resolution tags would say 352.8 µm
        assert unit["pixel_size_um"]["x"] == pytest.approx(0.645) and unit["pixel_size_um"]["y"] == pytest.approx(0.645)
        assert unit["pixel_size_origin"] == "MetaMorph calibration tags" and unit["warnings"] == []
        assert unit["channel_names"] == ["DAPI"]  # MetaMorph's own channel name, so model.channels: [DAPI] works
    # DSB2018 files carry no calibration at all: imported in pixels, each with its warning
    dsb = sorted((NUCLEI / "dsb2018" / "images").glob("*.tif"))[:2]
    doc = import_batch("b0001", [Source(f"d{i}", str(f)) for i, f in enumerate(dsb)], ImportSettings(), tmp_path / "b")
    assert all(u["pixel_size_um"]["x"] is None and len(u["warnings"]) == 1 for u in doc["units"])


def test_identical_colour_samples_are_refused_and_grey_rgb_is_one_channel(tmp_path):
    from snakescope.stages.acquisition import check_samples

    grey = np.random.default_rng(0).integers(0, 255, (20, 30), dtype=np.uint8)
    copies = np.stack([grey] * 3 * 7)  # 7 channels, R = G = B in each: what bioio-czi 3.0.1 returns for RGB CZI
    names = [f"C{c}:{s}" for c in range(7) for s in "RGB"]
    with pytest.raises(ValueError, match="identical R, G and B samples in all 7 channels"):
        check_samples(copies, names, {"rgb": "channels"}, Path("x.czi"))
    array, kept, note = check_samples(copies[:3], names[:3], {"rgb": "channels"}, Path("x.tif"))
    assert array.shape == (1, 20, 30) and kept == ["C0"] and "one grey channel" in note
    colour = np.stack([grey, grey // 2, grey])
    array, kept, note = check_samples(colour, names[:3], {"rgb": "channels"}, Path("x.tif"))
    assert array.shape == (3, 20, 30) and note is None
    # through import: a grey image saved as RGB
    path = tmp_path / "grey.tif"
    tifffile.imwrite(path, np.stack([grey] * 3, -1), photometric="rgb")
    (unit,), _ = import_source(Source("g", str(path)), ImportSettings(default_pixel_size_um=1.0), tmp_path / "a")
    assert unit.shape == [1, 20, 30] and any("one grey channel" in w for w in unit.warnings)


def test_png_and_jpeg_as_the_data_science_bowl_distributes_them(tmp_path):
    """The Data Science Bowl's nuclei come as RGBA PNGs with R = G = B and an opaque alpha: one grey channel,
    uncalibrated (with the message), equal to the pixels; a varying alpha stays a channel; JPEG says it is lossy."""
    from PIL import Image

    needs_shared(NUCLEI)
    grey = tifffile.imread(sorted((NUCLEI / "dsb2018" / "images").glob("*.tif"))[0])
    grey = grey if grey.ndim == 2 else grey[..., 0]
    grey = np.asarray(grey, np.uint8)
    opaque = np.full_like(grey, 255)
    Image.fromarray(np.dstack([grey, grey, grey, opaque])).save(tmp_path / "dsb.png")
    Image.fromarray(np.dstack([grey, opaque])).save(tmp_path / "la.png")
    ramp = (np.arange(grey.size).reshape(grey.shape) % 200).astype(np.uint8)
    Image.fromarray(np.dstack([grey, grey // 2, grey, ramp])).save(tmp_path / "varying.png")
    Image.fromarray(grey).save(tmp_path / "dsb.jpg", quality=95)
    doc = import_batch("b0000", [Source(p.stem + p.suffix[1:], str(tmp_path / p)) for p in
                                 (Path("dsb.png"), Path("la.png"), Path("varying.png"), Path("dsb.jpg"))],
                       ImportSettings(), tmp_path / "out")
    assert not doc["failures"]
    rgba, la, varying, jpeg = doc["units"]
    for unit in (rgba, la):
        assert unit["shape"] == [1, *grey.shape] and unit["pixel_size_um"]["x"] is None
        assert np.array_equal(read_unit(unit["image_path"])[0], grey)
        assert any("no usable pixel size" in w for w in unit["warnings"])
    assert any("one grey channel" in w for w in rgba["warnings"])
    assert [n.rsplit(":", 1)[1] for n in varying["channel_names"]] == ["R", "G", "B", "alpha"]
    assert np.array_equal(read_unit(varying["image_path"])[3], ramp)
    assert jpeg["shape"] == [1, *grey.shape] and any("lossy" in w for w in jpeg["warnings"])
    assert np.abs(read_unit(jpeg["image_path"])[0].astype(int) - grey).mean() < 3


def test_a_stain_exported_in_one_colour_imports_as_that_channel(tmp_path):
    """Real nuclei exported as an RGB TIFF and PNG with the stain in blue and red and green blank (as "RGB Color"
    exports of a DAPI channel are): one channel, the blue sample, so ``model.channels: [0]`` is the stain; a
    two-colour composite keeps its three samples."""
    from PIL import Image

    needs_shared(NUCLEI)
    grey = tifffile.imread(sorted((NUCLEI / "bbbc039" / "images").glob("*.tif"))[0]).astype(np.float32)
    grey = np.clip(grey / np.percentile(grey, 99.9) * 255, 0, 255).astype(np.uint8)
    blue = np.zeros((*grey.shape, 3), np.uint8)
    blue[..., 2] = grey
    tifffile.imwrite(tmp_path / "blue.tif", blue, photometric="rgb")
    Image.fromarray(blue).save(tmp_path / "blue.png")
    composite = blue.copy()
    composite[..., 1] = grey[:, ::-1] // 2
    tifffile.imwrite(tmp_path / "composite.tif", composite, photometric="rgb")
    doc = import_batch("b0000", [Source(name, str(tmp_path / name)) for name in ("blue.tif", "blue.png", "composite.tif")],
                       ImportSettings(), tmp_path / "out")
    assert not doc["failures"]
    *blues, mixed = doc["units"]
    for unit in blues:
        assert [n.rsplit(":", 1)[1] for n in unit["channel_names"]] == ["B"]
        assert np.array_equal(read_unit(unit["image_path"])[0], grey)
        assert any("R and G samples are blank" in w for w in unit["warnings"])
    assert [n.rsplit(":", 1)[1] for n in mixed["channel_names"]] == ["R", "G", "B"]


def test_leica_frame_axes():
    from snakescope.stages.acquisition import frame_axes

    assert frame_axes(("T", "λ", "Z", "Y", "X")) == ("Y", "X")
    assert frame_axes(("Z", "X")) == ("Z", "X")  # an XZ scan: imported with Z as rows
    assert frame_axes(("T", "X")) is None  # a line scan over time is not an image in space
    assert frame_axes(("Y", "C", "Z", "X")) == ("Z", "X")  # an XZY scan: XZ frames stepped along Y


@pytest.mark.parametrize("z", ["max", "plane", "per_plane"])
def test_large_tiff_planes_are_copied_a_strip_at_a_time_with_the_same_pixels(tmp_path, monkeypatch, z):
    """A large (here: over 512 px) ZCYX OME-TIFF and a plain TIFF: the units come out tiled, with the pixels, channel
    names, pixel size and selections the whole-plane import gives."""
    from snakescope.core import blocks

    rng = np.random.default_rng(0)
    stack = rng.integers(0, 4000, (3, 2, 1100, 900)).astype(np.uint16)  # Z C Y X
    tifffile.imwrite(tmp_path / "zcyx.ome.tif", stack, tile=(256, 256),
                     metadata={"axes": "ZCYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "Channel": {"Name": ["DAPI", "GFP"]}})
    tifffile.imwrite(tmp_path / "plain.tif", stack[0, 0], photometric="minisblack")
    sources = [Source(sample_id="s", path=str(tmp_path / "zcyx.ome.tif"), metadata={}),
               Source(sample_id="p", path=str(tmp_path / "plain.tif"), metadata={})]
    settings = ImportSettings(z=z, z_plane=2)
    whole = import_batch("b", sources[:1], settings, tmp_path / "whole")
    monkeypatch.setattr(blocks, "LARGE_SIDE", 512)
    streamed = import_batch("b", sources, settings, tmp_path / "streamed")
    assert len(streamed["units"]) == len(whole["units"]) + (0 if z == "plane" else 1)
    for before, after in zip(whole["units"], streamed["units"]):
        for key in ("unit_id", "shape", "dtype", "channel_names", "pixel_size_um", "selection"):
            assert after[key] == before[key], key
        assert np.array_equal(read_unit(after["image_path"]), read_unit(before["image_path"]))
        with tifffile.TiffFile(after["image_path"]) as tif:
            assert tif.pages[0].is_tiled and not tifffile.TiffFile(before["image_path"]).pages[0].is_tiled
    plain = [u for u in streamed["units"] if u["sample_id"] == "p"]
    if z != "plane":  # a one-plane file has no plane 2: the same failure as without streaming
        assert np.array_equal(read_unit(plain[0]["image_path"])[0], stack[0, 0])
    else:
        assert "z_plane=2" in streamed["failures"][0]["reason"]


def test_an_rgb_czi_imports_its_red_green_and_blue_samples_as_they_are(tmp_path):
    """A 3-channel Bgr24 CZI written by Zeiss's libCZI (pylibCZIrw), each sample a different real BBBC039 field: each
    channel's R, G and B come out as written, and equal what an independent reader (aicspylibczi, libCZI's other
    binding, whose sample axis is B, G, R) returns. bioio-czi 3.0.1 alone gives them in B, G, R order."""
    import aicspylibczi
    from pylibCZIrw import czi as pyczi

    images = FORMATS.parent / "nuclei" / "bbbc039" / "images"
    needs_shared(images)
    fields = [tifffile.imread(p) for p in sorted(images.glob("*.tif"))[:9]]
    fields = [(255 * f / f.max()).astype(np.uint8) for f in fields]
    rgb = {c: fields[3 * c : 3 * c + 3] for c in range(3)}  # channel -> its R, G, B samples
    path = tmp_path / "colour.czi"
    with pyczi.create_czi(str(path), exist_ok=True) as czi:
        for c in range(3):
            czi.write(data=np.stack(rgb[c][::-1], -1), plane={"C": c, "T": 0, "Z": 0}, scene=0)  # stored B, G, R
    (unit,), failures = import_source(Source("colour", str(path)), ImportSettings(default_pixel_size_um=0.5), tmp_path / "a")
    assert not failures
    array = read_unit(unit.image_path)
    assert array.shape == (9, 520, 696) and [n.rsplit(":", 1)[1] for n in unit.channel_names] == ["R", "G", "B"] * 3
    independent, dims = aicspylibczi.CziFile(str(path)).read_image()
    axes = [d for d, _ in dims]
    independent = np.moveaxis(independent, [axes.index("C"), axes.index("A")], [0, 1]).reshape(3, 3, -1, 520, 696)
    for c in range(3):
        for i in range(3):
            np.testing.assert_array_equal(array[3 * c + i], rgb[c][i])
            np.testing.assert_array_equal(array[3 * c + i], independent[c, 2 - i, 0])
    assert "pylibCZIrw" in unit.reader


def test_a_microscope_rgb_czi_from_a_reader_test_suite_imports_its_samples_as_the_file_holds_them(tmp_path):
    """A polarisation RGB CZI from a Zeiss microscope (aicspylibczi's public test file): 7 channels x R, G, B, each
    sample equal to what aicspylibczi (libCZI's other binding, sample axis B, G, R) reads, not three copies of one."""
    import aicspylibczi

    path = Path(__file__).parent / "data" / "zeiss" / "RGB-multichannel.czi"
    before = sha256_file(path)
    (unit,), failures = import_source(Source("polarisation", str(path)), ImportSettings(), tmp_path)
    assert failures == []
    array = read_unit(unit.image_path)
    assert array.shape == (21, 81, 147) and unit.dtype == "uint8"
    assert unit.channel_names[:3] == ["Bright:R", "Bright:G", "Bright:B"] and unit.channel_names[-1] == "Pol_75:B"
    assert unit.pixel_size_um["x"] == pytest.approx(2.95849, rel=1e-4)
    independent, dims = aicspylibczi.CziFile(str(path)).read_image()
    axes = [d for d, _ in dims]
    independent = np.moveaxis(independent, [axes.index("C"), axes.index("A")], [0, 1]).reshape(7, 3, 81, 147)
    for c in range(7):
        for i in range(3):
            np.testing.assert_array_equal(array[3 * c + i], independent[c, 2 - i])
    assert not np.array_equal(array[0], array[1]) and not np.array_equal(array[1], array[2])
    assert sha256_file(path) == before


def test_a_large_czi_mosaic_is_read_a_strip_of_rows_at_a_time(tmp_path, monkeypatch):
    """A CZI mosaic (tiles at offsets, 2 channels, 3 planes) larger than the (lowered) large side: copied strip by
    strip through pylibCZIrw's region reads, never a whole plane, with the pixels, names and pixel size of the
    whole-plane import."""
    from pylibCZIrw import czi as pyczi

    from snakescope.core import blocks
    from snakescope.core.blocks import TIFF_TILE

    rng = np.random.default_rng(1)
    stack = rng.integers(0, 4000, (2, 3, 1100, 900)).astype(np.uint16)  # C Z Y X
    path = tmp_path / "mosaic.czi"
    with pyczi.create_czi(str(path), exist_ok=True) as czi:
        for c in range(2):
            for z in range(3):
                for y in range(0, 1100, 400):
                    for x in range(0, 900, 350):
                        czi.write(data=stack[c, z, y:y + 400, x:x + 350], plane={"C": c, "Z": z, "T": 0}, location=(x, y), scene=0)
        czi.write_metadata(document_name="mosaic", channel_names={0: "DAPI", 1: "GFP"}, scale_x=0.5e-6, scale_y=0.5e-6, scale_z=2e-6)
    source = Source(sample_id="m", path=str(path), metadata={})
    for z in ("max", "plane"):
        settings = ImportSettings(z=z, z_plane=1)
        whole = import_batch("b", [source], settings, tmp_path / f"whole-{z}")
        heights: list[int] = []
        opened = pyczi.open_czi

        class Spy:
            def __init__(self, *args, **kwargs):
                self.czi = opened(*args, **kwargs)

            def __enter__(self):
                document = self.czi.__enter__()
                read = document.read

                def region(*args, roi=None, **kwargs):
                    assert roi is not None, "a whole plane was read"
                    heights.append(roi[3])
                    return read(*args, roi=roi, **kwargs)

                document.read = region
                return document

            def __exit__(self, *exc):
                return self.czi.__exit__(*exc)

        with monkeypatch.context() as patched:
            patched.setattr(blocks, "LARGE_SIDE", 512)
            patched.setattr(pyczi, "open_czi", Spy)
            streamed = import_batch("b", [source], settings, tmp_path / f"streamed-{z}")
        (before,), (after,) = whole["units"], streamed["units"]
        for key in ("unit_id", "shape", "dtype", "channel_names", "pixel_size_um", "selection"):
            assert after[key] == before[key], key
        assert before["channel_names"] == ["DAPI", "GFP"] and before["pixel_size_um"]["x"] == pytest.approx(0.5)
        expected = stack.max(axis=1) if z == "max" else stack[:, 1]
        assert np.array_equal(read_unit(after["image_path"]), expected)
        assert np.array_equal(read_unit(before["image_path"]), expected)
        assert heights and max(heights) <= TIFF_TILE and len(heights) == 2 * (3 if z == "max" else 1) * -(-1100 // TIFF_TILE)


def test_the_real_czi_read_by_strips_equals_its_whole_plane_read(tmp_path, monkeypatch):
    """The vendor CZI (its region sits at x=39856, y=39272 in the file's coordinates, no scenes) through the strip
    reader, with the large side lowered below its size: the same pixels and pixel size as bioio's read."""
    from snakescope.core import blocks

    needs_shared(FORMATS)
    source = Source(sample_id="c", path=str(FORMATS / "s_1_t_1_c_1_z_1.czi"), metadata={})
    (whole,) = import_batch("b", [source], ImportSettings(), tmp_path / "whole")["units"]
    monkeypatch.setattr(blocks, "LARGE_SIDE", 256)
    (strips,) = import_batch("b", [source], ImportSettings(), tmp_path / "strips")["units"]
    assert strips["shape"] == whole["shape"] == [1, 325, 475] and strips["pixel_size_um"] == whole["pixel_size_um"]
    assert np.array_equal(read_unit(strips["image_path"]), read_unit(whole["image_path"]))
    with tifffile.TiffFile(strips["image_path"]) as tif:
        assert tif.pages[0].is_tiled


def test_ome_xml_is_parsed_with_one_shared_binding_context_and_the_same_result(tmp_path):
    """Opening an OME-TIFF parses its OME-XML three times; one xsdata context per process (not one per parse) must
    give the same metadata as a parse with a fresh context, and stay in place with the installed ome-types."""
    import ome_types
    import ome_types._conversion as conversion
    from xsdata_pydantic_basemodel.bindings import XmlContext

    from snakescope.stages.acquisition import share_ome_binding_context
    from snakescope.core.images import write_ome_tiff

    path = tmp_path / "field.ome.tif"
    write_ome_tiff(path, np.arange(2 * 40 * 50, dtype=np.uint16).reshape(2, 40, 50), ["DAPI", "GFP"], {"x": 0.325, "y": 0.325})
    units, failures = import_source(Source("field", str(path), {}), ImportSettings(), tmp_path / "out")
    assert not failures and units[0].channel_names == ["DAPI", "GFP"] and units[0].pixel_size_um["x"] == pytest.approx(0.325)
    assert share_ome_binding_context()  # in place: a newer ome-types that builds its parser otherwise fails here
    assert conversion.XmlParser().context is conversion.XmlParser().context
    xml = tifffile.TiffFile(path).pages[0].description
    shared = ome_types.from_xml(xml)
    fresh = ome_types.from_xml(xml, parser_kwargs={"context": XmlContext()})
    assert shared.model_dump() == fresh.model_dump()
    assert [c.name for c in shared.images[0].pixels.channels] == ["DAPI", "GFP"]

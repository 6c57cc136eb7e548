"""The report stage without Snakemake: plots, acquisition actions, gallery images, escaping, and the page in Chromium."""

from __future__ import annotations

import base64
import io
import json
import re

import jsonschema
import numpy as np
import pytest

from browser import need_browser, open_page
from conftest import ROOT
from synthetic_results import write_synthetic_results

HOSTILE = "<script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\">&amp;\"'</textarea>"


def test_well_names_parse_and_others_are_refused():
    from snakescope.stages.report.plots import parse_well

    assert parse_well("A01") == (0, 1) and parse_well("h12") == (7, 12) and parse_well("P-24") == (15, 24)
    assert parse_well("AF48") == (31, 48)
    assert parse_well("") is None and parse_well("well 3") is None and parse_well("12") is None


def test_ticks_cover_the_range_with_round_steps():
    from snakescope.stages.report.plots import nice_ticks

    ticks = nice_ticks(0.013, 0.87)
    assert ticks[0] <= 0.013 and ticks[-1] >= 0.87 - 1e-9
    steps = {round(b - a, 9) for a, b in zip(ticks, ticks[1:])}
    assert len(steps) == 1 and steps.pop() in (0.1, 0.2, 0.25)


def test_plots_mark_flagged_units_and_escape_names():
    from snakescope.stages.report.plots import Point, plate_map, strip_plot

    svg = strip_plot({HOSTILE: [Point(1.0, "a"), Point(5.0, "b<x>", flagged=True)], "DMSO": [Point(2.0, "c")]},
                     "counts", "objects", threshold=3.0, threshold_label="warn 3")
    assert "<script" not in svg and "&lt;script&gt;" in svg and "b&lt;x&gt;" in svg
    assert svg.count("<circle") == 3 and len(re.findall(r"<circle[^>]*fill='#d62728'", svg)) == 1  # the flagged dot is red
    assert "stroke-dasharray" in svg  # threshold line
    plate = plate_map({("P1", "A01"): [(10.0, "pass")], ("P1", "B02"): [(30.0, "fail"), (20.0, "pass")],
                       ("P1", "C03"): [(12.0, "warn")], ("P1", "D04"): [(None, "failed_input")],
                       ("P1", "not a well"): [(1.0, "pass")]}, "plate", "objects")
    assert plate.count("stroke='#d62728' stroke-width='2.5'") == 2  # B02 holds a failed unit, D04 an unreadable file
    assert "P1 B02: objects 25 (2 unit(s), 1 failed review, 0 warned)" in plate
    assert plate.count("class='failed-input'") == 1 and "D04: objects n/a (1 unit(s), 0 failed review, 0 warned, 1 file(s)" in plate
    assert plate.count("stroke-dasharray='3,2'") == 1 and "C03: objects 12 (1 unit(s), 0 failed review, 1 warned)" in plate
    assert "no well names" in plate_map({("P1", "x"): [(1.0, "pass")]}, "plate", "objects")


def test_acquisition_actions_list_only_microscope_actions_and_match_their_schema():
    from snakescope.stages.report.tables import acquisition_actions

    def review(uid, verdict, *actions):
        return {"unit_id": uid, "verdict": verdict, "reviewer": {"backend": "deterministic", "name": "rules", "version": "1"},
                "issues": [{"type": "out_of_focus", "severity": verdict, "evidence": "soft edges"}] if verdict != "pass" else [],
                "suggested_actions": [{"action": a, "detail": f"do {a}"} for a in actions]}

    def unit(uid):
        return {"unit_id": uid, "sample_id": uid, "source_path": f"/d/{uid}.czi", "scene_index": 2, "scene_name": "S2",
                "selection": {"Z": "max"}, "metadata": {"well": "C07", "plate": "P3", "treatment": "DMSO"}}

    reviews = {r["unit_id"]: r for r in [review("a", "warn", "refocus", "refocus", "adjust_segmentation"),
                                         review("b", "pass", "none"), review("c", "warn", "adjust_segmentation"),
                                         review("d", "fail", "skip_field")]}
    doc = acquisition_actions([unit(u) for u in "abcde"], reviews, "screen")
    jsonschema.validate(doc, json.loads((ROOT / "workflow" / "schemas" / "acquisition_actions.schema.json").read_text()))
    assert [u["unit_id"] for u in doc["units"]] == ["d", "a"]  # fail first; pass, segmentation-only and unreviewed left out
    assert doc["units"][1]["actions"] == [{"action": "refocus", "detail": "do refocus", "decided_by": "measurements"}]
    assert doc["units"][0]["position"] == {"plate": "P3", "well": "C07"} and doc["units"][0]["scene_index"] == 2
    assert doc["counts"] == {"skip_field": 1, "refocus": 1}


def test_gallery_images_are_small_webp_with_outlines(demo_batch):
    from PIL import Image

    from snakescope.stages.report.gallery import gallery_batch
    from snakescope.core.settings import GallerySettings

    root = demo_batch["root"]
    final = {path.name.split(".")[0]: {"labels": str(path)} for path in (root / "segmentation").glob("*.labels.ome.tif")}
    doc = gallery_batch(root / "import" / "manifest.json", final, ("DAPI",), GallerySettings(thumbnail_px=128),
                        root / "gallery.json")
    assert len(doc["images"]) == 7  # every unit of the batch
    assert doc["failures"] == []
    for uid, images in doc["images"].items():
        assert images["thumbnail"].startswith("data:image/webp;base64,")
        raw = base64.b64decode(images["thumbnail"].split(",", 1)[1])
        thumb = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
        assert max(thumb.shape[:2]) <= 128 and len(raw) < 12_000, (uid, thumb.shape, len(raw))
        detail = Image.open(io.BytesIO(base64.b64decode(images["detail"].split(",", 1)[1])))
        assert detail.width > 1.9 * detail.height  # raw | outlined
        yellow = (thumb[..., 0] > 180) & (thumb[..., 1] > 150) & (thumb[..., 2] < 90)
        expected_objects = uid != "empty_01"
        assert yellow.any() == expected_objects, uid  # outlines drawn where objects were segmented


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory, demo_dir):
    from snakescope.stages.report.page import write_report
    from snakescope.core.settings import ReportSettings

    root = tmp_path_factory.mktemp("hostile")
    paths = write_synthetic_results(root, 6, sorted((demo_dir / "images").glob("ctrl_*.ome.tif")), batch_size=4,
                                    hostile=HOSTILE, llm=True)
    out = root / "report" / "report.html"
    write_report(paths["tables"], paths["plots"], paths["gallery"], paths["model_check"], paths["pipeline_info"],
                 f"screen {HOSTILE}", out, ReportSettings(page_size=25))
    return out


def test_user_and_model_strings_are_escaped_in_the_page_source(hostile_report):
    page = hostile_report.read_text()
    assert "<script>window.__pwned" not in page and "<img src=x" not in page
    assert page.count("<script") == 2  # the data block and the page's own script, nothing else
    data = re.search(r"<script type='application/json' id='report-data'>(.*?)</script>", page, re.S).group(1)
    assert "</" not in data and "<" not in data
    decoded = json.loads(data)
    assert decoded["units"][0]["meta_notes"] == HOSTILE  # the data itself is intact, only encoded
    assert decoded["details"]["u00000"]["summary"].startswith(HOSTILE)
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in page  # static sections show it as text


def test_hostile_strings_show_as_text_in_chromium(hostile_report):
    need_browser()
    with open_page(hostile_report) as (page, problems):
        assert page.evaluate("window.__pwned") is None, "markup from the data was executed"
        assert HOSTILE in page.locator("#units tbody").inner_text()  # sample-sheet text in the table
        assert HOSTILE in page.locator("blockquote").first.inner_text()  # the LLM-written narrative
        assert HOSTILE in page.locator("#failures").inner_text()  # a reader's error message
        page.locator("#gallery .card").first.click()
        assert HOSTILE in page.locator("#detail").inner_text()  # the LLM's review in the detail view
        assert page.evaluate("window.__pwned") is None
        assert page.locator("#units img, #detail-body img[src^='x']").count() == 0
    assert problems == []


def test_paging_sorting_and_filtering_reach_every_unit(tmp_path, demo_dir):
    need_browser()
    from snakescope.stages.report.page import write_report
    from snakescope.core.settings import ReportSettings

    paths = write_synthetic_results(tmp_path, 230, sorted((demo_dir / "images").glob("ctrl_*.ome.tif")))
    out = tmp_path / "report.html"
    write_report(paths["tables"], paths["plots"], paths["gallery"], paths["model_check"], paths["pipeline_info"], "screen",
                 out, ReportSettings(page_size=50, detail_images_max_units=100))
    with open_page(out) as (page, problems):
        rows = page.locator("#units tbody tr")
        assert rows.count() == 50 and page.locator("#gallery .card").count() == 50
        seen = set()
        for index in range(5):  # page through the gallery with its own pager: 5 pages of 50
            seen |= set(page.locator("#gallery .card").evaluate_all("cards => cards.map(c => c.dataset.unit)"))
            if index < 4:
                page.locator("#gallery-pager button", has_text="›").click()
        assert page.locator("#gallery-pager button", has_text="›").is_disabled()
        assert len(seen) == 230
        page.locator("#units th[data-key='object_count']").click()
        column = page.locator("#units th").evaluate_all("hs => hs.map(h => h.dataset.key)").index("object_count") + 1
        counts = [int(t) for t in page.locator(f"#units tbody tr td:nth-child({column})").all_inner_texts() if t != "n/a"]
        assert counts == sorted(counts)
        page.fill("#unit-filter", "staurosporine")
        assert "of 57" in page.locator("#units .pager .range").inner_text()  # every 4th of 230
        assert page.locator("#gallery .card").count() == 50
        page.select_option("#verdict-filter", "fail")
        n_fail = page.locator("#units .pager .range").inner_text()
        assert all(t == "fail" for t in page.locator("#units tbody td.v").all_inner_texts()), n_fail
        page.locator("#gallery .card").first.click()
        assert "full overlay is" in page.locator("#detail").inner_text()  # 230 > 100: no embedded detail image
    assert problems == []


def test_compute_time_counts_only_this_runs_batches(tmp_path):
    from snakescope.stages.report.page import stage_timings

    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for rule, name, seconds, rss in [("infer", "b0000", 10.5, 900.0), ("infer", "b0001", 4.5, 1200.5),
                                     ("infer", "b0099", 100.0, 5000.0), ("tables", "run", 1.25, "-")]:
        (tmp_path / rule).mkdir(exist_ok=True)
        (tmp_path / rule / f"{name}.tsv").write_text(header + f"{seconds}\t0:00:10\t{rss}\t1\t1\t1\t0\t0\t50\t9\n")
    timings = stage_timings(tmp_path, ["b0000", "b0001"])  # b0099 is left over from an earlier sample sheet
    assert timings == [{"rule": "infer", "jobs": 2, "seconds": 15.0, "cpu_s": 18.0, "peak_rss_mb": 1200.5},
                       {"rule": "tables", "jobs": 1, "seconds": 1.2, "cpu_s": 9.0, "peak_rss_mb": 0.0}]


def test_plates_take_the_smallest_standard_format_and_sit_side_by_side():
    from snakescope.stages.report.plots import plate_format, plate_map

    assert plate_format([(0, 1), (7, 12)]) == (8, 12)
    assert plate_format([(0, 1), (8, 3)]) == (16, 24)  # row I needs a 384-well plate
    assert plate_format([(20, 40)]) == (32, 48)
    wells = {(f"P{p}", f"{chr(65 + r)}{c:02d}"): [(float(r * c), "pass")] for p in range(4) for r in range(16) for c in range(1, 25)}
    svg = plate_map(wells, "plates", "objects", max_width=1400)
    width, height = (int(v) for v in re.search(r"viewBox='0 0 (\d+) (\d+)'", svg).groups())
    assert width <= 1400 and height < 700  # 4 plates of 384 wells (~280 px each) on two rows, not a column of four
    assert svg.count("<title>P3 P16: objects") == 1 and "fill='#f4f4f4'" not in svg  # every well has data


def test_refinement_is_described_in_one_line():
    from snakescope.stages.report.page import refinement_line

    line = refinement_line({"applied": True, "direction": "split more", "target_count": 31, "attempts": [{}, {}],
                            "best_settings": {"split_min_distance": 0.3}})
    assert line == "applied: split more towards 31 objects, 2 attempt(s); kept split_min_distance 0.3"
    assert refinement_line({"applied": False, "direction": "split less", "target_count": 9, "attempts": [{}]}).startswith(
        "not applied (no attempt beat the original): split less towards 9 objects, 1 attempt(s)")
    assert refinement_line(None) is None


def test_uncalibrated_runs_plot_diameters_in_pixels_and_say_so(tmp_path):
    """A run without pixel sizes: the diameter plot uses pixels, labelled; the narrative names no µm value."""
    from snakescope.stages.report.summary import rules_summary
    from snakescope.stages.report.plots import write_plots

    (tmp_path / "units.csv").write_text("unit_id,meta_treatment,object_count,verdict,issues\nu1,DMSO,2,pass,\n")
    (tmp_path / "objects.csv").write_text("unit_id,label,equivalent_diameter_px,equivalent_diameter_um\nu1,1,20.5,\nu1,2,22.0,\n")
    write_plots(tmp_path, tmp_path / "plots", "treatment", {})
    svg = (tmp_path / "plots" / "diameters_by_condition.svg").read_text()
    assert "equivalent diameter (px, no pixel size)" in svg and "no objects to plot" not in svg
    text = rules_summary({"units": 1, "failed_inputs": 0, "verdicts": {"pass": 1}, "issues": {},
                          "conditions": {"DMSO": {"units": 1, "median_count": 2, "median_diameter_um": None}}})
    assert "None" not in text and "no pixel size" in text


def test_nan_and_infinite_values_never_break_the_page(tmp_path, demo_dir):
    """NaN/inf metrics (a float image with bad pixels, a division by zero upstream) reach the tables as text; the
    page's JSON holds null for them, the page draws every table, and the cells say n/a."""
    need_browser()
    import csv

    from snakescope.stages.report.page import write_report
    from snakescope.core.settings import ReportSettings

    paths = write_synthetic_results(tmp_path, 8, sorted((demo_dir / "images").glob("ctrl_*.ome.tif")))
    units_csv = paths["tables"] / "units.csv"
    with open(units_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows[0].update(snr="nan", blur="inf", diameter_um_median="-inf")
    with open(units_csv, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "report.html"
    write_report(paths["tables"], paths["plots"], paths["gallery"], paths["model_check"], paths["pipeline_info"], "screen",
                 out, ReportSettings())
    data = re.search(r"<script type='application/json' id='report-data'>(.*?)</script>", out.read_text(), re.S).group(1)
    assert "NaN" not in data and "Infinity" not in data
    first = json.loads(data)["units"][0]
    assert first["snr"] is None and first["blur"] is None
    with open_page(out) as (page, problems):
        assert page.evaluate("window.snakescopeReport.units") == 8
        assert page.locator("#units tbody tr").count() == 8 and page.locator("#gallery .card").count() == 8
        row = page.locator("#units tbody tr").first.inner_text()
        assert "n/a" in row
        failures = len(json.loads(data)["failures"])
        assert f"Failed inputs and steps ({failures})" in page.locator("#failures h2").inner_text()
        assert page.locator("#failures tbody tr").count() == failures
    assert problems == []


def test_json_records_hold_null_for_nan(tmp_path):
    import numpy as np

    from snakescope.core.records import read_json, write_json

    write_json(tmp_path / "m.json", {"snr": float("nan"), "v": [np.float32("inf"), 1.5], "a": np.array([np.nan, 2.0])})
    assert read_json(tmp_path / "m.json") == {"snr": None, "v": [None, 1.5], "a": [None, 2.0]}


def test_plots_use_log_axes_for_decades_and_say_what_they_leave_out():
    from snakescope.stages.report.plots import Point, histogram_plot, strip_plot

    snr = strip_plot({"DMSO": [Point(v, f"u{i}") for i, v in enumerate([8, 12, 15, 20, 746])]}, "SNR", "SNR", 12.0, "warn 12",
                     x_label="treatment")
    assert "SNR (log scale)" in snr and ">treatment<" in snr
    ys = sorted(float(m) for m in re.findall(r"<circle cx='[\d.]+' cy='([\d.]+)'", snr))
    assert ys[-1] - ys[-2] > 10  # 8 and 12 are apart (a linear axis to 746 puts them 1 px apart)
    linear = strip_plot({"DMSO": [Point(v, f"u{i}") for i, v in enumerate([8, 12, 15, 20, 40])]}, "SNR", "SNR")
    assert "log scale" not in linear
    foreground = strip_plot({"DMSO": [Point(v, f"u{i}") for i, v in enumerate([0.0, 0.0004, 0.2, 0.3, 0.5])]}, "fg", "fraction",
                            0.002, "empty 0.002")
    threshold_y = float(re.search(r"<line x1='\d+' x2='\d+' y1='([\d.]+)'[^>]*stroke-dasharray", foreground).group(1))
    assert 40 < threshold_y < 250  # the 0.002 line sits inside the plot, away from the edges
    assert "1 value(s) ≤ 0" in foreground
    hist = histogram_plot({"DMSO": [10.0] * 300 + [11.0] * 300 + [500.0]}, "d", "µm")
    assert "above" in hist and re.search(r"beyond the axis: \d+ below [\d.]+, [1-9]\d* above", hist)


OVERFLOW_JS = """() => {
  const problems = [];
  for (const svg of document.querySelectorAll("figure svg")) {
    const name = svg.closest("figure").id;
    const frame = svg.getBoundingClientRect();
    const boxes = [...svg.querySelectorAll("text")].map(t => ({text: t.textContent.slice(0, 90), box: t.getBoundingClientRect()}));
    for (const {text, box} of boxes) {
      if (box.left < frame.left - 0.5 || box.top < frame.top - 0.5 || box.right > frame.right + 0.5 || box.bottom > frame.bottom + 0.5)
        problems.push(`${name}: '${text}' runs outside the plot`);
    }
    for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
      const a = boxes[i].box, b = boxes[j].box;
      const w = Math.min(a.right, b.right) - Math.max(a.left, b.left), h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
      if (w > 1 && h > 1) problems.push(`${name}: '${boxes[i].text}' overlaps '${boxes[j].text}'`);
    }
  }
  return problems;
}"""


def test_no_plot_text_runs_outside_its_plot_or_over_other_text(tmp_path, demo_dir):
    """Every text of every plot, measured in Chromium: inside the plot's box and clear of the other texts (issue 30: titles
    cut at the right edge, the diameter plot's note over its title, the plate map's legend cut)."""
    need_browser()
    from snakescope.core.settings import ReportSettings
    from snakescope.stages.report.page import write_report

    paths = write_synthetic_results(tmp_path, 40, sorted((demo_dir / "images").glob("ctrl_*.ome.tif")))
    out = tmp_path / "report.html"
    write_report(paths["tables"], paths["plots"], paths["gallery"], paths["model_check"], paths["pipeline_info"], "screen",
                 out, ReportSettings())
    artifacts = ROOT / "tests" / "artifacts"
    artifacts.mkdir(exist_ok=True)
    with open_page(out) as (page, problems):
        figures = page.locator("figure svg")
        assert figures.count() >= 5
        found = page.evaluate(OVERFLOW_JS)
        page.locator("#plots").screenshot(path=str(artifacts / "report-plots.png"))
    assert found == [], "\n".join(found)
    assert problems == []


def test_ome_zarr_of_a_large_field_is_a_chunked_pyramid_and_an_uncalibrated_unit_has_no_unit(tmp_path):
    """A 3000 x 2200 field: levels down to ~256 px (image and labels alike), 1024 px chunks, streamed from the OME-TIFF;
    a unit without a pixel size gets no physical unit (never a made-up µm), and a unit outside any well its own store."""
    import numpy as np
    import zarr
    from ome_zarr_models.v05.image import Image

    from snakescope.core.images import write_labels, write_ome_tiff
    from snakescope.stages.report.ome_zarr import write_ome_zarr

    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000, (2, 3000, 2200), dtype=np.uint16)
    labels = np.zeros((3000, 2200), np.uint16)
    labels[100:140, 200:260] = 1
    units = []
    for uid, size in (("big 1/2", {"y": 0.325, "x": 0.325}), ("nosize", {})):
        path = tmp_path / f"{uid.replace(' ', '_').replace('/', '_')}.ome.tif"
        write_ome_tiff(path, image, ["DAPI", "GFP"], size)
        units.append({"unit_id": uid, "image_path": str(path), "channel_names": ["DAPI", "GFP"], "pixel_size_um": size,
                      "metadata": {}, "selection": {"z": "max", "t": 0}, "source_dims": {"Z": 7}})
        write_labels(path.with_name(path.name.replace(".ome.tif", ".labels.ome.tif")), labels, units[-1])
    stores = write_ome_zarr(units, {u["unit_id"]: u["image_path"].replace(".ome.tif", ".labels.ome.tif") for u in units},
                            tmp_path / "zarr", plate_column="plate", well_column="well", dataset="d")
    assert [s.name for s in stores] == ["big_1_2.ome.zarr", "nosize.ome.zarr"]  # names are data, made safe
    big = zarr.open_group(stores[0], mode="r")
    Image.from_zarr(big)
    assert [big[f"s{i}"].shape for i in range(4)] == [(2, 3000, 2200), (2, 1500, 1100), (2, 750, 550), (2, 375, 275)]
    assert big["s0"].chunks == (1, 1024, 1024) and big["labels/nuclei/s3"].shape == (375, 275)
    assert np.array_equal(big["s0"][:, :64, :64], image[:, :64, :64]) and big["labels/nuclei/s0"][120, 230] == 1
    meta = big.attrs.asdict()
    assert meta["snakescope"]["plane"] == "maximum-intensity projection of 7 Z planes"
    assert [c["label"] for c in meta["ome"]["omero"]["channels"]] == ["DAPI", "GFP"]
    axes = meta["ome"]["multiscales"][0]["axes"]
    assert axes[1]["unit"] == "micrometer" and meta["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"][1:] == [0.325, 0.325]
    bare = zarr.open_group(stores[1], mode="r").attrs.asdict()["ome"]["multiscales"][0]
    assert all("unit" not in a for a in bare["axes"]) and bare["datasets"][0]["coordinateTransformations"][0]["scale"][1:] == [1.0, 1.0]

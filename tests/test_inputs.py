from pathlib import Path

import pytest

from snakescope.core.inputs import InputError, batches, read_sample_sheet, safe_id, sources_from_globs


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_sample_sheet_keeps_metadata_and_resolves_relative_paths(tmp_path):
    write(tmp_path / "img" / "a.tif", "x")
    sheet = write(tmp_path / "s.tsv", "sample_id\tpath\ttreatment\tcell_line\nA1\timg/a.tif\tDMSO 0.1%\tHeLa\n")
    (src,) = read_sample_sheet(sheet)
    assert src.sample_id == "A1"
    assert Path(src.path) == tmp_path / "img" / "a.tif"
    assert src.metadata == {"treatment": "DMSO 0.1%", "cell_line": "HeLa"}


def test_sample_sheet_glob_row_yields_one_source_per_file(tmp_path):
    for name in ("f1.tif", "f2.tif"):
        write(tmp_path / "img" / name, "x")
    sheet = write(tmp_path / "s.tsv", "sample_id\tpath\nplate1\timg/*.tif\n")
    assert [s.sample_id for s in read_sample_sheet(sheet)] == ["plate1-f1.tif", "plate1-f2.tif"]


def test_missing_file_is_named(tmp_path):
    sheet = write(tmp_path / "s.tsv", "sample_id\tpath\nA1\tnope.tif\n")
    with pytest.raises(InputError, match="nope.tif"):
        read_sample_sheet(sheet)


def test_missing_column_and_sheet_are_named(tmp_path):
    sheet = write(tmp_path / "s.tsv", "id\tfile\nA1\tx.tif\n")
    with pytest.raises(InputError, match="lacks column"):
        read_sample_sheet(sheet)
    with pytest.raises(InputError, match="config key 'samples'"):
        read_sample_sheet(tmp_path / "absent.tsv")


def test_duplicate_ids_and_empty_inputs_are_errors(tmp_path):
    write(tmp_path / "a.tif", "x")
    sheet = write(tmp_path / "s.tsv", "sample_id\tpath\nA\ta.tif\nA\ta.tif\n")
    with pytest.raises(InputError, match="duplicate sample id"):
        read_sample_sheet(sheet)
    with pytest.raises(InputError, match="no file matches"):
        sources_from_globs([str(tmp_path / "*.czi")])


def test_globs_and_batches(tmp_path):
    for i in range(5):
        write(tmp_path / f"img {i}.tif", "x")
    sources = sources_from_globs(["*.tif"], base=tmp_path)
    assert [s.sample_id for s in sources] == [f"img_{i}.tif" for i in range(5)]
    grouped = batches(sources, 2)
    assert list(grouped) == ["b0000", "b0001", "b0002"]
    assert [len(v) for v in grouped.values()] == [2, 2, 1]
    assert safe_id("a/b c:d") == "a_b_c_d"


def test_a_malformed_sample_sheet_names_the_sheet_line_and_column(tmp_path):
    write(tmp_path / "a.tif", "x")
    header = "sample_id\tpath\tnotes\n# a comment line\n"
    cases = {
        "huge.tsv": (header + "A\ta.tif\t" + "x" * 200_000 + "\n", "line 3"),  # beyond the csv module's field limit
        "long.tsv": (header + "A\ta.tif\t" + "x" * 20_000 + "\n", "line 3, column 'notes': a cell of 20,000 characters"),
        "extra.tsv": (header + "A\ta.tif\tok\t\t\nB\ta.tif\tok\tsurplus\n", "line 4: more cells than columns"),
    }
    for name, (text, expected) in cases.items():
        with pytest.raises(InputError) as err:
            read_sample_sheet(write(tmp_path / name, text))
        assert str(tmp_path / name) in str(err.value) and expected in str(err.value), str(err.value)
    (tmp_path / "latin.tsv").write_bytes(b"sample_id\tpath\tnotes\nA\ta.tif\t\xe9t\xe9\n")
    with pytest.raises(InputError, match="not UTF-8"):
        read_sample_sheet(tmp_path / "latin.tsv")

"""The first uses a long-lived process pays before its work (watch mode)."""

from __future__ import annotations

import gc
import subprocess
import sys

from conftest import ROOT
from snakescope.core.images import read_unit
from snakescope.watch import first_reads, first_segmentation


def test_first_reads_import_both_tiff_kinds_and_first_segmentation_writes_what_the_stage_writes(tmp_path):
    units = first_reads(tmp_path)
    assert [u["reader"].split("(")[1].rstrip(")") for u in units] == ["bioio_ome_tiff", "bioio_tifffile"]
    image = read_unit(units[0]["image_path"])[0]
    assert image.max() == 100
    first_segmentation(image, folder=tmp_path, gallery=True)
    assert (tmp_path / "warm-up.labels.ome.tif").is_file() and (tmp_path / "warm-up.overlay.png").is_file()
    assert read_unit(tmp_path / "warm-up.labels.ome.tif").max() == 1  # the one bright square, one object


def test_freeze_heap_takes_the_objects_out_of_later_collections():
    """In a process of its own (a freeze is for the rest of a process's life): everything tracked is frozen, and
    objects made afterwards are collected as usual."""
    script = (
        "import gc\n"
        "from snakescope.watch import freeze_heap\n"
        "frozen = freeze_heap()\n"
        "class Cycle: pass\n"
        "a = Cycle(); a.me = a; del a\n"
        "print(frozen, gc.get_freeze_count() == frozen, gc.collect() >= 1)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(ROOT / "workflow"), "PATH": ""})
    assert result.returncode == 0, result.stderr
    frozen, same, collected = result.stdout.split()
    assert int(frozen) > 1000 and same == "True" and collected == "True"
    assert gc.get_freeze_count() == 0  # the test process itself is left as it was

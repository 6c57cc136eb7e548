"""Dry run (`snakemake -n --profile profiles/slurm`) on generated input sets of up to 10,000 image units.

    python bench/dryrun_scale.py [--sizes 1000 5000 10000] [--batch-size 50]

A dry run reads no image, so the inputs are small placeholder files. Prints the wall time and the
number of planned jobs per size, and the time ratio against the smallest set (target: < 60 s at 10,000).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--batch-size", type=int, default=50)
    args = parser.parse_args()
    first = None
    for n in args.sizes:
        work = Path(tempfile.mkdtemp(prefix=f"snakescope-dry{n}-"))
        (work / "images").mkdir()
        rows = ["sample_id\tpath\ttreatment\tcell_line"]
        for i in range(n):
            (work / "images" / f"f{i:05d}.ome.tif").write_bytes(b"placeholder")
            rows.append(f"f{i:05d}\timages/f{i:05d}.ome.tif\tDMSO\tHeLa")
        (work / "samples.tsv").write_text("\n".join(rows) + "\n")
        model = work / "model.yaml"
        model.write_text("placeholder")
        config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
        config.update(samples=str(work / "samples.tsv"), batch_size=args.batch_size)
        config["model"]["source"] = str(model)
        config["review"]["knowledge_base"] = str(ROOT / "config" / "knowledge_base.yaml")
        (work / "config.yaml").write_text(yaml.safe_dump(config))
        t0 = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(work),
                                 "--configfile", str(work / "config.yaml"), "--profile", str(ROOT / "profiles" / "slurm"), "-n"],
                                capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if result.returncode:
            sys.exit(result.stdout[-2000:] + result.stderr[-2000:])
        jobs = re.search(r"^total\s+(\d+)", result.stdout, re.M).group(1)
        first = first or seconds
        print(f"{n:6d} units, batch_size {args.batch_size}: {jobs:>5s} jobs planned, dry run {seconds:5.1f} s "
              f"(x{seconds / first:.2f} of the smallest set)")


if __name__ == "__main__":
    main()

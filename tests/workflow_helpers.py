"""Run the real Snakemake on the real Snakefile from a temporary working directory."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT


def write_config(workdir: Path, demo_dir: Path, **overrides) -> Path:
    config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    config["samples"] = str(workdir / "samples.tsv")
    config["model"]["source"] = str(demo_dir / "model" / "bioimageio.yaml")
    config["review"]["knowledge_base"] = str(ROOT / "config" / "knowledge_base.yaml")
    config["cache_dir"] = str(workdir / "cache")
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        if name:
            config.setdefault(section, {})[name] = value
        else:
            config[section] = value
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake(workdir: Path, *args: str, configfile: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile or workdir / "config.yaml"), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def planned_jobs(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    table = output.split("Job stats:", 1)[1]
    jobs = {}
    for line in table.splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        jobs[match.group(1)] = int(match.group(2))
    jobs.pop("total", None)
    return jobs


def report_zip_text(workdir: Path, configfile: Path | None = None) -> tuple[list[str], str]:
    """Run `snakemake --report report.zip`; return the zip's file names and the text of its report page."""
    import zipfile

    result = snakemake(workdir, "--report", str(workdir / "report.zip"), configfile=configfile)
    assert result.returncode == 0, result.stderr[-3000:]
    with zipfile.ZipFile(workdir / "report.zip") as archive:
        names = archive.namelist()
        page = next(n for n in names if n.endswith("/report.html") and "/data/" not in n)
        return names, archive.read(page).decode("utf-8")

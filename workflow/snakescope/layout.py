"""Where things are: the project's own files (schemas, environments, the Snakefile) and the results folder's layout,
named once here for the stages, watch mode and the tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
WORKFLOW_DIR = PACKAGE_DIR.parent
PROJECT_DIR = WORKFLOW_DIR.parent
SCHEMAS_DIR = WORKFLOW_DIR / "schemas"
ENVS_DIR = WORKFLOW_DIR / "envs"
SNAKEFILE = WORKFLOW_DIR / "Snakefile"


def schema_path(name: str) -> Path:
    """A JSON schema shipped with the workflow, e.g. ``schema_path("review")`` -> workflow/schemas/review.schema.json."""
    return SCHEMAS_DIR / f"{name}.schema.json"


@dataclass(frozen=True)
class BatchPaths:
    """Where each stage keeps one batch under ``results`` (``<results>/<dataset>``). The rules declare their outputs
    with it (``batch`` is then Snakemake's ``{batch}`` wildcard); the tables and watch mode find the files with it."""

    results: Path
    batch: str

    @property
    def imported(self) -> Path:
        return self.results / "import" / self.batch

    @property
    def quality(self) -> Path:
        return self.results / "quality" / f"{self.batch}.json"

    @property
    def inference(self) -> Path:
        return self.results / "inference" / self.batch

    @property
    def segmentation(self) -> Path:
        return self.results / "segmentation" / self.batch

    @property
    def review(self) -> Path:
        return self.results / "review" / self.batch

    @property
    def refinement(self) -> Path:
        return self.results / "refinement" / self.batch

    @property
    def gallery(self) -> Path:
        return self.results / "report" / "gallery" / f"{self.batch}.json"


def manifest(folder: str | Path) -> Path:
    """The record of a batch folder's units (import and inference write one)."""
    return Path(folder) / "manifest.json"

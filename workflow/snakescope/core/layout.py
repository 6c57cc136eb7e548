"""Where things are: the project's own files (schemas, environments, the Snakefile) and the results folder's layout,
named once here for the stages, watch mode and the tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
WORKFLOW_DIR = PACKAGE_DIR.parent
PROJECT_DIR = WORKFLOW_DIR.parent
SCHEMAS_DIR = WORKFLOW_DIR / "schemas"
ENVS_DIR = WORKFLOW_DIR / "envs"
SNAKEFILE = WORKFLOW_DIR / "Snakefile"


def schema_path(name: str) -> Path:
    """A JSON schema shipped with the workflow, e.g. ``schema_path("review")`` -> workflow/schemas/review.schema.json."""
    return SCHEMAS_DIR / f"{name}.schema.json"


# Where each stage keeps one batch, under <results>/<dataset>/ (the README's "Outputs" table).
BATCH_OUTPUTS = {
    "imported": "import/{batch}",
    "quality": "quality/{batch}.json",
    "inference": "inference/{batch}",
    "segmentation": "segmentation/{batch}",
    "review": "review/{batch}",
    "refinement": "refinement/{batch}",
    "gallery": "report/gallery/{batch}.json",
}


@dataclass(frozen=True)
class BatchPaths:
    """The outputs of one batch under ``results`` (``<results>/<dataset>``), by the names of :data:`BATCH_OUTPUTS`
    (``paths.imported``, ``paths.quality``, ...). The rules declare their outputs with it (``batch`` is then
    Snakemake's ``{batch}`` wildcard); the tables and watch mode find the files with it."""

    results: Path
    batch: str

    def __getattr__(self, name: str) -> Path:
        if name not in BATCH_OUTPUTS:
            raise AttributeError(f"no stage output {name!r} (snakescope.core.layout.BATCH_OUTPUTS)")
        return Path(self.results) / BATCH_OUTPUTS[name].format(batch=self.batch)


def manifest(folder: str | Path) -> Path:
    """The record of a batch folder's units (import and inference write one)."""
    return Path(folder) / "manifest.json"

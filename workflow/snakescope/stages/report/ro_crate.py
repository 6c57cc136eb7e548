"""The run as a Workflow Run RO-Crate: ``ro-crate-metadata.json`` in the dataset's results folder.

The results folder is the crate. Its metadata names what ran (the workflow, its version and git commit, the
software that wrote the outputs), what it read (every source file with its SHA-256, the model with its digest,
the run's parameters) and what it wrote (the report, the tables, the acquisition actions, the OME-Zarr), as the
Workflow Run Crate profile describes a run (https://w3id.org/ro/wfrun/workflow/0.5), so tools that read
RO-Crates (WorkflowHub, repositories, provenance viewers) see the run without knowing snakescope. Input files
stay where they are and are named by their ``file://`` URI; nothing is copied.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

from ...core.layout import manifest
from ...core.records import read_json, utc_now, write_json

PROFILES = {  # and Workflow RO-Crate 1.1, which the rocrate package declares itself
    "https://w3id.org/ro/wfrun/process/0.5": "Process Run Crate",
    "https://w3id.org/ro/wfrun/workflow/0.5": "Workflow Run Crate",
}
WORKFLOW_RO_CRATE = "https://w3id.org/workflowhub/workflow-ro-crate/1.1"
FORMATS = {".csv": "text/csv", ".json": "application/json", ".jsonl": "application/jsonl", ".html": "text/html",
           ".parquet": "application/vnd.apache.parquet"}
SNAKEFILE = Path(__file__).resolve().parents[3] / "Snakefile"  # workflow/Snakefile


def _uri(path: str | Path) -> str:
    return Path(path).resolve().as_uri()


def _inside(root: Path, path: str | Path) -> str:
    """``path`` relative to the crate's root, a folder ending in ``/`` as RO-Crate writes directories."""
    relative = Path(path).resolve().relative_to(root).as_posix()
    return relative + "/" if Path(path).is_dir() else relative


def _sources(imported: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every source file the import read (``imported``: its batch folders), once (a file with several scenes gives
    several units), and those it could not read."""
    read: dict[str, dict[str, Any]] = {}
    failed: list[dict[str, Any]] = []
    for folder in imported:
        doc = read_json(manifest(folder))
        for unit in doc["units"]:
            read.setdefault(unit["source_path"], {"path": unit["source_path"], "sha256": unit.get("source_sha256"),
                                                  "sample_id": unit["sample_id"]})
        failed.extend({"path": f["source_path"], "reason": f.get("reason", "")} for f in doc["failures"])
    return list(read.values()), failed


def write_crate(*, root: str | Path, dataset: str, imported: list[str], results: list[str], params: str, versions: str,
                model_check: str, out: str | Path) -> dict[str, Any]:
    """Write the crate's metadata file ``out`` (inside ``root``) and return its JSON-LD."""
    from rocrate.rocrate import ROCrate

    root = Path(root).resolve()
    software = read_json(versions)
    model = read_json(model_check)
    git = software.get("workflow_git") or {}
    crate = ROCrate()
    crate.name = f"snakescope run: {dataset}"
    crate.description = ("Microscope acquisitions imported, segmented by a bioimage.io model, reviewed and reported by "
                         "the snakescope Snakemake workflow.")
    crate.root_dataset["conformsTo"] = [{"@id": uri} for uri in (*PROFILES, WORKFLOW_RO_CRATE)]
    for uri, name in PROFILES.items():
        crate.add_jsonld({"@id": uri, "@type": ["CreativeWork", "Profile"], "name": name, "version": uri.rsplit("/", 1)[-1]})
    workflow = crate.add_workflow(_uri(SNAKEFILE), main=True, lang="snakemake", fetch_remote=False,
                                  properties={"name": "snakescope", "version": software.get("snakescope"),
                                              **({"identifier": git["commit"]} if git.get("commit") else {})})
    requirements = [crate.add_jsonld({"@id": f"#software-{name}", "@type": "SoftwareApplication", "name": name,
                                      "softwareVersion": version})
                    for name, version in sorted((software.get("packages") or {}).items()) if version]
    requirements.append(crate.add_jsonld({"@id": "#software-python", "@type": "SoftwareApplication", "name": "Python",
                                          "softwareVersion": software.get("python")}))
    workflow["softwareRequirements"] = requirements

    with warnings.catch_warnings():  # the results are already in the crate's folder: nothing to copy ("No source")
        warnings.simplefilter("ignore", UserWarning)
        inputs = []
        sources, failed = _sources(imported)
        for source in sources:
            inputs.append(crate.add_file(_uri(source["path"]), fetch_remote=False, properties={
                "name": Path(source["path"]).name, "alternateName": source["sample_id"],
                **({"sha256": source["sha256"]} if source.get("sha256") else {})}))
        model_source = str(model.get("source") or "")
        described = {"name": model.get("name"), "identifier": model.get("id") or model_source,
                     "sha256": model.get("weights_sha256"),
                     "description": f"bioimage.io model, {model.get('weight_format')} weights, digest {model.get('digest')}"}
        if model_source and Path(model_source).exists():  # a local model: a file the run read
            inputs.append(crate.add_file(_uri(model_source), fetch_remote=False,
                                         properties={"@type": ["File", "SoftwareSourceCode"], **described}))
        else:  # a zoo id, DOI or URL
            inputs.append(crate.add_jsonld({"@id": f"#model-{model.get('digest')}", "@type": "SoftwareSourceCode", **described}))
        inputs.append(crate.add_file(None, dest_path=_inside(root, params), properties={
            "name": "the run's configuration", "encodingFormat": "application/json"}))
        outputs = [crate.add_file(None, dest_path=_inside(root, versions), properties={
            "name": "software versions", "encodingFormat": "application/json"})]
        for path in results:
            if Path(path).is_dir():
                outputs.append(crate.add_dataset(None, dest_path=_inside(root, path), properties={"name": Path(path).name}))
            else:
                outputs.append(crate.add_file(None, dest_path=_inside(root, path), properties={
                    "name": Path(path).name, **({"encodingFormat": FORMATS[Path(path).suffix]} if Path(path).suffix in FORMATS else {})}))
    action = crate.add_action(workflow, object=inputs, result=outputs, properties={
        "name": f"snakescope run of {dataset}",
        "endTime": utc_now(),
        "actionStatus": {"@id": "http://schema.org/CompletedActionStatus"},
        **({"error": "; ".join(f"{Path(f['path']).name}: {f['reason']}" for f in failed)} if failed else {}),
    })
    crate.root_dataset["mentions"] = [action]
    metadata = crate.metadata.generate()
    write_json(out, metadata)
    return metadata


def run_ro_crate(*, imported: list[str], report: str, tables: list[str], run_summary: str, params: str, versions: str,
                 model_check: str, ro_crate: str, dataset: str, ome_zarr: list[str] | None = None) -> None:
    """Rule ``ro_crate``: the run's Workflow Run RO-Crate metadata in the results folder (its root)."""
    results = [report, *tables, run_summary, *(ome_zarr or [])]
    metadata = write_crate(root=Path(ro_crate).parent, dataset=dataset, imported=imported, results=results,
                           params=params, versions=versions, model_check=model_check, out=ro_crate)
    print(f"[ro_crate] {len(metadata['@graph'])} entities in {ro_crate}", file=sys.stderr)

"""What the terminal says: one progress line per batch and stage while a run goes, one summary at its end.

Stage commands write their details to the job's log (stderr); `batch_progress` also prints one line to
stdout, which Snakemake shows in the terminal (or the SLURM job's output). `run_summary_message` is
called from the workflow's onsuccess/onerror handlers.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .records import read_csv, read_json

LISTED_FAILURES = 10


def batch_progress(stage: str, batch: str, text: str) -> None:
    """``[import b0001] 6 unit(s), 1 failure(s)`` in the terminal and in the job's log."""
    line = f"[{stage} {batch}] {text}"
    print(line, flush=True)
    print(line, file=sys.stderr, flush=True)


def stage_progress(stage: str, doc: dict[str, Any], done: int) -> None:
    """A batch stage's line: units done, verdicts (and how many the LLM reviewed), failures."""
    from collections import Counter

    failures = len(doc.get("failures", []))
    verdicts = Counter(r["verdict"] for r in doc.get("reviews", []))
    extra = "".join(f", {n} {v}" for v, n in sorted(verdicts.items()))
    if doc.get("uses_llm") or doc.get("llm_error"):  # an LLM run: say how many the LLM really reviewed
        by_llm = sum(1 for r in doc.get("reviews", []) if r["reviewer"].get("uses_llm"))
        scoped = sum(1 for r in doc.get("reviews", []) if r.get("status") == "rules_only")
        extra += (f"; {by_llm} reviewed by the LLM, {len(doc.get('reviews', [])) - by_llm} by the rules alone"
                  + (f" ({scoped} of them left to the rules by review.llm.scope)" if scoped else ""))
    batch_progress(stage, doc["batch"], f"{done} unit(s) done{extra}" + (f", {failures} FAILED (see the log)" if failures else ""))


def summary_lines(results: Path, failed: bool = False) -> list[str]:
    """The end-of-run summary: units and verdicts, failed inputs with the table listing them, the report."""
    tables = results / "tables"
    lines = []
    aggregates = tables / "aggregates.json"
    if aggregates.is_file():
        facts = read_json(aggregates)
        verdicts = facts.get("verdicts", {})
        shown = ", ".join(f"{k} {verdicts[k]}" for k in ("pass", "warn", "fail", "unreviewed") if verdicts.get(k))
        lines.append(f"snakescope: {facts.get('units', 0)} unit(s) reviewed ({shown or 'none'}) by "
                     f"{', '.join(facts.get('review_backends', {})) or 'no reviewer'}")
        llm = facts.get("llm") or {}
        for run in llm.get("runs", []):
            audit = llm.get("audit") or {}
            lines.append(f"  LLM reviewer: {run.get('model')} via {run.get('backend')} at {run.get('endpoint')} "
                         f"(server {run.get('server_version')}, self-test {run.get('selftest')}): "
                         f"{llm.get('reviewed_by_llm', 0)} unit(s) reviewed by the LLM"
                         + (f", {llm['selection']['not_selected']} left to the rules (review.llm.scope: {run.get('scope')})"
                            if llm.get("selection", {}).get("not_selected") else "")
                         + (f"; audit: it agreed with the rules on {audit['agreed']} of {audit['units']}" if audit.get("units") else ""))
        if facts.get("uncalibrated_units"):
            lines.append(f"  {facts['uncalibrated_units']} unit(s) without a pixel size, measured in pixels: "
                         f"see {tables / 'warnings.csv'}")
    failures = read_csv(tables / "failures.csv") if (tables / "failures.csv").is_file() else []
    if failures:
        lines.append(f"  {len(failures)} failed input(s) or step(s), listed in {tables / 'failures.csv'}:")
        for row in failures[:LISTED_FAILURES]:
            lines.append(f"    {row.get('stage')}: {row.get('unit_id') or row.get('sample_id')} "
                         f"({Path(row.get('source_path') or '').name}): {row.get('reason')}")
        if len(failures) > LISTED_FAILURES:
            lines.append(f"    ... and {len(failures) - LISTED_FAILURES} more")
    report = results / "report" / "report.html"
    if failed:
        lines.append(f"snakescope: the run stopped with errors; each failed job names its log, under {results / 'logs'}. "
                     "Rerun the same command to continue where it stopped.")
    elif report.is_file():
        lines.append(f"snakescope: report written to {report.resolve()}")
    return lines


def run_summary_message(results: str | Path, failed: bool = False) -> None:
    print("\n" + "\n".join(summary_lines(Path(results), failed)), flush=True)

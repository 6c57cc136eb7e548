"""Example consumer of `snakescope watch`: tail the action records and say what a microscope script would do.

    python examples/watch_consumer.py results/<dataset>/watch/actions.jsonl [--once] [--from-sequence N]

It prints, for every record, the calls it *would* make with pymmcore-plus (Micro-Manager) — it makes none:
wiring them to a real microscope is the facility's decision (stage positions, autofocus device, limits).
Each record is handled once (by its sequence number), so restarting this script with --from-sequence does not
repeat requests. Only the standard library is used. Record format: workflow/schemas/watch_record.schema.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

# What each snakescope action would become with pymmcore-plus (CMMCorePlus): illustrative, not executed.
MICROSCOPE_CALLS = {
    "refocus": "core.fullFocus(); then re-image {where}",
    "increase_exposure": "core.setExposure(core.getExposure() * {factor}); then re-image {where}",
    "reduce_exposure": "core.setExposure(core.getExposure() * {factor}); then re-image {where}",
    "reacquire": "re-image {where} (mda.run of that position again)",
    "skip_field": "no re-imaging of {where}; mark the field as empty in the plate map",
    "check_sample": "ask the operator to look at {where} (staining, cell line, density)",
}


def describe(record: dict) -> list[str]:
    """The lines this consumer prints for one record."""
    where = record["source_path"]
    well = record["position"].get("well")
    if well:
        where += f" (plate {record['position'].get('plate') or '-'}, well {well})"
    head = f"#{record['sequence']} {record['unit_id']}: {record['verdict']}"
    if not record["actions"]:
        lines = [f"{head}: nothing to do" + (f" ({len(record['suppressed'])} held back by limits)" if record["suppressed"] else "")]
    else:
        lines = [f"{head}: would call " + "; ".join(
            MICROSCOPE_CALLS[a["action"]].format(where=where, factor=a.get("exposure_factor", 1.0))
            for a in record["actions"])]
    if record["status"] == "failed" and any(a["action"] == "reacquire" for a in record["actions"]):
        lines[0] += "  [re-acquire: " + record["issues"][0]["evidence"][:120] + "]"
    return lines


def follow(path: Path, once: bool, start: int) -> None:
    handled = start - 1
    position = 0
    while True:
        if path.is_file():
            with open(path, "rb") as handle:
                handle.seek(position)
                for line in handle:
                    if not line.endswith(b"\n"):  # a line still being written: read it next time
                        break
                    position += len(line)
                    record = json.loads(line.decode("utf-8"))
                    if record["sequence"] > handled:
                        handled = record["sequence"]
                        for text in describe(record):
                            print(text, flush=True)
        if once:
            return
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("actions", type=Path, help="the actions file (JSON Lines)")
    parser.add_argument("--once", action="store_true", help="print the records there now and stop (default: keep tailing)")
    parser.add_argument("--from-sequence", type=int, default=0, help="skip records before this sequence number")
    args = parser.parse_args()
    follow(args.actions, args.once, args.from_sequence)


if __name__ == "__main__":
    main()

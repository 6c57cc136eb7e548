"""A person's word in the loop: verdict corrections exported from the report, applied on the next run.

The file (``workflow/schemas/corrections.schema.json``) is given as config ``review.corrections``. The
machine reviews stay as they were (``reviews.jsonl``); the final verdict in ``units.csv``, the statistics
and the acquisition actions follow the correction, and the run records who was overruled and how often
the person, the rules and the LLM agreed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from .layout import schema_path

SCHEMA_PATH = schema_path("corrections")


class CorrectionsError(ValueError):
    """The corrections file is unreadable or does not follow its schema."""


@dataclass(frozen=True)
class Correction:
    unit_id: str
    verdict: str
    issues: tuple[str, ...] | None = None  # None: keep the machine's issues
    comment: str = ""
    author: str = ""


def load_corrections(path: str | Path) -> dict[str, Correction]:
    """{unit_id: Correction} from a corrections file; the last entry for a unit wins. Errors name the file."""
    import jsonschema

    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CorrectionsError(f"corrections file {path} (config key review.corrections): {exc}") from None
    errors = sorted(jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text())).iter_errors(doc), key=str)
    if errors:
        where = "/".join(map(str, errors[0].absolute_path)) or "(top level)"
        raise CorrectionsError(f"corrections file {path} (config key review.corrections), at {where}: {errors[0].message}")
    out = {}
    for entry in doc["corrections"]:
        issues = entry.get("issues")
        out[entry["unit_id"]] = Correction(entry["unit_id"], entry["verdict"], tuple(issues) if issues is not None else None,
                                           entry.get("comment", ""), entry.get("author", ""))
    return out


def machine_verdicts(review: dict[str, Any]) -> dict[str, str | None]:
    """The rules' and the LLM's verdicts of one review (the LLM's is None when no LLM answered)."""
    rules = (review.get("second_opinion") or {}).get("verdict") or (None if review.get("reviewer", {}).get("uses_llm") else review.get("verdict"))
    return {"rules": rules, "llm": review.get("llm_verdict")}


def overruled(correction: Correction, review: dict[str, Any]) -> str:
    """Whom the person overruled: 'rules', 'LLM', 'both' or 'none' (they agreed)."""
    verdicts = machine_verdicts(review)
    rules = verdicts["rules"] is not None and verdicts["rules"] != correction.verdict
    llm = verdicts["llm"] is not None and verdicts["llm"] != correction.verdict
    return "both" if rules and llm else "rules" if rules else "LLM" if llm else "none"


def agreement(reviews: dict[str, dict[str, Any]], corrections: dict[str, Correction]) -> dict[str, Any]:
    """Agreement rates between the person, the rules and the LLM, each over the units both judged."""
    pairs: dict[str, list[bool]] = {"human_rules": [], "human_llm": [], "llm_rules": []}
    for uid, review in reviews.items():
        verdicts = machine_verdicts(review)
        human = corrections[uid].verdict if uid in corrections else None
        for key, a, b in (("human_rules", human, verdicts["rules"]), ("human_llm", human, verdicts["llm"]),
                          ("llm_rules", verdicts["llm"], verdicts["rules"])):
            if a is not None and b is not None:
                pairs[key].append(a == b)
    return {key: {"units": len(v), "agree": sum(v), "rate": round(sum(v) / len(v), 3) if v else None} for key, v in pairs.items()}


def corrected_review(review: dict[str, Any], correction: Correction) -> dict[str, Any]:
    """The review as the person decided it: their verdict and issues, the machine's evidence kept where it agrees;
    suggested actions dropped for pass, and a re-acquisition with the person's comment when they fail a unit
    the machine had no microscope action for."""
    from .records import ACQUISITION_ACTIONS

    if correction.issues is None:
        issues = list(review.get("issues", [])) if correction.verdict != "pass" else []
    else:
        by_type = {i["type"]: i for i in review.get("issues", [])}
        severity = "fail" if correction.verdict == "fail" else "warn"
        issues = [{**by_type.get(t, {}), "type": t, "severity": severity,
                   "evidence": by_type.get(t, {}).get("evidence") or f"human reviewer: {correction.comment or t}"}
                  for t in correction.issues]
    actions = [] if correction.verdict == "pass" else list(review.get("suggested_actions", []))
    if correction.verdict == "pass":  # the person removed what the machine asked for: the record says so
        removed = [a["action"] for a in review.get("suggested_actions", []) if a["action"] != "none"]
        actions = [{"action": "none", "decided_by": "human",
                    "detail": f"{correction.author or 'human reviewer'}: {correction.comment or 'passed'}"
                              + (f" (removed: {', '.join(removed)})" if removed else "")}]
    if correction.verdict != "pass" and not any(a["action"] in ACQUISITION_ACTIONS for a in actions):
        actions.append({"action": "reacquire", "detail": f"human reviewer: {correction.comment or 'see the correction'}",
                        "decided_by": "human"})
    return {**review, "verdict": correction.verdict, "issues": issues, "suggested_actions": actions,
            "reviewer": {**review.get("reviewer", {}), "backend": "human correction", "uses_llm": False,
                         "name": correction.author or "human reviewer"}}

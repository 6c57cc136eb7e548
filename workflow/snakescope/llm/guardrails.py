"""The model's claims checked against the measurements and the rule-based reviewer; the combined verdict;
numbers in a narrative checked against the data it was given."""

from __future__ import annotations

import re
from typing import Any

SEVERITY = {"pass": 0, "warn": 1, "fail": 2}


def check_claims(answer: dict[str, Any], rules: dict[str, Any], metrics: dict[str, float] | None,
                 summary: dict[str, Any] | None, count_tolerance: float) -> list[dict[str, str]]:
    """Flags where the model's claims disagree with the measurements or the rule-based reviewer."""
    flags = []
    segmented = (summary or {}).get("object_count")
    estimated = answer["estimated_count"]
    if segmented is not None and abs(estimated - segmented) > max(2, count_tolerance * max(estimated, segmented)):
        flags.append({"check": "object count", "llm_says": f"{estimated} nuclei",
                      "numbers_say": f"{segmented} segmented objects (tolerance ±{count_tolerance:.0%} or 2)"})
    claimed = {i["type"] for i in answer["issues"]}
    measured = {i["type"]: i for i in rules["issues"]}
    metric_text = {
        "out_of_focus": lambda m: f"blur {m.get('blur', float('nan')):.2f} (0 sharp, 1 blurred)",
        "saturated": lambda m: f"{m.get('percent_saturated', float('nan')):.2f}% saturated pixels",
        "empty_field": lambda m: f"foreground fraction {m.get('foreground_fraction', float('nan')):.4f}",
        "low_signal": lambda m: f"SNR {m.get('snr', float('nan')):.1f}",
        "object_size_out_of_range": lambda m: f"median diameter {(summary or {}).get('diameter_um_median') or 0:.1f} µm",
    }
    for kind, describe in metric_text.items() if "no_data" not in measured else ():  # nothing was measured on it
        says = describe(metrics or {})
        if kind in claimed and kind not in measured:
            flags.append({"check": kind, "llm_says": f"reports {kind}", "numbers_say": f"{says}: within thresholds"})
        elif kind in measured and kind not in claimed:
            flags.append({"check": kind, "llm_says": f"does not report {kind}", "numbers_say": measured[kind]["evidence"]})
    if abs(SEVERITY[answer["verdict"]] - SEVERITY[rules["verdict"]]) == 2:  # pass vs fail
        flags.append({"check": "verdict", "llm_says": answer["verdict"], "numbers_say": f"rule-based verdict {rules['verdict']}"})
    return flags


def combine(rules: dict[str, Any], answer: dict[str, Any], flags: list[dict[str, str]]) -> tuple[str, list[dict[str, str]]]:
    """Final verdict and issues. Rule (documented in config/README.md): the worse of the two verdicts;
    a 'pass' with any disagreement flag becomes 'warn'. Issues are the union, the more severe kept per type."""
    verdict = max(rules["verdict"], answer["verdict"], key=SEVERITY.__getitem__)
    if flags and verdict == "pass":
        verdict = "warn"
    issues: dict[str, dict[str, str]] = {}
    for source, items in (("metrics", rules["issues"]), ("LLM", answer["issues"])):
        for issue in items:
            tagged = {**issue, "evidence": f"{source}: {issue['evidence']}"[:500]}
            current = issues.get(issue["type"])
            if current is None or SEVERITY[issue["severity"]] > SEVERITY[current["severity"]]:
                issues[issue["type"]] = tagged
    return verdict, list(issues.values())


# actions that undo each other: a field gets at most one of a pair, and the measurements' choice stands
OPPOSITE_ACTIONS = {"reduce_exposure": "increase_exposure", "increase_exposure": "reduce_exposure"}


def merged_actions(required: list[dict[str, Any]], suggested: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A reviewed unit's actions: every action the measurements require (the model cannot remove one: only a human
    correction can), then what the model adds that neither repeats nor undoes one of them; ``none`` only when nobody
    asks for anything. Each action says who decided it (``decided_by``)."""
    actions = [{"action": a["action"], "detail": a["detail"], "decided_by": a.get("decided_by", "measurements")}
               for a in required if a["action"] != "none"]
    taken = {a["action"] for a in actions}
    for action in suggested:
        name = action["action"]
        if name == "none" or name in taken or OPPOSITE_ACTIONS.get(name) in taken:
            continue
        taken.add(name)
        actions.append({"action": name, "detail": action["detail"], "decided_by": "LLM"})
    return actions or [{"action": "none", "detail": "no action needed", "decided_by": "measurements" if not suggested else "LLM"}]


NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:[.,]\d+)?(?![\w])")


def numeric_leaves(data: Any) -> list[float]:
    if isinstance(data, bool):
        return []
    if isinstance(data, (int, float)):
        return [float(data)]
    if isinstance(data, dict):
        return [v for value in data.values() for v in numeric_leaves(value)]
    if isinstance(data, (list, tuple)):
        return [v for value in data for v in numeric_leaves(value)]
    return []


def check_numbers(text: str, data: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(numbers found in ``data``, numbers not found). A quoted number matches a value of the data rounded
    to the quoted precision (so 12.3 matches 12.28); percentages are checked like any number."""
    allowed = numeric_leaves(data)
    checked, mismatched = [], []
    for match in NUMBER.finditer(text):
        token = match.group(0).replace(",", ".")
        value = float(token)
        decimals = len(token.split(".")[1]) if "." in token else 0
        ok = any(round(a, decimals) == round(value, decimals) or (decimals == 0 and round(a) == value) for a in allowed)
        (checked if ok else mismatched).append(match.group(0))
    return checked, mismatched


CONTROL_TOKENS = ("<|", "|>", "<start_of_turn>", "<end_of_turn>", "<eos>", "<bos>", "</s>", "[INST]")


def narrative_problem(text: str) -> str | None:
    """Why a narrative cannot stand as the run's summary (a small or mis-templated model's output), or None: chat
    template tokens in it, the prompt's placeholder echoed, or too little prose."""
    found = [t for t in CONTROL_TOKENS if t in text]
    if found:
        return f"it contains chat-template tokens ({', '.join(found)}): the model or the server's chat template is wrong"
    if "<your sentences>" in text:
        return "it echoes the prompt's placeholder"
    letters = sum(c.isalpha() for c in text)
    if len(text.split()) < 8 or letters < 0.5 * len(text):
        return f"it is not prose ({len(text.split())} words, {letters} letters in {len(text)} characters)"
    return None

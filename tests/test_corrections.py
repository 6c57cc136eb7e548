"""A person's corrections: the file is checked, verdicts and actions follow it, agreement is counted."""

from __future__ import annotations

import json

import pytest

from snakescope.core.corrections import CorrectionsError, agreement, corrected_review, load_corrections, overruled


def review(uid, verdict, llm=None, actions=(), issues=()):
    doc = {"unit_id": uid, "verdict": verdict, "issues": [{"type": t, "severity": verdict, "evidence": f"{t} measured"} for t in issues],
           "suggested_actions": [{"action": a, "detail": a} for a in actions],
           "reviewer": {"backend": "ollama" if llm else "deterministic", "uses_llm": bool(llm)}}
    if llm:
        doc.update(llm_verdict=llm, second_opinion={"verdict": verdict})
    return doc


def write(tmp_path, corrections, **top):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"format": "snakescope-corrections", "version": 1, "corrections": corrections, **top}))
    return path


def test_the_file_is_checked_and_errors_name_it_and_the_place(tmp_path):
    good = write(tmp_path, [{"unit_id": "a", "verdict": "pass"}, {"unit_id": "a", "verdict": "fail", "issues": ["debris"]}])
    assert load_corrections(good)["a"].verdict == "fail"  # the last entry for a unit wins
    bad = write(tmp_path, [{"unit_id": "a", "verdict": "fine"}])
    with pytest.raises(CorrectionsError, match=r"c\.json .*review\.corrections.*corrections/0/verdict"):
        load_corrections(bad)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(CorrectionsError, match="broken.json"):
        load_corrections(tmp_path / "broken.json")


def test_a_corrected_review_follows_the_person(tmp_path):
    corrections = load_corrections(write(tmp_path, [
        {"unit_id": "dim", "verdict": "pass", "comment": "actually fine"},
        {"unit_id": "ok", "verdict": "fail", "issues": ["debris"], "comment": "fibre across the field"},
        {"unit_id": "blur", "verdict": "fail"}]))
    dim = corrected_review(review("dim", "warn", actions=["increase_exposure"], issues=["low_signal"]), corrections["dim"])
    assert dim["verdict"] == "pass" and dim["issues"] == []
    assert dim["suggested_actions"] == [{"action": "none", "decided_by": "human",
                                         "detail": "human reviewer: actually fine (removed: increase_exposure)"}]
    assert dim["reviewer"]["backend"] == "human correction"
    ok = corrected_review(review("ok", "pass"), corrections["ok"])
    assert [(i["type"], i["severity"]) for i in ok["issues"]] == [("debris", "fail")] and "fibre" in ok["issues"][0]["evidence"]
    assert [a["action"] for a in ok["suggested_actions"]] == ["reacquire"]
    blur = corrected_review(review("blur", "warn", actions=["refocus"], issues=["out_of_focus"]), corrections["blur"])
    assert [a["action"] for a in blur["suggested_actions"]] == ["refocus"] and blur["issues"][0]["evidence"] == "out_of_focus measured"


def test_who_was_overruled_and_agreement_rates(tmp_path):
    reviews = {"a": review("a", "warn", llm="pass"), "b": review("b", "pass", llm="pass"), "c": review("c", "fail"),
               "d": review("d", "pass", llm="fail")}
    corrections = load_corrections(write(tmp_path, [{"unit_id": "a", "verdict": "pass"}, {"unit_id": "c", "verdict": "warn"},
                                                    {"unit_id": "d", "verdict": "warn"}]))
    assert overruled(corrections["a"], reviews["a"]) == "rules"
    assert overruled(corrections["c"], reviews["c"]) == "rules"
    assert overruled(corrections["d"], reviews["d"]) == "both"
    rates = agreement(reviews, corrections)
    assert rates["human_rules"] == {"units": 3, "agree": 0, "rate": 0.0}
    assert rates["human_llm"] == {"units": 2, "agree": 1, "rate": 0.5}
    assert rates["llm_rules"] == {"units": 3, "agree": 1, "rate": 0.333}

"""cotlib's grader against the field's own cases (tests/data/grader), via benchmarks/grader_peer.py."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "grader"


@pytest.fixture(scope="module")
def peer():
    spec = importlib.util.spec_from_file_location("grader_peer", ROOT / "benchmarks" / "grader_peer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def result(peer):
    return peer.run(DATA)


def test_case_files_name_their_source_and_licence():
    sources = (DATA / "SOURCES.md").read_text()
    for line in map(json.loads, (DATA / "hendrycks_math_equivalence.jsonl").read_text().splitlines()):
        assert line["commit"] in sources and line["repo"] == "hendrycks/math"
    for line in map(json.loads, (DATA / "math_verify_cases.jsonl").read_text().splitlines()):
        assert line["commit"] in sources and line["repo"] == "huggingface/Math-Verify"
    assert "MIT License" in (DATA / "LICENSE-hendrycks-math.txt").read_text()
    assert "Apache License" in (DATA / "LICENSE-math-verify.txt").read_text()


def test_every_hendrycks_case_is_copied(peer):
    cases = [c for c in peer.load_cases(DATA) if c["source"] == "hendrycks-math"]
    assert len(cases) == 16 and sum(c["expected"] for c in cases) == 10


def test_agreement_per_source_is_at_least_97_percent(result):
    for source, s in result["per_source"].items():
        assert s["applicable"] > 0, source
        assert s["agree"] / s["applicable"] >= 0.97, (source, s)


def test_nothing_is_accepted_that_the_peer_rejects(result):
    assert [c["id"] for c, _ in result["false_accept"]] == []


def test_not_applicable_cases_have_reasons(result, peer):
    judged = peer.judgements(DATA)
    assert {c["id"] for c, _ in result["not_applicable"]} == {k for k, v in judged.items() if v["status"] == "not-applicable"}
    assert all(len(reason) > 20 for _, reason in result["not_applicable"])
    assert len(result["not_applicable"]) <= 0.05 * sum(s["cases"] for s in result["per_source"].values())


def test_every_group_of_issue_16_has_cases_both_ways(peer):
    cases = [c for c in peer.load_cases(DATA) if c["source"] == "cotlib"]
    for group in [str(i) for i in range(1, 10)] + ["gsm8k", "aqua", "strategyqa"]:
        mine = [c for c in cases if c["group"].split("-")[0] == group]
        assert any(c["expected"] for c in mine) and any(not c["expected"] for c in mine), group

"""The level prompts, calibrated against the paper's released CoTs: word targets inside the released
bands and rising with the level, one-shot exemplars as long as their targets, and the answer line
each dataset's grader reads."""

from __future__ import annotations

import csv
import importlib.util
from importlib import resources

import pytest

from cotlib import data, prompts, released
from cotlib.grading import grade
from tests.conftest import ROOT, needs_shared_data

CALIBRATION_SET = {"number": "svamp", "choice": "obqa", "boolean": "strategyqa"}  # all six levels released


def _targets_csv() -> list[dict]:
    return list(csv.DictReader(resources.files("cotlib").joinpath("resources/level_targets.csv").read_text().splitlines()))


def test_targets_rise_with_the_level_for_every_dataset():
    rows = _targets_csv()
    taught = [ds for ds in data.DATASETS if data.SPECS[ds].has_train]
    assert {r["dataset"] for r in rows} == set(taught)
    assert all(data.SPECS[ds].exemplar in prompts.EXEMPLARS for ds in data.DATASETS)
    for ds in taught:
        words = [prompts.target_words(ds, level) for level in range(1, 7)]
        assert all(a < b for a, b in zip(words, words[1:])), (ds, words)


@needs_shared_data
def test_targets_are_what_the_release_gives_and_sit_in_its_bands():
    spec = importlib.util.spec_from_file_location("build_level_targets", ROOT / "scripts" / "build_level_targets.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    for ds in ("svamp", "obqa", "strategyqa", "math"):
        bands = released.level_bands(ds)
        assert set(bands) == set(range(1, 7)), ds
        computed = build.targets(bands)
        for level, (lo, hi) in bands.items():
            t = prompts.target_words(ds, level)
            assert t == computed[level][0], (ds, level)  # the committed table is up to date
            if ds in ("svamp", "strategyqa"):  # complete releases whose bands allow a rising order
                assert lo - 0.5 <= t <= hi + 0.5, (ds, level, t, lo, hi)


def test_each_exemplar_is_about_as_long_as_its_level_asks():
    for family, ds in CALIBRATION_SET.items():
        words = [prompts.exemplar_words(ds, level) for level in range(1, 7)]
        assert all(a < b for a, b in zip(words, words[1:])), (family, words)
        for level, w in enumerate(words, start=1):
            t = prompts.target_words(ds, level)
            assert abs(w - t) <= 0.15 * t, (family, level, w, t)


@pytest.mark.parametrize("dataset,line", [
    ("svamp", "'The answer is <number>'"),
    ("csqa", "'The answer is <letter>'"),
    ("aqua", "'The answer is <letter>'"),
    ("strategyqa", "'The answer is True' or 'The answer is False'"),
    ("math", "'The answer is <final answer>'"),
])
def test_teacher_prompt_asks_for_the_datasets_answer_line_and_its_exemplar_grades_correct(dataset, line):
    msgs = prompts.teacher_messages("Some question?", 4, "cot", dataset)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert f"End with the line {line}." in msgs[0]["content"]
    assert f"about {prompts.target_words(dataset, 4)} words" in msgs[0]["content"]
    ex = prompts.exemplar_for(dataset)
    kind = data.spec(dataset).answer_type
    choices = data.parse_rendered_choices(ex.question) if kind == "choice" else None
    assert grade(msgs[2]["content"], ex.answer, kind, choices).strict_correct


def test_unknown_dataset_level_or_format_is_refused():
    with pytest.raises(ValueError, match="no teacher prompt for dataset 'gsm9k'"):
        prompts.teacher_messages("q", 1, "cot", "gsm9k")
    with pytest.raises(ValueError, match="granularity level must be 1..6"):
        prompts.teacher_messages("q", 7, "cot", "svamp")
    with pytest.raises(ValueError, match="unknown CoT format"):
        prompts.teacher_messages("q", 1, "tree", "svamp")

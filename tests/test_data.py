from __future__ import annotations

import pytest

from cotlib import data
from tests.conftest import needs_shared_data


def test_demo_data_is_seeded_and_splits_do_not_overlap():
    train, test = data.load_examples("demo-arith", "train"), data.load_examples("demo-arith", "test")
    assert len(train) == 400 and len(test) == 200
    assert not {e.question for e in train} & {e.question for e in test}
    assert data.load_examples("demo-arith", "train", 5) == train[:5]
    for ex in train[:50]:  # gold answers are integers the question determines
        assert ex.answer.lstrip("-").isdigit() and ex.answer_type == "number"


def test_unknown_dataset_and_split_are_clear():
    with pytest.raises(data.DataError, match="unknown dataset 'nope'"):
        data.load_examples("nope")
    with pytest.raises(data.DataError, match="splits"):
        data.load_examples("demo-arith", "validation")
    with pytest.raises(data.DataError, match="splits 'train' and 'test'"):
        data.load_examples("svamp", "dev")


@needs_shared_data
def test_svamp_test_split_is_the_300_not_in_training():
    test = data.load_examples("svamp", "test", source="local")
    train = data.load_examples("svamp", "train", source="local")
    assert len(test) == 300 and len(train) == 700
    assert not {e.question for e in test} & {e.question for e in train}


@needs_shared_data
@pytest.mark.parametrize("name,size,kind", [("svamp", 700, "number"), ("gsm8k", 7473, "number"), ("aqua", 6900, "choice"),
                                            ("math", 1297, "math"), ("csqa", 9740, "choice"), ("obqa", 4957, "choice"),
                                            ("strategyqa", 2000, "boolean")])
def test_paper_training_sets(name, size, kind):
    # AQuA: 40 of the 6,940 answer-only rows name no choice at all and are skipped (with a warning)
    rows = data.load_examples(name, "train", source="local")
    assert len(rows) == size and all(r.answer_type == kind for r in rows)
    if kind == "choice":  # gold is a bare letter and the choices parse from the rendered question
        assert all(r.answer in "ABCDE" and r.choices and len(r.choices) >= 4 for r in rows)
    if kind == "math":  # boxed answers are taken whole, braces balanced
        assert all(r.answer.count("{") == r.answer.count("}") for r in rows)


@needs_shared_data
def test_choice_questions_render_the_same_in_training_and_test():
    train_q = data.load_examples("csqa", "train", 1, source="local")[0].question
    test_q = data.load_examples("csqa", "test", 1, source="local")[0].question
    pattern = r"^Q: .+ Answer choices: A: .+, B: .+, C: .+, D: .+, E: .+$"
    import re
    assert re.match(pattern, train_q) and re.match(pattern, test_q)


@needs_shared_data
@pytest.mark.parametrize("name,size,kind", [("gsm8k", 1319, "number"), ("aqua", 254, "choice"),
                                            ("csqa", 1221, "choice"), ("obqa", 500, "choice"),
                                            ("strategyqa", 290, "boolean")])
def test_local_test_sets(name, size, kind):
    rows = data.load_examples(name, "test", source="local")
    assert len(rows) == size and all(r.answer_type == kind for r in rows)
    if kind == "choice":
        assert all(r.choices and len(r.choices) >= 4 and r.answer in "ABCDE" for r in rows)


def test_missing_local_file_names_file_and_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("COTLIB_DATA_DIR", str(tmp_path))
    with pytest.raises(data.DataError, match=r"'gsm8k'.*testsets/gsm8k/test.jsonl.*COTLIB_DATA_DIR"):
        data.load_examples("gsm8k", source="local")
    with pytest.raises(data.DataError, match=r"'math'.*paper_sft/math_human.json"):
        data.load_examples("math", "train", source="local")


def test_file_with_wrong_fields_names_dataset_file_and_fields(tmp_path, monkeypatch):
    monkeypatch.setenv("COTLIB_DATA_DIR", str(tmp_path))
    bad = tmp_path / "testsets" / "gsm8k" / "test.jsonl"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"problem": "1+1?", "solution": "2"}\n')
    with pytest.raises(data.DataError, match=r"'gsm8k'.*test.jsonl rows lack fields \['question', 'answer'\]"):
        data.load_examples("gsm8k", source="local")


def test_empty_split_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("COTLIB_DATA_DIR", str(tmp_path))
    empty = tmp_path / "testsets" / "strategyqa" / "strategyQA_test.json"
    empty.parent.mkdir(parents=True)
    empty.write_text("[]")
    with pytest.raises(data.DataError, match=r"'strategyqa' split 'test' is empty"):
        data.load_examples("strategyqa", source="local")

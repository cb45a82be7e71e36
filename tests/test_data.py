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


@needs_shared_data
def test_svamp_test_split_is_the_300_not_in_training():
    rows = data.load_examples("svamp", "test")
    assert len(rows) == 300


@needs_shared_data
@pytest.mark.parametrize("name,size,kind", [("gsm8k", 1319, "number"), ("aqua", 254, "choice"),
                                            ("csqa", 1221, "choice"), ("obqa", 500, "choice"),
                                            ("strategyqa", 290, "boolean")])
def test_local_test_sets(name, size, kind):
    rows = data.load_examples(name, "test")
    assert len(rows) == size and all(r.answer_type == kind for r in rows)
    if kind == "choice":
        assert all(r.choices and len(r.choices) >= 4 and r.answer in "ABCDE" for r in rows)


def test_missing_local_file_names_file_and_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("COTLIB_DATA_DIR", str(tmp_path))
    with pytest.raises(data.DataError, match=r"'gsm8k'.*testsets/gsm8k/test.jsonl.*COTLIB_DATA_DIR"):
        data.load_examples("gsm8k")

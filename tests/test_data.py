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
def test_svamp_1000_is_the_whole_file_for_evaluation_only():
    """A dataset that joined by one registry entry (data.SPECS): all 1,000 problems, the 300 test ones among
    them, graded as numbers; it has no training split of its own."""
    whole = data.load_examples("svamp-1000", "test", source="local")
    test = data.load_examples("svamp", "test", source="local")
    train = data.load_examples("svamp", "train", source="local")
    assert len(whole) == 1000 and len({e.id for e in whole}) == 1000
    questions = {e.question for e in whole}
    assert {e.question for e in test} <= questions and {e.question for e in train} <= questions
    assert {e.answer_type for e in whole} == {"number"}
    with pytest.raises(data.DataError, match="svamp-1000"):
        data.load_examples("svamp-1000", "train", source="local")


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


# ---------------------------------------------------------------- MATH-500 locally, subjects, leakage

@needs_shared_data
def test_math500_loads_locally_and_restricts_to_the_papers_four_subjects():
    test = data.load_examples("math", "test", source="local")
    assert len(test) == 500 and all(e.answer_type == "math" and e.subject in data.MATH_SUBJECTS for e in test)
    assert test[0].id.startswith("test/") and test[0].answer  # gold is MATH-500's `answer` field
    paper = data.load_examples("math", "test", source="local", subjects=list(data.PAPER_MATH_SUBJECTS))
    assert len(paper) == 306 and {e.subject for e in paper} == set(data.PAPER_MATH_SUBJECTS)
    # the training file spells two subjects without spaces; both spellings select the same problems
    assert data.load_examples("math", "test", subjects=["CountingAndProbability", "NumberTheory"]) == \
        data.load_examples("math", "test", subjects=["Counting & Probability", "Number Theory"])
    train = data.load_examples("math", "train", source="local", subjects=["NumberTheory"])
    assert len(train) == 190 and {e.subject for e in train} == {"Number Theory"}


def test_subjects_are_validated_in_the_grid():
    from cotlib.schemas import EvaluateConfig

    assert EvaluateConfig(dataset="math", subjects=["NumberTheory"]).subjects == ["Number Theory"]
    with pytest.raises(ValueError, match="unknown math subject 'Topology'; known: Prealgebra, Algebra"):
        EvaluateConfig(dataset="math", subjects=["Topology"])
    with pytest.raises(ValueError, match="dataset 'svamp' has no subjects"):
        EvaluateConfig(dataset="svamp", subjects=["Algebra"])


@needs_shared_data
@pytest.mark.parametrize("name", ["svamp", "gsm8k", "aqua", "math", "csqa", "obqa", "strategyqa"])
def test_no_test_question_is_among_the_training_questions(name, capsys):
    raw = data._rows(name, "train", "local")  # the paper's training file as it is
    leaked = data.train_test_overlap(name, raw, "local")
    with capsys.disabled():
        print(f"\n{name}: {len(leaked)} of the test questions are among the {len(raw)} training questions")
    assert not data.train_test_overlap(name, data.load_examples(name, "train", source="local"), "local")


def test_a_training_question_that_is_a_test_question_is_dropped_with_a_warning(tmp_path, monkeypatch, caplog):
    import json

    monkeypatch.setenv("COTLIB_DATA_DIR", str(tmp_path))
    test = [{"instruction": "Could a cat fly?", "label": "False"}, {"instruction": "Is ice cold?", "label": "True"}]
    train = [{"instruction": "Is fire hot?", "output": "True"}, {"instruction": "could a cat  FLY?", "output": "False"}]
    for rel, rows in (("testsets/strategyqa/strategyQA_test.json", test), ("paper_sft/strategyQA_onlyans.json", train)):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(json.dumps(rows))
    with caplog.at_level("WARNING"):
        kept = data.load_examples("strategyqa", "train", source="local")
    assert [e.question for e in kept] == ["Is fire hot?"]
    assert "dropped 1 training questions that are also test questions" in caplog.text


@needs_shared_data
def test_the_replayed_strategyqa_human_set_leaves_the_test_questions_out(tmp_path):
    """The release's StrategyQA human file holds all 290 test questions; a replayed set takes the CoTs of the
    training questions only."""
    from cotlib.files import read_jsonl
    from cotlib.schemas import GenerateConfig
    from cotlib.stages import run_cell

    human = data.read_json_records(data.data_root() / "paper_sft" / "stqa_human_annotation.json.gz")
    test = {data.norm_question(e.question).lower() for e in data.load_examples("strategyqa", "test", source="local")}
    assert len(test & {data.norm_question(r["instruction"]).lower() for r in human}) == 290
    run_cell("generate", tmp_path / "g", GenerateConfig(backend="replay", dataset="strategyqa", teacher="human",
                                                        level=None, filter="keep_all"))
    kept = read_jsonl(tmp_path / "g" / "sft.jsonl")
    assert len(kept) > 1900 and not {data.norm_question(r["question"]).lower() for r in kept} & test

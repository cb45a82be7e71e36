"""Each of the seven datasets through a real evaluate cell (the embedded student, real test questions from
../shared/data, the stage notebook under papermill): what a user relies on holds for every dataset."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import ROOT, needs_shared_data

pytestmark = [pytest.mark.slow, needs_shared_data]


def _smoke():
    spec = importlib.util.spec_from_file_location("datasets_smoke", ROOT / "benchmarks" / "datasets_smoke.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_dataset_renders_grades_and_records_through_an_evaluate_cell(tmp_path, embedded_model_dir, capsys):
    smoke = _smoke()
    found = smoke.run_grid(tmp_path, n=3, max_new_tokens=32, backend="transformers", project=ROOT)
    assert sorted(found) == sorted(smoke.DATASETS)
    for ds in smoke.DATASETS:
        r = smoke.report(ds, found[ds])
        with capsys.disabled():
            print(f"\n{ds}: {r}")
        assert r["n"] == 3 and r["answer_type"] and r["has_gold_and_extracted"]
        assert r["prompt_as_rendered"] == 3  # the student template around the question, as in training
        assert r["layout_as_training"] == 3  # the question reads as the training side renders it
        assert r["gold_parses"] == 3  # the grader reads this dataset's gold answers

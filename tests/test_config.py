from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cotlib.expansion import GridError, expand, load_grid


def _write(tmp_path: Path, grid: dict) -> Path:
    p = tmp_path / "params" / "g.yaml"
    p.parent.mkdir(exist_ok=True)
    p.write_text(yaml.safe_dump(grid))
    return p


def test_demo_grid_expands_with_dependencies(project_root):
    g = load_grid(project_root / "params" / "demo.yaml")
    stages = [c.stage for c in g.cells]
    assert stages.count("generate") == 3 and stages.count("sft") == 3
    assert stages.count("evaluate") == 4  # one base student + three trained
    assert stages[-1] == "figures"
    by = g.by_name()
    for c in g.cells:
        for d in c.deps:  # every dependency exists and comes earlier
            assert d in by and g.cells.index(by[d]) < g.cells.index(c)
    levels = sorted(c.config.level for c in g.cells if c.stage == "generate")
    assert levels == [1, 3, 5]
    sft = [c for c in g.cells if c.stage == "sft"]
    assert {c.config.generate_cell for c in sft} == {c.name for c in g.cells if c.stage == "generate"}
    base = [c for c in g.cells if c.stage == "evaluate" and c.config.sft_cell is None]
    assert len(base) == 1 and base[0].deps == []
    assert g.output_root == project_root / "outputs" / "demo"


def test_cell_names_are_readable_and_follow_the_config(tmp_path):
    grid = {"name": "x", "generate": {"level": [2, 4], "n_examples": 3}}
    a = expand(grid, tmp_path / "g.yaml", Path(__file__).resolve().parents[1])
    b = expand({"name": "x", "generate": {"level": [2, 4], "n_examples": 4}}, tmp_path / "g.yaml",
               Path(__file__).resolve().parents[1])
    assert a.cells[0].name.startswith("generate/demo-arith__smollm2-135m__L2__cot__")
    assert a.cells[0].name != b.cells[0].name  # another n_examples is another cell
    assert [c.name for c in a.cells] == [c.name for c in expand(grid, tmp_path / "g.yaml", Path(__file__).resolve().parents[1]).cells]


def test_unknown_key_names_file_stage_and_key(tmp_path, project_root):
    p = _write(tmp_path, {"name": "x", "generate": {"level": 1}, "sft": {"lr_rate": 0.1}})
    with pytest.raises(GridError) as err:
        load_grid(p, project_root)
    msg = str(err.value)
    assert str(p) in msg and "sft.lr_rate" in msg and "unknown key" in msg and "learning_rate" in msg


def test_bad_value_names_the_key(tmp_path, project_root):
    p = _write(tmp_path, {"name": "x", "generate": {"level": [1, 9]}})
    with pytest.raises(GridError, match=r"generate\.level: .*less than or equal to 6"):
        load_grid(p, project_root)


@pytest.mark.parametrize("grid,pattern", [
    ({"name": "x", "generate": {"dataset": "nope"}}, r"generate\.dataset: .*unknown dataset 'nope'"),
    ({"name": "x", "generate": {"teacher": "bloom-560m"}}, r"registered as a student, not a teacher"),
    ({"name": "x", "generate": {"level": []}}, r"axis 'level' is an empty list"),
    ({"name": "x", "sft": {"method": "lora"}}, r"sft: needs a generate section"),
    ({"name": "x", "bogus": 1, "generate": {}}, r"bogus: unknown key"),
    ({"name": "bad name!", "generate": {}}, r"name: .*folder-safe"),
    ({"name": "x"}, r"no stage sections"),
])
def test_grid_errors(tmp_path, project_root, grid, pattern):
    with pytest.raises(GridError, match=pattern):
        load_grid(_write(tmp_path, grid), project_root)


def test_missing_and_malformed_grid_files(tmp_path, project_root):
    with pytest.raises(GridError, match="not found"):
        load_grid(tmp_path / "absent.yaml", project_root)
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(GridError, match="not valid YAML"):
        load_grid(p, project_root)


def test_paper_grids_extend_the_base_and_test_on_the_training_dataset(project_root):
    g = load_grid(project_root / "params" / "paper" / "granularity.yaml")
    count = {s: sum(c.stage == s for c in g.cells) for s in ("generate", "sft", "evaluate", "figures")}
    assert count == {"generate": 42, "sft": 294, "evaluate": 294 + 49, "figures": 1}  # 49: 7 base students x 7 datasets
    by = g.by_name()
    for c in g.cells:
        if c.stage == "evaluate" and c.config.sft_cell:
            gen = by[by[c.config.sft_cell].config.generate_cell]
            assert c.config.dataset == gen.config.dataset
    assert all(c.config.backend == "replay" and c.config.filter == "keep_all" for c in g.cells if c.stage == "generate")
    fmt = load_grid(project_root / "params" / "paper" / "formats.yaml")
    assert fmt.name == "paper-formats" and {c.config.format for c in fmt.cells if c.stage == "generate"} == {"cot", "bsm", "rar", "sym"}
    assert {c.config.student for c in fmt.cells if c.stage == "sft"} == {"gemma-2b", "bloom-3b"}
    assert {c.config.method for c in fmt.cells if c.stage == "sft"} == {"qlora"}  # inherited from the base


def test_extends_loops_are_refused(tmp_path, project_root):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nname: b\n")
    with pytest.raises(GridError, match="loops back"):
        load_grid(tmp_path / "a.yaml", project_root)


def test_method_defaults_follow_the_paper_for_full_finetuning():
    from cotlib.schemas import SftConfig

    full = SftConfig(generate_cell="g", method="full")
    assert (full.learning_rate, full.epochs, full.batch_size * full.grad_accum, full.max_length, full.seed) == (5e-5, 3.0, 64, 4096, 100)
    q = SftConfig(generate_cell="g", method="qlora", learning_rate=1e-4)
    assert q.learning_rate == 1e-4 and q.batch_size * q.grad_accum == 64  # an explicit key wins over the default
    with pytest.raises(ValueError, match="padding_free: needs attn_implementation: flash_attention_2"):
        SftConfig(generate_cell="g", padding_free=True)


def test_the_study_grid_is_the_minimum_grid_with_one_hyper_parameter_set(project_root):
    g = load_grid(project_root / "params" / "study" / "svamp.yaml")
    count = {s: sum(c.stage == s for c in g.cells) for s in ("generate", "sft", "evaluate", "figures")}
    assert count == {"generate": 13, "sft": 33, "evaluate": 36, "figures": 1}
    gens = [c.config for c in g.cells if c.stage == "generate"]
    assert {(c.teacher, c.level, c.format) for c in gens} == {
        *{("gpt-4o", lvl, "cot") for lvl in range(1, 7)}, ("answer-only", None, "cot"), ("human", None, "cot"),
        ("gemini-1.5-flash", 3, "cot"), ("llama-3-70b", 3, "cot"), *{("gpt-4o", 3, f) for f in ("bsm", "rar", "sym")}}
    assert all(c.backend == "replay" and c.dataset == "svamp" and c.n_examples is None for c in gens)  # all 700
    sft = [c for c in g.cells if c.stage == "sft"]
    per_student = {s: sum(c.config.student == s for c in sft) for s in ("smollm2-135m", "gemma-3-270m", "qwen2.5-coder-0.5b")}
    assert per_student == {"smollm2-135m": 13, "gemma-3-270m": 13, "qwen2.5-coder-0.5b": 7}
    assert {c.lineage["teacher"] for c in sft if c.config.student == "qwen2.5-coder-0.5b"} == {"gpt-4o", "answer-only"}
    hyper = {(c.config.method, c.config.learning_rate, c.config.epochs, c.config.batch_size, c.config.lora_r,
              c.config.lora_alpha, c.config.seed) for c in sft}
    assert len(hyper) == 1  # one hyper-parameter set, identical across levels, teachers and formats
    evals = [c.config for c in g.cells if c.stage == "evaluate"]
    assert sum(c.sft_cell is None for c in evals) == 3  # each student before fine-tuning
    assert all(c.dataset == "svamp" and c.split == "test" and c.n_examples is None and c.temperature == 0 for c in evals)


def test_pinning_precision_renames_no_cell_and_the_study_pins_fp32(project_root):
    """A study resumed on a machine with native bf16 must not switch precision halfway, nor lose its done
    cells: `precision:` is recorded, not part of a cell's name."""
    from cotlib.cells import config_hash
    from cotlib.schemas import SftConfig

    hashes = {p: config_hash("sft", SftConfig(generate_cell="generate/g", precision=p)) for p in ("auto", "fp32", "bf16")}
    assert len(set(hashes.values())) == 1
    g = load_grid(project_root / "params" / "study" / "svamp.yaml")
    assert {c.config.precision for c in g.cells if c.stage == "sft"} == {"fp32"}


def test_results_warn_when_a_student_was_trained_in_two_precisions():
    import warnings

    import pandas as pd

    from cotlib.results import COLUMNS, _warn_mixed_precision

    rows = [{"student": "s", "train_precision": "fp32"}, {"student": "s", "train_precision": "bf16"},
            {"student": "t", "train_precision": "fp32"}, {"student": "t", "train_precision": None}]
    with pytest.warns(UserWarning, match=r"s: trained in bf16 and fp32.*Pin `precision:`"):
        _warn_mixed_precision(pd.DataFrame(rows, columns=COLUMNS))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_mixed_precision(pd.DataFrame(rows[2:], columns=COLUMNS))  # one precision (and an unknown): quiet

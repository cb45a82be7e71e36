"""The real notebooks, end to end through papermill, on a grid small enough for a test."""

from __future__ import annotations

import json

import pytest
import yaml

from cotlib import runner
from cotlib.expansion import load_grid

pytestmark = pytest.mark.slow


def test_real_notebooks_run_the_whole_loop(tmp_project, embedded_model_dir):
    grid = {
        "name": "tiny", "output_dir": str(tmp_project / "outputs"),
        "generate": {"n_examples": 4, "level": [1, 5], "filter": "keep_all", "max_new_tokens": 32, "batch_size": 4},
        "sft": {"max_steps": 2, "batch_size": 2, "max_length": 256},
        "evaluate": {"n_examples": 4, "max_new_tokens": 24, "batch_size": 4},
        "figures": {"formats": ["png", "pdf"]},
    }
    path = tmp_project / "params" / "tiny.yaml"
    path.write_text(yaml.safe_dump(grid))
    g = load_grid(path)
    states = runner.run(g, log=lambda _: None, jobs=2)  # as `make demo` runs its grid
    assert [s.state for s in states] == ["done"] * len(g.cells), [(s.cell.name, s.detail) for s in states]

    for c in g.cells:
        d = g.output_root / c.name
        for f in ("config.yaml", "provenance.json", "metrics.json", "executed.ipynb"):
            assert (d / f).exists(), (c.name, f)
        prov = json.loads((d / "provenance.json").read_text())
        assert prov["config_hash"] == c.config_hash and prov["packages"]["torch"] and prov["device"]["type"] in ("cpu", "cuda")
    gen = [c for c in g.cells if c.stage == "generate"]
    rows = [json.loads(x) for x in (g.output_root / gen[0].name / "records.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {r["status"] for r in rows} <= {"ok", "failed"}
    ev = json.loads((g.output_root / [c for c in g.cells if c.stage == "evaluate"][-1].name / "metrics.json").read_text())
    assert ev["n"] == 4 and 0 <= ev["ci95_low"] <= ev["accuracy"] <= ev["ci95_high"] <= 1
    assert 0 < ev["median_output_tokens"] <= ev["p90_output_tokens"] <= ev["max_output_tokens"] <= 24  # max_new_tokens
    assert ev["lineage"]["level"] == 5 and ev["lineage"]["method"] == "lora"
    last_sft = [c for c in g.cells if c.stage == "sft"][-1]
    sft = json.loads((g.output_root / last_sft.name / "metrics.json").read_text())
    assert ev["decoding"]["stop"] == sft["stop_token"] == "<|im_end|>"  # evaluation stops at the trained end token
    fig = g.output_root / "figures"
    assert (fig / "accuracy_vs_level.png").stat().st_size > 10_000 and (fig / "accuracy_vs_level.pdf").exists()
    assert (g.output_root / "results.csv").exists() and (g.output_root / "results.parquet").exists()

    # a second run finds everything done and executes nothing
    again = runner.run(load_grid(path), log=lambda _: None, execute=lambda *_: pytest.fail("a finished cell ran again"))
    assert all(s.state == "done" for s in again)

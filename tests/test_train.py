from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cotlib import cells, models
from cotlib.config import SftConfig
from cotlib.files import write_jsonl
from cotlib.train import TrainError, check_method, run_sft

pytestmark = pytest.mark.slow


def _gen_cell(root: Path, n: int = 6) -> str:
    rows = [{"id": f"q{i}", "question": f"What is {i} + {i}?", "completion": f"{i} + {i} = {2 * i}.\nThe answer is {2 * i}"}
            for i in range(n)]
    write_jsonl(root / "generate" / "g" / "sft.jsonl", rows)
    return "generate/g"


def test_lora_steps_change_the_adapter_and_not_the_base(tmp_path, embedded_model_dir):
    cfg = SftConfig(generate_cell=_gen_cell(tmp_path), max_steps=3, batch_size=2, learning_rate=1e-3, max_length=128)
    cell = tmp_path / "sft" / "s"
    metrics = cells.finish(cell, "sft", cfg, run_sft(cfg, cell))
    assert metrics["steps"] == 3 and metrics["n_train"] == 6 and metrics["too_long"] == 0
    weights = load_file(cell / "adapter" / "adapter_model.safetensors")
    assert weights and all("lora_" in k for k in weights)  # only adapter weights are saved
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: training moved it

    base = models.load_model(models.EMBEDDED)
    tuned = models.load_model(models.EMBEDDED, adapter=cell / "adapter")
    base_sd = base.state_dict()
    for name, p in tuned.named_parameters():
        if "base_layer" in name:  # the frozen base weights are untouched
            key = name.replace("base_model.model.", "").replace("base_layer.", "")
            assert torch.equal(p, base_sd[key])
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert not torch.allclose(base(x).logits, tuned(x).logits)
    assert len(json.loads((cell / "loss.json").read_text())) == 3
    assert json.loads((cell / "provenance.json").read_text())["inputs"]["train"]["sha256"]


def test_qlora_on_cpu_stops_before_loading_and_suggests_lora():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(TrainError, match="needs a CUDA GPU.*use method: lora"):
        check_method("qlora")


def test_over_long_examples_are_refused_when_asked(tmp_path, embedded_model_dir):
    cfg = SftConfig(generate_cell=_gen_cell(tmp_path), max_steps=1, max_length=16, too_long="error")
    with pytest.raises(TrainError, match=r"6 of 6 examples exceed max_length=16"):
        run_sft(cfg, tmp_path / "sft" / "s")

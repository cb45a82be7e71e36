"""GPU paths: QLoRA (4-bit NF4, bf16 compute) and bf16 LoRA. Skipped without CUDA; run them on a
GPU machine with `pytest -m gpu`."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from cotlib.schemas import EvaluateConfig, SftConfig
from cotlib.stages import run_cell
from tests.test_train import _gen_cell, run_sft

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_gpu_training_uses_bf16_and_moves_the_adapter(tmp_path, method, embedded_model_dir):
    gen = _gen_cell(tmp_path, n=16)
    cfg = SftConfig(generate_cell=gen, method=method, max_steps=4, batch_size=4, learning_rate=1e-3, max_length=128)
    cell = tmp_path / "sft" / method
    m = run_sft(cfg, cell)
    assert m["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert m["quantization"] == ("nf4" if method == "qlora" else None)
    assert m["steps"] == 4 and m["peak_memory_mb"] > 0 and m["tokens_per_second"] > 0
    weights = load_file(cell / "adapter" / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)
    ev = EvaluateConfig(sft_cell=f"sft/{method}", n_examples=8, max_new_tokens=16)
    out = run_cell("evaluate", tmp_path / "evaluate" / method, ev, inputs={"student": cell},
                   lineage={"method": method})
    assert out["n"] == 8 and out["lineage"]["method"] == method

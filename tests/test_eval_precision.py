"""bf16 and fp32 greedy evaluation agree where they should: on real SVAMP prompts, the bf16 model (as
`models.load_model` loads it for the transformers engine) writes the fp32 tokens until fp32's own choice
was a near-tie. bf16 is not the CPU default because such ties are common (benchmarks/eval_speed.py: 7 of 64
outputs identical); this test guards the path itself, e.g. against a broken mask or cast in bf16."""

from __future__ import annotations

import pytest
import torch

from cotlib import data, generation, hardware, models, prompts
from cotlib.evaluate import STUDENT_SPECIAL_TOKENS
from tests.conftest import needs_shared_data

# bf16 keeps 8 bits of mantissa: logits of size ~20 move by ~0.1, so a top-2 gap under this is a tie
NEAR_TIE_LOGITS = 0.5


def _greedy(dtype: str, enc, eos: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    model = models.load_model(models.EMBEDDED, dtype=dtype)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=48, do_sample=False, eos_token_id=eos, pad_token_id=pad_id,
                             output_scores=True, return_dict_in_generate=True)
    return out.sequences[:, enc["input_ids"].shape[1]:], torch.stack(out.scores, 1).float()


@needs_shared_data
def test_bf16_greedy_follows_fp32_until_a_near_tie(embedded_model_dir):
    native = hardware.native_bf16()
    if not native:
        pytest.skip("no native bf16 here: bf16 inference is not offered")
    template, tok = prompts.template_for(models.EMBEDDED), models.load_tokenizer(models.EMBEDDED)
    tok.padding_side = "left"
    tok.pad_token = tok.pad_token or tok.eos_token
    texts = [template.render(ex.question) for ex in data.load_examples("svamp", "test", 8)]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=STUDENT_SPECIAL_TOKENS).to(hardware.device())
    eos = generation.stop_token_ids(tok, template.stop)
    ref, scores = _greedy("float32", enc, eos, tok.pad_token_id)
    low, _ = _greedy("bfloat16", enc, eos, tok.pad_token_id)
    top2 = scores.topk(2, dim=-1).values
    margin = top2[..., 0] - top2[..., 1]
    agreed = 0
    for row in range(len(texts)):
        a, b = ref[row].tolist(), low[row].tolist()
        split = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), None)
        if split is not None:
            assert margin[row, split] < NEAR_TIE_LOGITS, (
                f"question {row}: bf16 left fp32's greedy path at token {split}, where fp32's top-2 gap was "
                f"{margin[row, split]:.3f} logits (not a near-tie)")
        agreed += len(a) if split is None else split
    assert agreed >= 8 * 10  # the two precisions did walk together for a while: the check compared something

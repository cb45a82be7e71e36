from __future__ import annotations

import pytest

from cotlib import models
from cotlib.generation import generate

pytestmark = pytest.mark.slow


def test_embedded_smollm2_is_cached_loads_and_generates(embedded_model_dir):
    assert (embedded_model_dir / "model.safetensors").stat().st_size > 100e6
    tok = models.load_tokenizer(models.EMBEDDED)
    model = models.load_model(models.EMBEDDED)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in ("What is 2+3?", "What is the capital of France?")]
    out = generate(model, tok, prompts, max_new_tokens=24, batch_size=2, stop="<|im_end|>")
    assert "5" in out[0].text
    assert "Paris" in out[1].text
    assert not out[0].hit_limit  # it stopped at its end token


def test_batched_generation_matches_one_at_a_time(embedded_model_dir):
    tok = models.load_tokenizer(models.EMBEDDED)
    model = models.load_model(models.EMBEDDED)
    qs = ["Name a color.", "Tom has 3 apples and buys 4 more. How many apples does he have?", "Say hi."]
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True) for q in qs]
    batched = [g.text for g in generate(model, tok, prompts, max_new_tokens=20, batch_size=3, stop="<|im_end|>")]
    single = [generate(model, tok, [p], max_new_tokens=20, batch_size=1, stop="<|im_end|>")[0].text for p in prompts]
    assert batched == single


def test_registry_knows_the_papers_models():
    for name in ("llama-3.2-1b", "llama-3.2-3b", "gemma-2b", "bloom-560m", "bloom-1b1", "bloom-1b7", "bloom-3b"):
        assert models.spec(name).role == "student"
    assert models.spec("gemma-2b").template == "gemma" and models.spec("bloom-3b").template == "alpaca"
    with pytest.raises(models.ModelError, match="unknown model 'gpt-5'"):
        models.spec("gpt-5")

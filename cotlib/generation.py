"""Batched generation: transformers (length-sorted, left-padded batches) or vLLM, behind one `Engine`.

Both engines get the same token ids, stop at the same end tokens and decode with the same rule
(`finish`), so their outputs can be compared token for token. One prompt at a time is what the paper's
scripts did; batching is the fast path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from tqdm.auto import tqdm

if TYPE_CHECKING:
    from .schemas import Decoding


@dataclass(frozen=True)
class Generation:
    text: str
    new_tokens: int
    hit_limit: bool  # stopped by max_new_tokens, not by the end token


class Engine(Protocol):
    name: str

    def generate(self, prompts: list[str]) -> list[Generation]: ...

    def close(self) -> None: ...


def stop_token_ids(tokenizer, stop: str | None) -> list[int]:
    """The end-of-turn token(s) generation stops at: the template's stop token, else the EOS."""
    ids = []
    if stop is not None:
        tid = tokenizer.convert_tokens_to_ids(stop)
        if tid is not None and tid != tokenizer.unk_token_id:
            ids.append(tid)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def finish(tokenizer, toks: list[int], eos: list[int], pad_id: int | None) -> Generation:
    """Cut generated ids at the first end token and decode: one rule for every backend."""
    ended = next((k for k, t in enumerate(toks) if t in eos), None)
    kept = toks[:ended] if ended is not None else list(toks)
    while kept and kept[-1] == pad_id and pad_id not in eos:
        kept.pop()
    return Generation(
        text=tokenizer.decode(kept, skip_special_tokens=True).strip(),
        new_tokens=len(kept) + (1 if ended is not None else 0),
        hit_limit=ended is None,
    )


def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int = 16,
             stop: str | None = None, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, desc: str = "generate",
             add_special_tokens: bool = False) -> list[Generation]:
    """Generate for every prompt with a transformers model, in the input order."""
    import torch

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    eos = stop_token_ids(tokenizer, stop)
    lengths = [len(tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    results: list[Generation | None] = [None] * len(prompts)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    torch.manual_seed(seed)
    dev = next(model.parameters()).device
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
        idx = order[start:start + batch_size]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                        add_special_tokens=add_special_tokens).to(dev)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=eos,
                                 pad_token_id=tokenizer.pad_token_id, **sampling)
        new = out[:, enc["input_ids"].shape[1]:]
        for row, i in enumerate(idx):
            results[i] = finish(tokenizer, new[row].tolist(), eos, tokenizer.pad_token_id)
    return [r for r in results if r is not None]


class TransformersEngine:
    """A transformers model (with a LoRA adapter applied, not merged, when given)."""

    name = "transformers"

    def __init__(self, model_name: str, tokenizer, decoding: Decoding, *, stop: str | None = None, batch_size: int = 16,
                 adapter: Path | None = None, path: Path | None = None, add_special_tokens: bool = False,
                 desc: str = "generate", dtype: str = "auto", **_: object):
        from . import models

        self.tok, self.decoding, self.stop, self.batch_size = tokenizer, decoding, stop, batch_size
        self.add_special_tokens, self.desc = add_special_tokens, desc
        self.model = models.load_model(model_name, adapter=adapter, path=path, dtype=dtype)

    def generate(self, prompts: list[str]) -> list[Generation]:
        d = self.decoding
        return generate(self.model, self.tok, prompts, max_new_tokens=d.max_new_tokens, batch_size=self.batch_size,
                        stop=self.stop, temperature=d.temperature, top_p=d.top_p, seed=d.seed, desc=self.desc,
                        add_special_tokens=self.add_special_tokens)

    def close(self) -> None:
        import gc

        from . import hardware

        del self.model
        gc.collect()
        hardware.empty_device_cache()  # before vLLM claims its share of the GPU


# Below this many tokens of output vLLM's engine start on a CPU costs more than it saves. Measured here
# (benchmarks/eval_speed.py): batched transformers ~120 tokens/s, vLLM ~315, a start of 10-36 s, so they
# break even between ~1,900 and ~7,000 tokens produced. prompts x max_new_tokens is an upper bound on
# what a job produces, so the bound sits low: only jobs surely too small for vLLM skip it.
VLLM_MIN_TOKENS = 2048


def fastest_engine(n_prompts: int | None = None, max_new_tokens: int | None = None) -> str:
    """The engine `auto` means: vLLM where its CPU build runs on a CPU machine (its greedy outputs match
    transformers' token for token in fp32: 64/64 SVAMP questions, 2.7x faster here) and the job is big
    enough to repay its start (`VLLM_MIN_TOKENS`), else transformers (on a GPU the two part after bf16
    near-ties, so vLLM is a choice to make with its parity check)."""
    from . import hardware, vllm_backend

    if n_prompts is not None and max_new_tokens is not None and n_prompts * max_new_tokens < VLLM_MIN_TOKENS:
        return "transformers"
    return "vllm" if hardware.device() == "cpu" and vllm_backend.available() else "transformers"


def open_engine(kind: str, model_name: str, tokenizer, prompts: list[str], decoding: Decoding, **kw) -> Engine:
    """An engine for `prompts` (vLLM sizes its context from them); kind 'auto' is `fastest_engine()`."""
    kind = fastest_engine(len(prompts), decoding.max_new_tokens) if kind == "auto" else kind
    if kind == "vllm":
        from .vllm_backend import VllmEngine

        return VllmEngine(model_name, tokenizer, prompts, decoding, **kw)
    return TransformersEngine(model_name, tokenizer, decoding, **kw)

"""Batched greedy (or sampled) generation with transformers: length-sorted batches, left padding,
stop at the end token. One prompt at a time is what the paper's scripts did; this is the fast path."""

from __future__ import annotations

from dataclasses import dataclass

from tqdm.auto import tqdm


@dataclass(frozen=True)
class Generation:
    text: str
    new_tokens: int
    hit_limit: bool  # stopped by max_new_tokens, not by the end token


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


def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int = 16,
             stop: str | None = None, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, desc: str = "generate",
             add_special_tokens: bool = False) -> list[Generation]:
    """Generate for every prompt, in the input order."""
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

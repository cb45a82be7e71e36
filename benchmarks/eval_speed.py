"""Evaluation throughput of SmolLM2-135M on test questions, two ways: one prompt at a time, as the
paper's scripts did, and in length-sorted, left-padded batches, as cotlib does. Prints both
throughputs, their ratio (goal: >= 5x) and whether the greedy answers are identical.

    python benchmarks/eval_speed.py [--dataset svamp] [--n 64] [--batch-size 32] [--max-new-tokens 128]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from cotlib import data, models
from cotlib.config import template_for
from cotlib.generation import generate


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="svamp")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=128)
    a = p.parse_args()
    try:
        examples = data.load_examples(a.dataset, "test", a.n)
    except data.DataError:
        a.dataset, examples = "demo-arith", data.load_examples("demo-arith", "test", a.n)
    template = template_for(models.EMBEDDED)
    tok, model = models.load_tokenizer(models.EMBEDDED), models.load_model(models.EMBEDDED)
    prompts = [template.render(ex.question) for ex in examples]
    kw = {"max_new_tokens": a.max_new_tokens, "stop": template.stop}

    start = time.perf_counter()
    single = [generate(model, tok, [q], batch_size=1, **kw)[0] for q in prompts]
    t_single = time.perf_counter() - start
    start = time.perf_counter()
    batched = generate(model, tok, prompts, batch_size=a.batch_size, **kw)
    t_batched = time.perf_counter() - start

    tokens = sum(g.new_tokens for g in batched)
    same = sum(x.text == y.text for x, y in zip(single, batched))
    print(f"{len(prompts)} {a.dataset} test questions, SmolLM2-135M, greedy, max {a.max_new_tokens} new tokens, "
          f"{torch.get_num_threads()} CPU threads")
    print(f"one at a time : {t_single:7.1f} s  {len(prompts) / t_single:6.2f} questions/s  {tokens / t_single:7.1f} tokens/s")
    print(f"batched ({a.batch_size:3d}) : {t_batched:7.1f} s  {len(prompts) / t_batched:6.2f} questions/s  {tokens / t_batched:7.1f} tokens/s")
    print(f"speed-up: {t_single / t_batched:.1f}x (goal >= 5x); identical greedy outputs: {same}/{len(prompts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

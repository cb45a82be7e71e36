"""Training speed of LoRA SFT on this machine, against its physical limit, on real SVAMP CoTs.

1. The ceiling: fp32 and bf16 matmul throughput (GFLOP/s, torch), and whether the CPU has native bf16.
2. Each change of the fast path on its own, then all together, side by side on the same data (GPT-4o's
   released level-3 SVAMP CoTs), each variant in its own process: bf16 autocast (only where bf16 is
   native), no gradient checkpointing, batches grouped by length, trl's LM head scoring only the
   completion tokens on a CPU, and the thread count. Non-padding tokens/s, the share of pad tokens,
   and the achieved training FLOP rate as a share of the matmul ceiling.
3. Today's path (fp32, gradient checkpointing, data order, every position scored) and the fast path
   for `--steps` steps: both loss curves, and their means over windows of 10 steps. Where the fast path
   is bf16, it runs once more in fp32 on the same batches: what the precision alone changes, step by step.

FLOP formula (LoRA): 4 x P_body x tokens + 4 x P_head x completion tokens, where P_body counts the
weights of every linear layer below the LM head and P_head the LM head's: the forward pass (2P) and the
backward pass through the activations (2P); the LoRA weights' own gradients are under 1% and not
counted, nor is attention's quadratic term. Full fine-tuning would be 6P.

    python benchmarks/sft_speed.py [--student smollm2-135m] [--examples 400] [--steps 50] [--quick-steps 12]

The last line reads `speedup: N.Nx` (fast path over today's path, non-padding tokens/s, same run).
On a GPU it also measures QLoRA, bf16 LoRA and full fine-tuning.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = r"""
import json, os, sys, time, torch
from pathlib import Path
from transformers import TrainerCallback
from cotlib import models, train
from cotlib.schemas import SftConfig
from cotlib.files import read_jsonl

spec = json.loads(sys.argv[1]); root = Path(sys.argv[2])
if spec.pop("score_every_position", False):
    train._score_only_completion_tokens_on_cpu = lambda: False   # today's path: trl scores every position
threads = spec.pop("threads", None)
if threads:
    torch.set_num_threads(threads)
cfg = SftConfig.model_validate({"generate_cell": "generate/g", "save_steps": 100000, **spec})
tok = models.load_tokenizer(cfg.student)
pairs, _ = train.build_dataset(cfg, read_jsonl(root / "generate" / "g" / "sft.jsonl"), tok)
trainer = train.make_trainer(cfg, pairs, tok, root / "out")
c, sizes, seconds = trainer.data_collator, [], []
def collate(features):  # the dataloader fetches ahead of the step: count each batch as it is made, in order
    before = c.real
    out = c(features)
    sizes.append(c.real - before)
    return out
trainer.data_collator = collate
class Clock(TrainerCallback):
    def on_step_begin(self, *a, **k): self.t = time.perf_counter()
    def on_step_end(self, *a, **k): seconds.append(time.perf_counter() - self.t)
trainer.add_callback(Clock())
trainer.train()
ga = trainer.args.gradient_accumulation_steps
steps = [(t, sum(sizes[i * ga:(i + 1) * ga])) for i, t in enumerate(seconds)]
timed = steps[1:] or steps  # the first step pays one-off allocation; it is left out of the rate
print("RESULT " + json.dumps({
    "tokens_per_second": sum(n for _, n in timed) / sum(t for t, _ in timed),
    "pad_share": 1 - c.real / c.padded, "real_tokens": c.real, "padded_tokens": c.padded,
    "seconds": sum(t for t, _ in steps), "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
    "speed": trainer.cotlib_speed, "precision": train.hardware.train_precision(cfg.precision)}))
"""


def matmul_gflops(dtype, n: int, budget_s: float = 3.0) -> float:
    """Sustained square-matmul throughput, timed over about `budget_s` seconds."""
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    k, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget_s:
        a @ b
        k += 1
    return 2 * n**3 * k / (time.perf_counter() - start) / 1e9


def linear_params(student: str) -> tuple[int, int]:
    """Weights on the matmul path: every linear layer below the LM head, and the LM head."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from cotlib import models

    config = AutoConfig.from_pretrained(models.resolve_path(student))  # outside the meta context: a first use converts the model
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(config)
    head = m.get_output_embeddings()
    body = sum(mod.weight.numel() for mod in m.modules() if isinstance(mod, torch.nn.Linear) and mod is not head)
    return body, head.weight.numel()


def completion_share(root: Path, student: str) -> float:
    """Share of non-padding tokens that are completion tokens (the only positions a compact head scores)."""
    from cotlib import models, prompts
    from cotlib.files import read_jsonl

    tok, tpl = models.load_tokenizer(student), prompts.template_for(student)
    rows = read_jsonl(root / "generate" / "g" / "sft.jsonl")
    whole = sum(len(tok(tpl.render(r["question"]) + r["completion"])["input_ids"]) for r in rows)
    prompt = sum(len(tok(tpl.render(r["question"]))["input_ids"]) for r in rows)
    return 1 - prompt / whole


def run(spec: dict, root: Path) -> dict:
    """One variant in its own process, so its memory and thread settings are its own."""
    work = Path(tempfile.mkdtemp(dir=root))
    (work / "generate").symlink_to(root / "generate")
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(spec), str(work)], capture_output=True, text=True)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        return {"error": (out.stderr or out.stdout).strip().splitlines()[-1][:300]}
    return json.loads(line[len("RESULT "):])


def print_precision_check(fp32: dict, bf16: dict) -> None:
    """bf16 autocast against fp32 on the same batches (the fast path's, in the same order): what precision
    alone changes in the loss curve, step by step (the speed issue's bound: within 2%)."""
    rel = [100 * (b / f - 1) for f, b in zip(fp32["losses"], bf16["losses"])]
    print(f"\nbf16 autocast against fp32, the fast path's own batches ({len(rel)} steps): fp32 {fp32['tokens_per_second']:.1f} "
          f"tokens/s, bf16 {bf16['tokens_per_second']:.1f} ({bf16['tokens_per_second'] / fp32['tokens_per_second']:.1f}x)")
    for i in range(0, len(rel), 10):
        print(f"  steps {i + 1:2d}-{min(i + 10, len(rel)):2d}: fp32 " + " ".join(f"{x:.3f}" for x in fp32["losses"][i:i + 10])
              + "\n                 bf16 " + " ".join(f"{x:.3f}" for x in bf16["losses"][i:i + 10]))
    mean = 100 * (statistics.fmean(bf16["losses"]) / statistics.fmean(fp32["losses"]) - 1)
    print(f"per-step loss, bf16 against fp32: largest difference {max(rel, key=abs):+.2f}%, mean |difference| "
          f"{statistics.fmean(abs(x) for x in rel):.2f}%, mean loss {mean:+.2f}%")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", default="smollm2-135m")
    p.add_argument("--examples", type=int, default=400)
    p.add_argument("--steps", type=int, default=50, help="steps of today's path and the fast path (loss curves)")
    p.add_argument("--quick-steps", type=int, default=12, help="steps of each single-change variant (0: skip them)")
    a = p.parse_args()

    import torch

    from cotlib import hardware
    from cotlib.schemas import GenerateConfig
    from cotlib.stages import run_cell

    cuda = torch.cuda.is_available()
    native_bf16 = cuda and torch.cuda.is_bf16_supported() or hardware.cpu_native_bf16()
    print(f"device: {hardware.device_info()}")
    if not cuda:
        fp32 = matmul_gflops(torch.float32, 2048)
        bf16 = matmul_gflops(torch.bfloat16, 2048 if native_bf16 else 256)
        print(f"matmul ceiling: fp32 {fp32:.0f} GFLOP/s, bf16 {bf16:.1f} GFLOP/s "
              f"({'native' if native_bf16 else 'NOT native here: emulated'} bf16)")
        ceiling = bf16 if native_bf16 else fp32
    else:
        ceiling = None
    body, head = linear_params(a.student)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run_cell("generate", root / "generate" / "g", GenerateConfig(
            backend="replay", dataset="svamp", teacher="gpt-4o", level=3, filter="keep_all", n_examples=a.examples))
        share = completion_share(root, a.student)
        print(f"data: {a.examples} GPT-4o level-3 SVAMP CoTs from the release; {a.student}, LoRA r16 on all linear "
              f"layers, batch 8; completion tokens are {100 * share:.0f}% of the non-padding tokens")
        print(f"FLOPs per token: 4 x {body / 1e6:.0f}M (linear layers) + 4 x {head / 1e6:.0f}M (LM head) x completion share")

        def flop_rate(r: dict) -> float:
            return r["tokens_per_second"] * (4 * body + 4 * head * share) / 1e9

        base = {"student": a.student, "method": "lora", "batch_size": 8, "max_length": 1024, "learning_rate": 2e-4}
        today = {**base, "gradient_checkpointing": True, "group_by_length": False, "score_every_position": True,
                 "precision": "fp32"}
        quick = [("today's path (fp32, checkpointing, data order, every position scored)", today)]
        if native_bf16:
            quick.append(("  + bf16 autocast only", {**today, "precision": "bf16"}))
        quick += [
            ("  + no gradient checkpointing only", {**today, "gradient_checkpointing": False}),
            ("  + batches grouped by length only", {**today, "group_by_length": True}),
            ("  + LM head scores completion tokens only", {**today, "score_every_position": False}),
            ("  + 1 thread instead of 2", {**today, "threads": 1}),
        ]
        if not a.quick_steps:
            quick = []  # --quick-steps 0: only today's path against the fast path
        print(f"\neach change on its own ({a.quick_steps} steps, first step not timed):")
        print(f"{'variant':72s} {'tokens/s':>9s} {'pad':>6s} {'GFLOP/s':>8s} {'of peak':>8s}  (peak: the {'bf16' if ceiling and native_bf16 else 'fp32'} matmul ceiling)")
        for label, spec in quick:
            r = run({**spec, "max_steps": a.quick_steps}, root)
            if "error" in r:
                print(f"{label:72s} failed: {r['error']}")
                continue
            peak = f"{100 * flop_rate(r) / ceiling:7.0f}%" if ceiling else "      —"
            print(f"{label:72s} {r['tokens_per_second']:9.1f} {100 * r['pad_share']:5.0f}% {flop_rate(r):8.1f} {peak}")

        print(f"\ntoday's path against the fast path, {a.steps} steps each:")
        slow = run({**today, "max_steps": a.steps}, root)
        fast = run({**base, "max_steps": a.steps}, root)
        for label, r in (("today's path", slow), ("fast path (cotlib's defaults)", fast)):
            if "error" in r:
                print(f"{label}: failed: {r['error']}")
                return 1
            peak = f", {100 * flop_rate(r) / ceiling:.0f}% of the matmul ceiling" if ceiling else ""
            print(f"{label:32s} {r['tokens_per_second']:7.1f} non-padding tokens/s, pad {100 * r['pad_share']:.0f}%, "
                  f"{flop_rate(r):.1f} GFLOP/s{peak}; {r['precision']}, {r['speed']}")
        print("\nloss per step (today / fast):")
        for i in range(0, a.steps, 10):
            w_slow, w_fast = slow["losses"][i:i + 10], fast["losses"][i:i + 10]
            diff = 100 * (statistics.fmean(w_fast) / statistics.fmean(w_slow) - 1)
            print(f"  steps {i + 1:2d}-{i + len(w_slow):2d}: " + " ".join(f"{x:.3f}" for x in w_slow)
                  + "\n               " + " ".join(f"{x:.3f}" for x in w_fast)
                  + f"   window means {statistics.fmean(w_slow):.3f} / {statistics.fmean(w_fast):.3f} ({diff:+.1f}%)")
        overall = 100 * (statistics.fmean(fast["losses"]) / statistics.fmean(slow["losses"]) - 1)
        print(f"mean loss over {a.steps} steps: {statistics.fmean(slow['losses']):.4f} / {statistics.fmean(fast['losses']):.4f} "
              f"({overall:+.1f}%); the fast path's grouped batches hold other examples at each step, so single steps "
              f"differ while the means agree")
        if fast["precision"] == "bf16":
            same_batches = run({**base, "max_steps": a.steps, "precision": "fp32"}, root)
            if "error" not in same_batches:
                print_precision_check(same_batches, fast)
        if cuda:
            for label, spec in (("qlora", {**base, "method": "qlora"}), ("full", {**base, "method": "full", "batch_size": 8})):
                r = run({**spec, "max_steps": a.quick_steps}, root)
                print(f"{label}: {r.get('tokens_per_second', float('nan')):.0f} tokens/s {r.get('error', '')}")
        print(f"speedup: {fast['tokens_per_second'] / slow['tokens_per_second']:.1f}x")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())

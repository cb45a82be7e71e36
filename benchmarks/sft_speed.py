"""Training throughput and peak memory of student SFT: LoRA on the CPU and, where a GPU is present,
QLoRA and bf16 LoRA on it, with and without padding-free batching (which needs flash-attn).

    python benchmarks/sft_speed.py [--steps 6] [--examples 48]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from cotlib import data
from cotlib.files import write_jsonl

_CHILD = """
import json, sys
from cotlib.config import SftConfig
from cotlib.train import run_sft
cfg = SftConfig.model_validate(json.loads(sys.argv[1]))
m = run_sft(cfg, sys.argv[2])
print("RESULT " + json.dumps({k: m[k] for k in ("tokens_per_second", "peak_memory_mb", "precision", "steps", "train_seconds")}))
"""


def _train_set(root: Path, n: int) -> str:
    rows = []
    for ex in data.load_examples("demo-arith", "train", n):
        rows.append({"id": ex.id, "question": ex.question,
                     "completion": f"Work through the numbers in the question step by step.\nThe answer is {ex.answer}"})
    write_jsonl(root / "generate" / "g" / "sft.jsonl", rows)
    return "generate/g"


def run(variant: dict, root: Path, steps: int) -> dict:
    """Each variant in its own process, so peak memory is its own."""
    cfg = {"generate_cell": "generate/g", "max_steps": steps, "batch_size": 8, "max_length": 256,
           "save_steps": 10_000, **variant}
    name = "-".join(f"{k}={v}" for k, v in variant.items())
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cfg), str(root / "sft" / name)],
                         capture_output=True, text=True)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        return {"error": (out.stderr or out.stdout).strip().splitlines()[-1][:200]}
    return json.loads(line[len("RESULT "):])


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--examples", type=int, default=48)
    a = p.parse_args()
    variants = [{"method": "lora"}]
    if torch.cuda.is_available():
        variants = [{"method": "lora"}, {"method": "qlora"}, {"method": "full", "batch_size": 8, "grad_accum": 1}]
        if importlib.util.find_spec("flash_attn"):
            variants += [{"method": "qlora", "attn_implementation": "flash_attention_2", "padding_free": True}]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"SmolLM2-135M student, {a.examples} short CoT examples, batch 8, {a.steps} steps, on {device}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _train_set(root, a.examples)
        for v in variants:
            r = run(v, root, a.steps)
            label = ", ".join(f"{k}={val}" for k, val in v.items())
            if "error" in r:
                print(f"{label:60s} failed: {r['error']}")
            else:
                print(f"{label:60s} {r['tokens_per_second']:9.0f} tokens/s  peak {r['peak_memory_mb']:8.0f} MiB  {r['precision']}")
    if torch.cuda.is_available() and not importlib.util.find_spec("flash_attn"):
        print("padding-free: skipped (needs flash-attn for attn_implementation: flash_attention_2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

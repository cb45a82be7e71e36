"""The evaluate stage: a base or trained student on one test set — batched generation, grading,
accuracy with a 95% confidence interval, output-length statistics, per-example records.

The student it evaluates is handed as an input (its sft cell's folder); it reads nothing else outside
its own folder.
"""

from __future__ import annotations

import math
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import cells, data, generation, hardware, models, prompts, regrade
from .environment import Requirement
from .files import write_jsonl
from .generation import Generation
from .grading import grade
from .schemas import EvaluateConfig
from .stages import Context

# A student's prompt is tokenized with the tokenizer's own special tokens (Gemma's <bos>), as trl does in
# training; a model that saw <bos> in training and none at evaluation writes garbage.
STUDENT_SPECIAL_TOKENS = True


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval: sensible at 0% and 100%, unlike the normal approximation."""
    if n == 0:
        return (0.0, 0.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def length_stats(records: list[dict[str, Any]]) -> dict[str, float]:
    """Output length in new tokens: mean, median, 90th percentile and longest."""
    lengths = sorted(r["new_tokens"] for r in records)
    return {"mean_output_tokens": statistics.fmean(lengths), "median_output_tokens": statistics.median(lengths),
            "p90_output_tokens": lengths[math.ceil(0.9 * len(lengths)) - 1], "max_output_tokens": lengths[-1]}


def requirements(cfg: EvaluateConfig) -> list[Requirement]:
    from . import vllm_backend

    return [vllm_backend.requirement()] if cfg.backend == "vllm" else []


@dataclass(frozen=True)
class Weights:
    """What is evaluated: the registered base, plus an adapter, or a trained/merged model folder."""

    kind: str  # base, adapter, merged or full
    adapter: Path | None = None
    path: Path | None = None
    scratch: bool = False  # `path` was made for this evaluation alone and is removed after it


def lora_mode(lora: str, engine: str) -> str:
    """What `lora: auto` means for this engine: merge where vLLM runs on a CPU (its CPU LoRA kernels are the
    slow part there: the demo's trained students generated in 43-51 s as adapters, 19-25 s merged),
    else the adapter as trained (transformers applies it at little cost; vLLM on a GPU too)."""
    from . import hardware

    if lora != "auto":
        return lora
    return "merge" if engine == "vllm" and hardware.device() == "cpu" else "adapter"


def student_weights(cfg: EvaluateConfig, ctx: Context, engine: str = "transformers") -> Weights:
    """The trained student's weights (its sft cell is this cell's `student` input), merging a LoRA adapter
    first when `lora` asks for it (`lora_mode`): the sft cell's own merged copy (`merge: true`), else one
    made in this cell's folder."""
    sft_dir = ctx.input("student")
    if sft_dir is None:
        return Weights("base")
    if (sft_dir / "adapter").exists():
        if lora_mode(cfg.lora, engine) == "merge":
            kept = sft_dir / "merged"
            if (kept / "config.json").exists():
                return Weights("merged", path=kept)
            return Weights("merged", path=models.merged_model(cfg.student, sft_dir / "adapter", ctx.dir / "merged"),
                           scratch=True)
        return Weights("adapter", adapter=sft_dir / "adapter")
    if (sft_dir / "model").exists():
        return Weights("full", path=sft_dir / "model")
    raise FileNotFoundError(f"no trained weights in {sft_dir} (adapter/ or model/): run the sft cell {cfg.sft_cell!r} first")


def trained_stop_token(ctx: Context) -> str | None:
    """The end token the student was trained to emit (its sft cell's metrics), so evaluation stops there."""
    sft_dir = ctx.input("student")
    return (cells.read_metrics(sft_dir) or {}).get("stop_token") if sft_dir else None


def _generate(kind: str, cfg: EvaluateConfig, weights: Weights, tok, prompts_: list[str], stop: str | None) -> tuple[list[Generation], str]:
    engine = generation.open_engine(kind, cfg.student, tok, prompts_, cfg.decoding, stop=stop, batch_size=cfg.batch_size,
                                    adapter=weights.adapter, path=weights.path, add_special_tokens=STUDENT_SPECIAL_TOKENS,
                                    gpu_memory_utilization=cfg.gpu_memory_utilization, desc="evaluate")
    try:
        return engine.generate(prompts_), engine.name
    finally:
        engine.close()


def parity(records: list[dict[str, Any]], examples: list[data.Example], hf_gens: list[Generation]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """How often vLLM (the graded records) and transformers agree on the same prompts: text,
    extracted answer, correctness."""
    rows = []
    for r, ex, h in zip(records, examples, hf_gens):
        gh = grade(h.text, ex.answer, ex.answer_type, ex.choices)
        rows.append({"id": ex.id, "same_output": r["output"] == h.text, "same_answer": r["extracted"] == gh.extracted,
                     "same_correct": r["correct"] == gh.correct, "vllm_answer": r["extracted"],
                     "transformers_answer": gh.extracted, "vllm_output": r["output"], "transformers_output": h.text})
    n = len(rows)
    summary = {"n": n, **{k: sum(r[k] for r in rows) / n for k in ("same_output", "same_answer", "same_correct")}}
    return summary, rows


def run_evaluate(cfg: EvaluateConfig, ctx: Context) -> dict[str, Any]:
    examples = data.load_examples(cfg.dataset, cfg.split, cfg.n_examples, source=cfg.source, subjects=cfg.subjects)
    template = prompts.template_for(cfg.student)
    tok = models.load_tokenizer(cfg.student)
    stop = trained_stop_token(ctx) or template.stop
    prompts_ = [template.render(ex.question) for ex in examples]
    kind = generation.fastest_engine(len(prompts_), cfg.decoding.max_new_tokens) if cfg.backend == "auto" else cfg.backend
    weights = student_weights(cfg, ctx, kind)
    reference = _generate("transformers", cfg, weights, tok, prompts_[:cfg.parity_n], stop)[0] if cfg.parity_n else None
    t0 = time.perf_counter()
    gens, engine = _generate(kind, cfg, weights, tok, prompts_, stop)
    seconds = time.perf_counter() - t0  # model (or engine) load included
    if weights.scratch:  # a merged copy is derived from the adapter: no need to keep a model per evaluation
        shutil.rmtree(weights.path, ignore_errors=True)
    records = [{"id": ex.id, "prompt": prompt, "output": g.text, "gold": ex.answer, "answer_type": ex.answer_type,
                "choices": ex.choices, "new_tokens": g.new_tokens, "hit_limit": g.hit_limit,
                **grade(g.text, ex.answer, ex.answer_type, ex.choices).as_dict()}
               for ex, prompt, g in zip(examples, prompts_, gens)]
    write_jsonl(ctx.dir / "records.jsonl", records)
    return {
        **regrade.scores(records), **length_stats(records),
        "hit_limit": sum(r["hit_limit"] for r in records),
        "decoding": {**cfg.decoding.as_dict(), "stop": stop or tok.eos_token},
        "backend": engine, "weights": weights.kind, "generation_seconds": seconds,
        "precision": str(hardware.inference_dtype()).removeprefix("torch."),
        "lineage": {"student": cfg.student, "dataset": cfg.dataset, "method": "base" if weights.kind == "base" else None},
        **({"parity": _write_parity(ctx.dir, records, examples, reference)} if reference is not None else {}),
    }


def _write_parity(cell_dir: Path, records: list[dict[str, Any]], examples: list[data.Example], reference: list[Generation]) -> dict[str, Any]:
    summary, rows = parity(records, examples, reference)
    write_jsonl(cell_dir / "parity.jsonl", rows)
    return summary

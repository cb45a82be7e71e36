"""Score a base or trained student on one test set: batched generation, grading, accuracy with a
95% confidence interval, output-length statistics, per-example records."""

from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import cells, data, models, vllm_backend
from .config import EvaluateConfig, template_for
from .files import write_jsonl
from .generation import Generation, generate
from .grading import grade

STAGE = "evaluate"


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval: sensible at 0% and 100%, unlike the normal approximation."""
    if n == 0:
        return (0.0, 0.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _config_of(root: Path, cell: str) -> dict[str, Any]:
    path = root / cell / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else {}


def lineage(cfg: EvaluateConfig, cell_dir: Path) -> dict[str, Any]:
    """Where the evaluated student came from: teacher, level, format and method, or 'base'."""
    out: dict[str, Any] = {"student": cfg.student, "dataset": cfg.dataset, "method": "base",
                           "teacher": None, "level": None, "format": None, "train_dataset": None}
    if cfg.sft_cell:
        root = cells.grid_root(cell_dir)
        sft = _config_of(root, cfg.sft_cell)
        gen = _config_of(root, sft.get("generate_cell", "")) if sft else {}
        out.update(method=sft.get("method"), teacher=gen.get("teacher"), level=gen.get("level"),
                   format=gen.get("format"), train_dataset=gen.get("dataset"))
    return out


@dataclass(frozen=True)
class Weights:
    """What is evaluated: the registered base, plus an adapter, or a trained/merged model folder."""

    kind: str  # base, adapter, merged or full
    adapter: Path | None = None
    path: Path | None = None


def student_weights(cfg: EvaluateConfig, cell_dir: Path) -> Weights:
    """The trained student's weights, merging a LoRA adapter first when `lora: merge` asks for it."""
    if not cfg.sft_cell:
        return Weights("base")
    sft_dir = cells.grid_root(cell_dir) / cfg.sft_cell
    if (sft_dir / "adapter").exists():
        if cfg.lora == "merge":
            return Weights("merged", path=models.merged_model(cfg.student, sft_dir))
        return Weights("adapter", adapter=sft_dir / "adapter")
    if (sft_dir / "model").exists():
        return Weights("full", path=sft_dir / "model")
    raise FileNotFoundError(f"no trained weights in {sft_dir} (adapter/ or model/): run the sft cell {cfg.sft_cell!r} first")


def trained_stop_token(cfg: EvaluateConfig, cell_dir: Path) -> str | None:
    """The end token the student was trained to emit (its sft cell's metrics), so evaluation stops there."""
    if not cfg.sft_cell:
        return None
    m = cells.read_metrics(cells.grid_root(cell_dir) / cfg.sft_cell) or {}
    return m.get("stop_token")


def _transformers_generate(cfg: EvaluateConfig, weights: Weights, tok, prompts_: list[str], stop: str | None) -> list[Generation]:
    model = models.load_model(cfg.student, adapter=weights.adapter, path=weights.path)
    try:
        return generate(model, tok, prompts_, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                        stop=stop, temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed, desc="evaluate")
    finally:
        del model
        gc.collect()
        models.empty_device_cache()  # before vLLM claims its share of the GPU


def _vllm_generate(cfg: EvaluateConfig, weights: Weights, tok, prompts_: list[str], stop: str | None) -> list[Generation]:
    llm = vllm_backend.make_llm(weights.path or models.resolve_path(cfg.student), seed=cfg.seed,
                                max_model_len=vllm_backend.max_model_len(tok, prompts_, cfg.max_new_tokens),
                                lora_rank=vllm_backend.lora_rank(weights.adapter) if weights.adapter else None,
                                gpu_memory_utilization=cfg.gpu_memory_utilization)
    return vllm_backend.generate(llm, tok, prompts_, max_new_tokens=cfg.max_new_tokens, stop=stop,
                                 temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed, adapter=weights.adapter)


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


def run_evaluate(cfg: EvaluateConfig, cell_dir: str | Path) -> dict[str, Any]:
    cell_dir = Path(cell_dir)
    if cfg.backend == "vllm":
        vllm_backend.require()
    examples = data.load_examples(cfg.dataset, cfg.split, cfg.n_examples, source=cfg.source)
    weights = student_weights(cfg, cell_dir)
    cells.start(cell_dir, STAGE, cfg)
    template = template_for(cfg.student)
    tok = models.load_tokenizer(cfg.student)
    stop = trained_stop_token(cfg, cell_dir) or template.stop
    prompts_ = [template.render(ex.question) for ex in examples]
    reference = _transformers_generate(cfg, weights, tok, prompts_[:cfg.parity_n], stop) if cfg.parity_n else None
    backend = {"transformers": _transformers_generate, "vllm": _vllm_generate}[cfg.backend]
    t0 = time.perf_counter()
    gens = backend(cfg, weights, tok, prompts_, stop)
    seconds = time.perf_counter() - t0  # model (or engine) load included
    records = []
    for ex, prompt, g in zip(examples, prompts_, gens):
        gr = grade(g.text, ex.answer, ex.answer_type, ex.choices)
        records.append({"id": ex.id, "prompt": prompt, "output": g.text, "gold": ex.answer,
                        "new_tokens": g.new_tokens, "hit_limit": g.hit_limit, **gr.as_dict()})
    write_jsonl(cell_dir / "records.jsonl", records)
    n = len(records)
    correct = sum(r["correct"] for r in records)
    lo, hi = wilson_interval(correct, n)
    lengths = [r["new_tokens"] for r in records]
    return {
        "n": n, "accuracy": correct / n, "ci95_low": lo, "ci95_high": hi,
        "strict_accuracy": sum(r["strict_correct"] for r in records) / n,
        "answer_found": sum(r["answer_found"] for r in records) / n,
        "format_followed": sum(r["format_followed"] for r in records) / n,
        "mean_output_tokens": statistics.fmean(lengths), "median_output_tokens": statistics.median(lengths),
        "p90_output_tokens": sorted(lengths)[math.ceil(0.9 * n) - 1], "max_output_tokens": max(lengths),
        "hit_limit": sum(r["hit_limit"] for r in records),
        "decoding": {"do_sample": cfg.temperature > 0, "temperature": cfg.temperature, "top_p": cfg.top_p,
                     "max_new_tokens": cfg.max_new_tokens, "stop": stop or tok.eos_token, "seed": cfg.seed},
        "backend": cfg.backend, "weights": weights.kind, "generation_seconds": seconds,
        "lineage": lineage(cfg, cell_dir),
        **({"parity": _write_parity(cell_dir, records, examples, reference)} if reference is not None else {}),
    }


def _write_parity(cell_dir: Path, records: list[dict[str, Any]], examples: list[data.Example], reference: list[Generation]) -> dict[str, Any]:
    summary, rows = parity(records, examples, reference)
    write_jsonl(cell_dir / "parity.jsonl", rows)
    return summary

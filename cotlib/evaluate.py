"""Score a base or trained student on one test set: batched generation, grading, accuracy with a
95% confidence interval, output-length statistics, per-example records."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import yaml

from . import cells, data, models
from .config import EvaluateConfig, template_for
from .files import write_jsonl
from .generation import generate
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


def _student_weights(cfg: EvaluateConfig, cell_dir: Path) -> tuple[Path | None, Path | None]:
    """(adapter, full model dir) of the trained student, or (None, None) for the base model."""
    if not cfg.sft_cell:
        return None, None
    sft_dir = cells.grid_root(cell_dir) / cfg.sft_cell
    if (sft_dir / "adapter").exists():
        return sft_dir / "adapter", None
    if (sft_dir / "model").exists():
        return None, sft_dir / "model"
    raise FileNotFoundError(f"no trained weights in {sft_dir} (adapter/ or model/): run the sft cell {cfg.sft_cell!r} first")


def trained_stop_token(cfg: EvaluateConfig, cell_dir: Path) -> str | None:
    """The end token the student was trained to emit (its sft cell's metrics), so evaluation stops there."""
    if not cfg.sft_cell:
        return None
    m = cells.read_metrics(cells.grid_root(cell_dir) / cfg.sft_cell) or {}
    return m.get("stop_token")


def run_evaluate(cfg: EvaluateConfig, cell_dir: str | Path) -> dict[str, Any]:
    cell_dir = Path(cell_dir)
    examples = data.load_examples(cfg.dataset, cfg.split, cfg.n_examples, source=cfg.source)
    adapter, full = _student_weights(cfg, cell_dir)
    cells.start(cell_dir, STAGE, cfg)
    template = template_for(cfg.student)
    tok = models.load_tokenizer(cfg.student)
    if full is not None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(full).to(models.device()).eval()
    else:
        model = models.load_model(cfg.student, adapter=adapter)
    stop = trained_stop_token(cfg, cell_dir) or template.stop
    prompts_ = [template.render(ex.question) for ex in examples]
    gens = generate(model, tok, prompts_, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                    stop=stop, temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed, desc="evaluate")
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
        "hit_limit": sum(r["hit_limit"] for r in records),
        "decoding": {"do_sample": cfg.temperature > 0, "temperature": cfg.temperature, "top_p": cfg.top_p,
                     "max_new_tokens": cfg.max_new_tokens, "stop": stop or tok.eos_token, "seed": cfg.seed},
        "lineage": lineage(cfg, cell_dir),
    }

"""Teacher CoT generation: one dataset x teacher x granularity level x format per cell.

Rows are appended to records.jsonl as each batch finishes, so a killed run resumes by example id
without redoing or losing finished examples. Each row has a status: ok, filtered, or failed.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import cells, data, models, prompts
from .config import GenerateConfig
from .files import append_jsonl, iter_jsonl, write_jsonl
from .generation import generate
from .grading import grade

STAGE = "generate"


def count_steps(cot: str) -> int:
    """Reasoning steps: numbered or separate lines, else sentences (the answer line excluded)."""
    body = re.split(r"the answer is", cot, flags=re.IGNORECASE)[0].strip()
    lines = [ln for ln in body.splitlines() if ln.strip()]
    if len(lines) > 1:
        return len(lines)
    return max(1, len([s for s in re.split(r"(?<=[.!?])\s+", body) if s.strip()])) if body else 0


def _done_ids(path: Path) -> set[str]:
    return {r["id"] for r in iter_jsonl(path)} if path.exists() else set()


def _transformers_replies(cfg: GenerateConfig, todo: list[data.Example]) -> Iterator[tuple[data.Example, dict[str, Any]]]:
    """Replies chunk by chunk, so each finished chunk is saved before the next starts."""
    tok = models.load_tokenizer(cfg.teacher)
    model = models.load_model(cfg.teacher)
    chunk = cfg.batch_size * 4
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        texts = [tok.apply_chat_template(prompts.teacher_messages(ex.question, cfg.level, cfg.format),
                                         tokenize=False, add_generation_prompt=True) for ex in part]
        gens = generate(model, tok, texts, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                        temperature=cfg.temperature, seed=cfg.seed, desc=f"teacher L{cfg.level}")
        for ex, g in zip(part, gens):
            yield ex, {"cot": g.text, "new_tokens": g.new_tokens, "hit_limit": g.hit_limit}


def _row(ex: data.Example, reply: dict[str, Any], cfg: GenerateConfig) -> dict[str, Any]:
    cot = reply["cot"].strip()
    g = grade(cot, ex.answer, ex.answer_type, ex.choices)
    if not cot:
        status, reason = "failed", "empty reply"
    elif cfg.filter == "keep_correct" and not g.strict_correct:
        status, reason = "filtered", "answer line missing or disagrees with gold"
    else:
        status, reason = "ok", None
    return {"id": ex.id, "question": ex.question, "gold": ex.answer, "answer_type": ex.answer_type,
            "cot": cot, "teacher_answer": g.extracted, "teacher_correct": g.strict_correct,
            "format_followed": g.format_followed, "new_tokens": reply["new_tokens"],
            "hit_limit": reply["hit_limit"], "steps": count_steps(cot), "words": len(cot.split()),
            "status": status, "reason": reason}


def completion_for(row: dict[str, Any]) -> str:
    """The SFT target: the CoT ending in exactly one answer line (appended when the teacher left it out)."""
    cot = row["cot"].strip()
    if re.search(r"the answer is", cot, flags=re.IGNORECASE):
        return cot
    return f"{cot}\n{prompts.answer_line(row['teacher_answer'] or row['gold'])}"


def run_generate(cfg: GenerateConfig, cell_dir: str | Path) -> dict[str, Any]:
    """Generate (or resume) the teacher CoTs of one cell; write records.jsonl and sft.jsonl."""
    cell_dir = Path(cell_dir)
    examples = data.load_examples(cfg.dataset, cfg.split, cfg.n_examples, source=cfg.source)
    cells.start(cell_dir, STAGE, cfg)
    records = cell_dir / "records.jsonl"
    done = _done_ids(records)
    todo = [ex for ex in examples if ex.id not in done]
    if todo:
        for ex, reply in _transformers_replies(cfg, todo):
            append_jsonl(records, _row(ex, reply, cfg))
    wanted = {ex.id for ex in examples}
    rows = [r for r in iter_jsonl(records) if r["id"] in wanted]
    kept = [r for r in rows if r["status"] == "ok"]
    write_jsonl(cell_dir / "sft.jsonl", ({"id": r["id"], "question": r["question"], "completion": completion_for(r)} for r in kept))
    return {
        "n_examples": len(rows),
        "kept": len(kept),
        "filtered": sum(r["status"] == "filtered" for r in rows),
        "failed": sum(r["status"] == "failed" for r in rows),
        "teacher_accuracy": sum(r["teacher_correct"] for r in rows) / max(1, len(rows)),
        "format_followed": sum(r["format_followed"] for r in rows) / max(1, len(rows)),
        "mean_cot_tokens": statistics.fmean(r["new_tokens"] for r in rows) if rows else 0.0,
        "mean_cot_words": statistics.fmean(r["words"] for r in rows) if rows else 0.0,
        "mean_steps": statistics.fmean(r["steps"] for r in rows) if rows else 0.0,
        "hit_limit": sum(r["hit_limit"] for r in rows),
    }

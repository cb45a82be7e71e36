"""The generate stage: one dataset x teacher x granularity level x format per cell.

Rows are appended to records.jsonl as each reply arrives, so a killed run resumes by example id
without redoing or losing finished examples. Each row has a status: ok, filtered, or failed; a failed
row says whether it is worth retrying (an API error is; a question missing from a release is not), and
a cell with retryable failures is not done until a rerun has retried them.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from . import data, prompts
from .files import append_jsonl, atomic_write_json, drop_torn_tail, iter_jsonl, write_jsonl
from .grading import grade
from .schemas import GenerateConfig
from .stages import Context
from .teacher_backends import backend_for


def count_steps(cot: str) -> int:
    """Reasoning steps: numbered or separate lines, else sentences (the answer line excluded)."""
    body = prompts.ANSWER_RE.split(cot)[0].strip()
    lines = [ln for ln in body.splitlines() if ln.strip()]
    if len(lines) > 1:
        return len(lines)
    return max(1, len([s for s in _SENTENCE_END.split(body) if s.strip()])) if body else 0


def _latest(path: Path) -> dict[str, dict]:
    """The last row written for each example id (a retried example has several)."""
    return {r["id"]: r for r in iter_jsonl(path) if "id" in r} if path.exists() else {}


def _failed_row(ex: data.Example, reason: str, retryable: bool) -> dict[str, Any]:
    return {"id": ex.id, "question": ex.question, "gold": ex.answer, "answer_type": ex.answer_type, "cot": None,
            "teacher_answer": None, "teacher_correct": False, "format_followed": False, "new_tokens": None,
            "hit_limit": False, "steps": 0, "words": 0, "status": "failed", "reason": reason, "retryable": retryable}


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def cut_after_answer(cot: str) -> str:
    """The reply up to the end of its first answer line. A teacher that keeps going after it (a small
    model looping on "The answer is 12.") would otherwise teach the student to loop."""
    first = prompts.ANSWER_RE.search(cot)
    if first is None:
        return cot
    end = first.end()
    while True:  # to the end of the line, or of the next line when the answer sits there alone
        newline = cot.find("\n", end)
        line_end = len(cot) if newline < 0 else newline
        if cot[first.end():line_end].strip() or line_end == len(cot):
            break
        end = line_end + 1
    again = prompts.ANSWER_RE.search(cot, first.end(), line_end)
    return cot[:again.start() if again else line_end].strip()


def _row(ex: data.Example, reply: dict[str, Any], cfg: GenerateConfig) -> dict[str, Any]:
    backend = backend_for(cfg)
    extra = {k: reply[k] for k in ("attempts", "cached", "engine") if k in reply}
    if "error" in reply:
        return _failed_row(ex, reply["error"], reply.get("retryable", backend.failures_retryable)) | extra
    raw = reply["cot"].strip()
    cot = raw if backend.keeps_text else cut_after_answer(raw)  # a release is kept as released
    if not cot:
        return _failed_row(ex, "empty reply", backend.failures_retryable) | extra
    g = grade(cot, ex.answer, ex.answer_type, ex.choices)
    if cfg.filter == "keep_correct" and not g.correct:
        status, reason = "filtered", "answer line missing or disagrees with gold"
    else:
        status, reason = "ok", None
    return {"id": ex.id, "question": ex.question, "gold": ex.answer, "answer_type": ex.answer_type,
            "cot": cot, "teacher_answer": g.extracted, "teacher_correct": g.correct,
            "format_followed": g.format_followed, "new_tokens": reply["new_tokens"],
            "hit_limit": reply["hit_limit"], "steps": count_steps(cot), "words": len(cot.split()),
            "cut_chars": len(raw) - len(cot), "status": status, "reason": reason, **extra}


def completion_for(row: dict[str, Any]) -> str:
    """The SFT target: the CoT ending in exactly one answer line (appended when the teacher left it out)."""
    cot = row["cot"].strip()
    if prompts.ANSWER_RE.search(cot):
        return cot
    return f"{cot}\n{prompts.answer_line(row['teacher_answer'] or row['gold'])}"


def _retry(row: dict[str, Any]) -> bool:
    """A failed row is asked again on the next run when its failure may pass (older rows: always)."""
    return row["status"] == "failed" and row.get("retryable", True)


def run_generate(cfg: GenerateConfig, ctx: Context) -> dict[str, Any]:
    """Generate (or resume) the teacher CoTs of one cell; write records.jsonl and sft.jsonl."""
    examples = data.load_examples(cfg.dataset, cfg.split, cfg.n_examples, source=cfg.source, subjects=cfg.subjects)
    records = ctx.dir / "records.jsonl"
    drop_torn_tail(records)  # a kill mid-append: the fragment goes before anything reads or appends
    latest = _latest(records)
    todo = [ex for ex in examples if (r := latest.get(ex.id)) is None or _retry(r)]
    requests: dict[str, int] = {}
    if todo:
        requests = backend_for(cfg).produce(cfg, todo, lambda ex, reply: append_jsonl(records, _row(ex, reply, cfg)))
    latest = _latest(records)
    rows = [latest[ex.id] for ex in examples if ex.id in latest]
    kept = [r for r in rows if r["status"] == "ok"]
    export_llamafactory(ctx.dir, cfg, kept)
    write_jsonl(ctx.dir / "sft.jsonl", ({"id": r["id"], "question": r["question"], "completion": completion_for(r)} for r in kept))
    answered = [r for r in rows if r["status"] != "failed"]
    tokens = [r["new_tokens"] for r in answered if r["new_tokens"] is not None]
    failed = [r for r in rows if r["status"] == "failed"]
    return {
        "backend": cfg.backend, "engine": next((r["engine"] for r in rows if r.get("engine")), None),
        "requests": requests,
        "n_examples": len(rows),
        "kept": len(kept),
        "filtered": sum(r["status"] == "filtered" for r in rows),
        "failed": len(failed),
        "retryable_failed": sum(_retry(r) for r in failed),
        "failure_reasons": dict(Counter(r["reason"] for r in failed)),
        "teacher_accuracy": sum(r["teacher_correct"] for r in answered) / max(1, len(answered)),
        "format_followed": sum(r["format_followed"] for r in answered) / max(1, len(answered)),
        "mean_cot_tokens": statistics.fmean(tokens) if tokens else None,
        "mean_cot_words": statistics.fmean(r["words"] for r in answered) if answered else 0.0,
        "mean_steps": statistics.fmean(r["steps"] for r in answered) if answered else 0.0,
        "hit_limit": sum(r["hit_limit"] for r in answered),
    }


def export_llamafactory(cell_dir: Path, cfg: GenerateConfig, kept: list[dict[str, Any]]) -> Path:
    """The kept set as the paper's own tool reads it: an Alpaca-style file and a dataset_info.json."""
    name = cfg.slug().replace("__", "_")
    out = cell_dir / "llamafactory"
    rows = [{"instruction": r["question"], "output": completion_for(r)} for r in kept]
    atomic_write_json(out / f"{name}.json", rows)
    atomic_write_json(out / "dataset_info.json", {name: {"file_name": f"{name}.json",
                                                         "columns": {"prompt": "instruction", "response": "output"}}})
    return out

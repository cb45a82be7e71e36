"""Teacher CoT generation: one dataset x teacher x granularity level x format per cell.

Rows are appended to records.jsonl as each batch finishes, so a killed run resumes by example id
without redoing or losing finished examples. Each row has a status: ok, filtered, or failed.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import cells, data, models, prompts, released, vllm_backend
from .api import ApiSettings, run_requests
from .config import GenerateConfig
from .files import append_jsonl, atomic_write_json, iter_jsonl, write_jsonl
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


def _latest(path: Path) -> dict[str, dict]:
    """The last row written for each example id (a retried example has several)."""
    return {r["id"]: r for r in iter_jsonl(path)} if path.exists() else {}


def _messages(cfg: GenerateConfig, ex: data.Example) -> list[dict[str, str]]:
    return prompts.teacher_messages(ex.question, cfg.level or 3, cfg.format, cfg.dataset)


def _local_replies(cfg: GenerateConfig, todo: list[data.Example]) -> Iterator[tuple[data.Example, dict[str, Any]]]:
    """Replies of a local teacher (transformers or vLLM) chunk by chunk, so each finished chunk is
    saved before the next starts."""
    tok = models.load_tokenizer(cfg.teacher)
    texts = [tok.apply_chat_template(_messages(cfg, ex), tokenize=False, add_generation_prompt=True) for ex in todo]
    if cfg.backend == "vllm":
        llm = vllm_backend.make_llm(models.resolve_path(cfg.teacher), seed=cfg.seed,
                                    max_model_len=vllm_backend.max_model_len(tok, texts, cfg.max_new_tokens))

        def run(part: list[str]):
            return vllm_backend.generate(llm, tok, part, max_new_tokens=cfg.max_new_tokens,
                                         temperature=cfg.temperature, seed=cfg.seed)
    else:
        model = models.load_model(cfg.teacher)

        def run(part: list[str]):
            return generate(model, tok, part, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                            temperature=cfg.temperature, seed=cfg.seed, desc=f"teacher L{cfg.level}")
    chunk = cfg.batch_size * 4
    for start in range(0, len(todo), chunk):
        for ex, g in zip(todo[start:start + chunk], run(texts[start:start + chunk])):
            yield ex, {"cot": g.text, "new_tokens": g.new_tokens, "hit_limit": g.hit_limit}


def api_settings(cfg: GenerateConfig) -> ApiSettings:
    spec = models.REGISTRY.get(cfg.teacher)
    model = cfg.api.model or (spec.hub_id if spec else cfg.teacher)
    return ApiSettings(base_url=cfg.api.base_url, model=model, api_key_env=cfg.api.api_key_env,
                       concurrency=cfg.api.concurrency, requests_per_minute=cfg.api.requests_per_minute,
                       max_retries=cfg.api.max_retries, timeout_s=cfg.api.timeout_s, temperature=cfg.temperature,
                       max_tokens=cfg.max_new_tokens, seed=cfg.seed)


def _run_api(cfg: GenerateConfig, todo: list[data.Example], records: Path) -> dict[str, int]:
    by_id = {ex.id: ex for ex in todo}

    def save(item_id: str, result: dict[str, Any]) -> None:
        ex = by_id[item_id]
        if result["ok"]:
            reply = {"cot": result["text"], "new_tokens": result.get("completion_tokens"),
                     "hit_limit": result.get("finish_reason") == "length"}
            append_jsonl(records, _row(ex, reply, cfg) | {"attempts": result.get("attempts"), "cached": result["cached"]})
        else:
            append_jsonl(records, _failed_row(ex, result["reason"]) | {"attempts": result.get("attempts")})

    return run_requests(api_settings(cfg), [(ex.id, _messages(cfg, ex)) for ex in todo], save)


def replay_file(cfg: GenerateConfig) -> released.ReleasedFile:
    """The paper's released file for this dataset x teacher x level x format."""
    want = (cfg.dataset, cfg.teacher, cfg.level if cfg.teacher not in ("human", "answer-only") else None,
            cfg.format if cfg.teacher not in ("human", "answer-only") else None)
    for f in released.catalog():
        fmt = f.format if f.teacher not in ("human", "answer-only") else None
        if (f.dataset, f.teacher, f.level, fmt) == want:
            return f
    raise data.DataError(f"the paper released no {cfg.teacher} set for {cfg.dataset} at level {cfg.level} "
                         f"in format {cfg.format!r} (see cotlib/resources/release_files.csv)")


def _replay_replies(cfg: GenerateConfig, todo: list[data.Example]) -> Iterator[tuple[data.Example, dict[str, Any]]]:
    f = replay_file(cfg)
    texts = {released.norm_question(r["question"]): r["text"] for r in released.load_rows(f)}
    for ex in todo:
        text = texts.get(released.norm_question(ex.question))
        yield ex, ({"cot": text, "new_tokens": None, "hit_limit": False} if text is not None
                   else {"error": f"question not in the released file {f.name}"})


def _failed_row(ex: data.Example, reason: str) -> dict[str, Any]:
    return {"id": ex.id, "question": ex.question, "gold": ex.answer, "answer_type": ex.answer_type, "cot": None,
            "teacher_answer": None, "teacher_correct": False, "format_followed": False, "new_tokens": None,
            "hit_limit": False, "steps": 0, "words": 0, "status": "failed", "reason": reason}


_ANSWER = re.compile(r"the answer is", re.IGNORECASE)


def cut_after_answer(cot: str) -> str:
    """The reply up to the end of its first answer line. A teacher that keeps going after it (a small
    model looping on "The answer is 12.") would otherwise teach the student to loop."""
    first = _ANSWER.search(cot)
    if first is None:
        return cot
    end = first.end()
    while True:  # to the end of the line, or of the next line when the answer sits there alone
        newline = cot.find("\n", end)
        line_end = len(cot) if newline < 0 else newline
        if cot[first.end():line_end].strip() or line_end == len(cot):
            break
        end = line_end + 1
    again = _ANSWER.search(cot, first.end(), line_end)
    return cot[:again.start() if again else line_end].strip()


def _row(ex: data.Example, reply: dict[str, Any], cfg: GenerateConfig) -> dict[str, Any]:
    if "error" in reply:
        return _failed_row(ex, reply["error"])
    raw = reply["cot"].strip()
    cot = raw if cfg.backend == "replay" else cut_after_answer(raw)  # the release is kept as released
    g = grade(cot, ex.answer, ex.answer_type, ex.choices)
    if not cot:
        status, reason = "failed", "empty reply"
    elif cfg.filter == "keep_correct" and not g.correct:
        status, reason = "filtered", "answer line missing or disagrees with gold"
    else:
        status, reason = "ok", None
    return {"id": ex.id, "question": ex.question, "gold": ex.answer, "answer_type": ex.answer_type,
            "cot": cot, "teacher_answer": g.extracted, "teacher_correct": g.correct,
            "format_followed": g.format_followed, "new_tokens": reply["new_tokens"],
            "hit_limit": reply["hit_limit"], "steps": count_steps(cot), "words": len(cot.split()),
            "cut_chars": len(raw) - len(cot), "status": status, "reason": reason}


def completion_for(row: dict[str, Any]) -> str:
    """The SFT target: the CoT ending in exactly one answer line (appended when the teacher left it out)."""
    cot = row["cot"].strip()
    if re.search(r"the answer is", cot, flags=re.IGNORECASE):
        return cot
    return f"{cot}\n{prompts.answer_line(row['teacher_answer'] or row['gold'])}"


def run_generate(cfg: GenerateConfig, cell_dir: str | Path) -> dict[str, Any]:
    """Generate (or resume) the teacher CoTs of one cell; write records.jsonl and sft.jsonl."""
    cell_dir = Path(cell_dir)
    if cfg.backend == "vllm":
        vllm_backend.require()
    examples = data.load_examples(cfg.dataset, cfg.split, cfg.n_examples, source=cfg.source)
    inputs = {"release": released.ensure_file(replay_file(cfg).name)} if cfg.backend == "replay" else None
    cells.start(cell_dir, STAGE, cfg, inputs=inputs)
    records = cell_dir / "records.jsonl"
    done = {i for i, r in _latest(records).items() if r["status"] != "failed"}  # failed rows are tried again
    todo = [ex for ex in examples if ex.id not in done]
    requests: dict[str, int] = {}
    if todo and cfg.backend == "openai":
        requests = _run_api(cfg, todo, records)
    elif todo:
        replies = {"transformers": _local_replies, "vllm": _local_replies, "replay": _replay_replies}[cfg.backend]
        for ex, reply in replies(cfg, todo):
            append_jsonl(records, _row(ex, reply, cfg))
    latest = _latest(records)
    rows = [latest[ex.id] for ex in examples if ex.id in latest]
    kept = [r for r in rows if r["status"] == "ok"]
    export_llamafactory(cell_dir, cfg, kept)
    write_jsonl(cell_dir / "sft.jsonl", ({"id": r["id"], "question": r["question"], "completion": completion_for(r)} for r in kept))
    answered = [r for r in rows if r["status"] != "failed"]
    tokens = [r["new_tokens"] for r in answered if r["new_tokens"] is not None]
    return {
        "backend": cfg.backend, "requests": requests,
        "n_examples": len(rows),
        "kept": len(kept),
        "filtered": sum(r["status"] == "filtered" for r in rows),
        "failed": sum(r["status"] == "failed" for r in rows),
        "failure_reasons": dict(Counter(r["reason"] for r in rows if r["status"] == "failed")),
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

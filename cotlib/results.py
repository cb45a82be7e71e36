"""Tables of finished cells, with their lineage: what the figures, `cotlib results` and the committed
results of a study read.

`collect` gives one row per evaluate cell, with what its student was trained on and how the training
went (from the sft cell it evaluated); `correctness` the per-question grades that paired tests need;
`supervision` the generate cells' own figures (teacher accuracy, CoT length).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from . import cells
from .files import iter_jsonl, read_json

COLUMNS = ["cell", "dataset", "student", "supervision", "method", "teacher", "level", "format", "train_dataset", "n",
           "accuracy", "ci95_low", "ci95_high", "strict_accuracy", "answer_found", "format_followed",
           "mean_output_tokens", "hit_limit", "train_loss", "train_tokens", "train_seconds", "train_precision", "backend",
           "weights"]


def supervision_label(lineage: dict[str, Any]) -> str:
    """A short name for what a student was trained on: 'base', 'answer-only', 'human', 'gpt-4o L3 rar'."""
    if not lineage or lineage.get("method") in (None, "base"):
        return "base"
    teacher = lineage.get("teacher")
    if lineage.get("level") is None:
        return str(teacher)
    fmt = lineage.get("format") or "cot"
    return f"{teacher} L{lineage['level']}" + ("" if fmt == "cot" else f" {fmt}")


def trained_from(eval_dir: Path) -> dict[str, Any]:
    """The training side of an evaluated student: its sft cell's loss, tokens, seconds and precision (the evaluate
    cell's provenance names the weights it read). Empty where that cell is not at hand (an evaluation
    restored from an export carries these figures in its own metrics)."""
    try:
        student = read_json(eval_dir / "provenance.json").get("inputs", {}).get("student")
    except (FileNotFoundError, ValueError):
        return {}
    if not student:
        return {}
    m = cells.read_metrics(Path(student["path"]).parent)
    if not m:
        return {}
    return {"train_loss": m.get("train_loss"), "train_tokens": m.get("train_tokens"), "train_seconds": m.get("train_seconds"),
            "train_precision": m.get("precision")}


def collect(cell_dirs: list[str | Path]) -> pd.DataFrame:
    """A row per finished evaluate cell among `cell_dirs` (`<grid>/evaluate/<name>` folders)."""
    rows = []
    for d in map(Path, cell_dirs):
        m = cells.read_metrics(d)
        if not m:
            continue
        lineage = m.get("lineage", {})
        rows.append({"cell": f"{d.parent.name}/{d.name}", **lineage, "supervision": supervision_label(lineage),
                     **{k: m.get(k) for k in COLUMNS if k in m}, **trained_from(d)})
    df = pd.DataFrame(rows, columns=COLUMNS)
    _warn_mixed_precision(df)
    return df.astype({"level": "Int64", "n": "Int64", "hit_limit": "Int64", "train_tokens": "Int64"})


def _warn_mixed_precision(df: pd.DataFrame) -> None:
    """A student trained in fp32 for some cells and bf16 for others (`precision: auto` on machines of two
    kinds) confounds precision with whatever the cells vary: say so, and how to pin it."""
    for student, group in df.dropna(subset=["train_precision"]).groupby("student"):
        kinds = sorted(set(group["train_precision"]))
        if len(kinds) > 1:
            warnings.warn(f"{student}: trained in {' and '.join(kinds)} across cells; comparisons between them mix "
                          f"precisions. Pin `precision:` in the grid's sft section and delete the odd cells' sft "
                          f"folders to retrain them")


def correctness(cell_dirs: list[str | Path]) -> dict[str, dict[str, bool]]:
    """Per finished evaluate cell, each question's grade: what paired tests compare."""
    out = {}
    for d in map(Path, cell_dirs):
        if not cells.read_metrics(d):
            continue
        if not (d / "records.jsonl").exists():  # scored without per-question records: no pairing possible
            warnings.warn(f"{d}: no records.jsonl, so its accuracy stays in the table but not in paired tests")
            continue
        out[f"{d.parent.name}/{d.name}"] = {r["id"]: bool(r["correct"]) for r in iter_jsonl(d / "records.jsonl")}
    return out


def correctness_table(correct: dict[str, dict[str, bool]]) -> pd.DataFrame:
    """Wide form, a row per question and a column per cell (1 right, 0 wrong): small enough to commit."""
    return pd.DataFrame(correct).astype("Int64").rename_axis("question").sort_index()


def correctness_from_table(df: pd.DataFrame) -> dict[str, dict[str, bool]]:
    return {c: {q: bool(v) for q, v in df[c].dropna().items()} for c in df.columns}


def supervision(cell_dirs: list[str | Path]) -> pd.DataFrame:
    """The finished generate cells' own figures: teacher, level, format, teacher accuracy, words per CoT."""
    rows = []
    for d in map(Path, cell_dirs):
        m = cells.read_metrics(d)
        if m:
            conf = m.get("lineage", {})
            rows.append({"cell": f"{d.parent.name}/{d.name}", "teacher": conf.get("teacher"), "level": conf.get("level"),
                         "format": conf.get("format"), "dataset": conf.get("train_dataset"), "n_examples": m.get("n_examples"),
                         "kept": m.get("kept"), "teacher_accuracy": m.get("teacher_accuracy"),
                         "mean_cot_words": m.get("mean_cot_words"), "mean_steps": m.get("mean_steps")})
    return pd.DataFrame(rows).astype({"level": "Int64"}) if rows else pd.DataFrame()


def markdown(table: pd.DataFrame) -> str:
    """The results table as a Markdown table a person reads (and a README quotes, so that each of its numbers
    is the export's own, not copied by hand): accuracy with its 95% interval, answer-found rate, output
    length, and the training loss, tokens and seconds of the student's sft cell."""
    def pct(x: Any) -> str:
        return "" if pd.isna(x) else f"{100 * float(x):.1f}%"

    def num(x: Any, fmt: str = "{:,.0f}") -> str:
        return "" if pd.isna(x) else fmt.format(float(x))

    head = ["student", "supervision", "n", "accuracy (95% CI)", "answer found", "mean output tokens",
            "hit the token limit", "train loss", "train tokens", "train seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table.to_dict("records"):
        sup = "base (untrained)" if r["supervision"] == "base" else r["supervision"]
        lines.append("| " + " | ".join([
            str(r["student"]), sup, num(r["n"]), f"{pct(r['accuracy'])} ({pct(r['ci95_low'])[:-1]}-{pct(r['ci95_high'])})",
            pct(r["answer_found"]), num(r["mean_output_tokens"]), num(r["hit_limit"]), num(r["train_loss"], "{:.3f}"),
            num(r["train_tokens"]), num(r["train_seconds"])]) + " |")
    return "\n".join(lines) + "\n"


def write(table: pd.DataFrame, folder: str | Path) -> list[Path]:
    """results.csv and results.parquet in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    csv, parquet = folder / "results.csv", folder / "results.parquet"
    table.to_csv(csv, index=False)
    table.to_parquet(parquet, index=False)
    return [csv, parquet]

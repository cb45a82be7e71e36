"""Scores from graded records, and re-grading a finished evaluation with the current grader.

A grader change does not change a cell's config hash, so finished evaluations keep their old grades
until re-graded on purpose: `cotlib regrade GRID` grades each finished evaluate cell's stored outputs
again (no generation), rewrites its records and scores, and appends to its provenance what changed and
which grader did it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import yaml

from . import cells, data
from .files import atomic_write_json, file_sha256, read_json, read_jsonl, write_jsonl
from .grading import grade


def scores(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy with its 95% Wilson interval, strict accuracy, and how often an answer was found and
    the answer line followed."""
    from .evaluate import wilson_interval

    n = len(records)
    correct = sum(r["correct"] for r in records)
    lo, hi = wilson_interval(correct, n)
    return {"n": n, "accuracy": correct / n if n else 0.0, "ci95_low": lo, "ci95_high": hi,
            "strict_accuracy": sum(r["strict_correct"] for r in records) / n if n else 0.0,
            "answer_found": sum(r["answer_found"] for r in records) / n if n else 0.0,
            "format_followed": sum(r["format_followed"] for r in records) / n if n else 0.0}


def grader_version() -> dict[str, Any]:
    from . import grading

    return {"grading_py_sha256": file_sha256(Path(grading.__file__)), "git": cells._git()["sha"]}


def examples_of(cell_dir: Path) -> dict[str, data.Example]:
    """The cell's test examples by id (from its config.yaml), for records written before they carried answer
    type and choices, or restored without their prompts."""
    conf = yaml.safe_load((cell_dir / "config.yaml").read_text())
    return {ex.id: ex for ex in data.load_examples(conf["dataset"], conf.get("split", "test"), conf.get("n_examples"),
                                                   source=conf.get("source", "auto"), subjects=conf.get("subjects"))}


def regrade_cell(cell_dir: str | Path) -> dict[str, Any]:
    """Grade a finished evaluate cell's outputs again; return the old and new accuracy and how many grades changed."""
    cell_dir = Path(cell_dir)
    metrics = cells.read_metrics(cell_dir)
    if not metrics or metrics.get("stage") != "evaluate":
        raise ValueError(f"{cell_dir} is not a finished evaluate cell")
    records = read_jsonl(cell_dir / "records.jsonl")
    examples = examples_of(cell_dir) if any("answer_type" not in r for r in records) else {}
    changed = 0
    for r in records:
        ex = examples.get(r["id"])
        kind = r.get("answer_type") or ex.answer_type
        choices = r.get("choices", ex.choices if ex else None)
        g = grade(r["output"], r["gold"], kind, choices).as_dict()
        changed += g["correct"] != r["correct"] or g["extracted"] != r["extracted"]
        r.update(g, answer_type=kind, choices=choices)
    new = scores(records)
    write_jsonl(cell_dir / "records.jsonl", records)
    entry = {"when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "grader": grader_version(),
             "accuracy_before": metrics["accuracy"], "accuracy_after": new["accuracy"], "records_changed": changed}
    prov_path = cell_dir / "provenance.json"
    prov = read_json(prov_path)
    atomic_write_json(prov_path, {**prov, "regrades": [*prov.get("regrades", []), entry]})
    atomic_write_json(cell_dir / "metrics.json", {**metrics, **new, "regraded": entry})
    return entry

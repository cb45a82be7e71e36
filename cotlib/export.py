"""A grid's results as small files to commit (`cotlib results GRID --export DIR`), and its figures drawn
again from those files alone (`cotlib figures DIR`), so a newcomer needs neither outputs/ nor a model.

DIR holds: results.csv (a row per evaluate cell), correct.csv (each question's grade per cell, for the
paired tests), supervision.csv (the generate cells' teacher accuracy and CoT length), paired.csv, the
figures, grid/ (the grid file and its `extends` chain, byte for byte, and the merged grid), code.json
(the code versions and grader that produced the cells) and outputs.jsonl.gz (every evaluated output,
so the results can be re-graded without generating again).
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
from pathlib import Path

import pandas as pd
import yaml

from . import cells, results, runner
from .expansion import Grid, read_with_extends
from .files import atomic_write_json, iter_jsonl, read_json


def _chain(path: Path) -> list[Path]:
    """The grid file and the files it extends, in order."""
    out = [path]
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    while isinstance(raw, dict) and raw.get("extends"):
        path = path.parent / raw["extends"]
        out.append(path)
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    return out


def _code_versions(grid: Grid) -> dict:
    """Which code produced the finished cells (from their provenance) and which grader graded them."""
    from .regrade import grader_version

    shas: dict[str, int] = {}
    regraded = 0
    for c in grid.cells:
        if not cells.is_done(grid.cell_dir(c), c.stage, c.config):
            continue  # a cell still running, or cut short, has provenance but no result to attribute
        try:
            prov = read_json(grid.cell_dir(c) / "provenance.json")
        except (FileNotFoundError, ValueError):
            continue
        git = prov.get("git") or {}
        key = f"{git.get('sha')}{' (dirty)' if git.get('dirty') else ''}"
        shas[key] = shas.get(key, 0) + 1
        regraded += bool(prov.get("regrades"))
    return {"cells_by_code_version": shas, "evaluate_cells_regraded": regraded, "grader_now": grader_version()}


def export(grid: Grid, out: Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Write the grid's committed results into `out` (see the module docstring)."""
    from .figures import draw_all

    out.mkdir(parents=True, exist_ok=True)
    eval_dirs = runner.scored_dirs(grid)
    table = results.collect(eval_dirs)
    if table.empty:
        raise ValueError(f"no finished evaluate cells under {grid.output_root}")
    correct = results.correctness(eval_dirs)
    generated = results.supervision([grid.cell_dir(c) for c in grid.cells if c.stage == "generate"])
    written = [out / "results.csv", out / "correct.csv", out / "supervision.csv"]
    table.to_csv(written[0], index=False)
    results.correctness_table(correct).to_csv(written[1])
    generated.to_csv(written[2], index=False)
    written += draw_all(table, out, list(formats), correct, generated)
    grid_dir = out / "grid"
    grid_dir.mkdir(exist_ok=True)
    for f in _chain(grid.path):
        shutil.copyfile(f, grid_dir / f.name)
        written.append(grid_dir / f.name)
    (grid_dir / "merged.yaml").write_text(yaml.safe_dump(read_with_extends(grid.path), sort_keys=False))
    written.append(grid_dir / "merged.yaml")
    written.append(atomic_write_json(out / "code.json", _code_versions(grid)))
    # mtime=0: the same records give the same bytes, so a re-export leaves git with nothing to commit
    with open(out / "outputs.jsonl.gz", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
            io.TextIOWrapper(gz, encoding="utf-8") as fh:
        for d in eval_dirs:
            if cells.read_metrics(d) and (d / "records.jsonl").exists():  # results.collect warned of one without
                for r in iter_jsonl(d / "records.jsonl"):
                    fh.write(json.dumps({"cell": f"{d.parent.name}/{d.name}", **{k: r.get(k) for k in (
                        "id", "output", "gold", "answer_type", "choices", "extracted", "correct", "new_tokens")}}) + "\n")
    written.append(out / "outputs.jsonl.gz")
    return written


def figures_from(folder: Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Draw every figure again from an export's files alone."""
    from .figures import draw_all

    text = {c: object for c in ("cell", "dataset", "student", "supervision", "method", "teacher", "format", "train_dataset",
                                "backend", "weights")}
    table = pd.read_csv(folder / "results.csv", dtype=text).astype({"level": "Int64"})
    correct = results.correctness_from_table(pd.read_csv(folder / "correct.csv", index_col="question"))
    generated = (pd.read_csv(folder / "supervision.csv", dtype={"teacher": object, "format": object}).astype({"level": "Int64"})
                 if (folder / "supervision.csv").stat().st_size > 1 else None)
    return draw_all(table, folder, list(formats), correct, generated)

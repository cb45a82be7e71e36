"""A grid's results as small files to commit (`cotlib results GRID --export DIR`), and its figures drawn
again from those files alone (`cotlib figures DIR`), so a newcomer needs neither outputs/ nor a model.

DIR holds: results.csv (a row per evaluate cell) and results.md (the same rows as a table to read), correct.csv (each question's grade per cell, for the
paired tests), supervision.csv (the generate cells' teacher accuracy and CoT length), paired.csv, the
figures, grid/ (the grid file and its `extends` chain, byte for byte, and the merged grid), code.json
(the code versions and grader that produced the cells), outputs.jsonl.gz (every evaluated output with
its grade, so the results can be re-graded without generating again) and cells.json (each evaluate
cell's metrics, with its config hash, and provenance).

`restore` is the way back (`cotlib results GRID --restore DIR`): on a new machine it rebuilds the finished
evaluate cells of an export in outputs/, so `cotlib run` goes on with the cells still to run instead of
training and evaluating those again (the runner skips a training cell whose evaluations were all restored).
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import math
import shutil
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from . import cells, results, runner
from .expansion import Cell, Grid, GridError, read_with_extends
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
    earlier: dict[str, int] = {}  # as the export restored from counted them (every stage's cells)
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
        restored = prov.get("restored") or {}
        if restored and not git.get("sha"):  # the cell's own version was not exported (first exported before cells.json)
            key = "restored from an export made before cells.json (its code versions: earlier_export_code_versions)"
            code = restored.get("export_code") or {}  # restored again from cells.json: its export kept the attribution
            earlier.update(code.get("earlier_export_code_versions") or code.get("cells_by_code_version") or {})
        shas[key] = shas.get(key, 0) + 1
        regraded += bool(prov.get("regrades"))
    return {"cells_by_code_version": shas, **({"earlier_export_code_versions": earlier} if earlier else {}),
            "evaluate_cells_regraded": regraded, "grader_now": grader_version()}


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
    written = [out / "results.csv", out / "correct.csv", out / "supervision.csv", out / "results.md"]
    table.to_csv(written[0], index=False)
    written[3].write_text(results.markdown(table), encoding="utf-8")
    results.correctness_table(correct).to_csv(written[1])
    if not generated.empty or not written[2].exists():
        generated.to_csv(written[2], index=False)
    else:  # generate cells not run on this machine yet (evaluations restored): keep the supervision exported before
        generated = pd.read_csv(written[2], dtype={"teacher": object, "format": object}).astype({"level": "Int64"})
        warnings.warn(f"no finished generate cell here: {written[2]} kept as it was")
    written += draw_all(table, out, list(formats), correct, generated)
    grid_dir = out / "grid"
    grid_dir.mkdir(exist_ok=True)
    for f in _chain(grid.path):
        shutil.copyfile(f, grid_dir / f.name)
        written.append(grid_dir / f.name)
    (grid_dir / "merged.yaml").write_text(yaml.safe_dump(read_with_extends(grid.path), sort_keys=False))
    written.append(grid_dir / "merged.yaml")
    written.append(atomic_write_json(out / "code.json", _code_versions(grid)))
    finished = [d for d in eval_dirs if cells.read_metrics(d)]
    written.append(atomic_write_json(out / CELLS, {f"{d.parent.name}/{d.name}": _cell_record(d) for d in finished}))
    # mtime=0: the same records give the same bytes, so a re-export leaves git with nothing to commit
    with open(out / OUTPUTS, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
            io.TextIOWrapper(gz, encoding="utf-8") as fh:
        for d in finished:
            if (d / "records.jsonl").exists():  # results.collect warned of one without
                for r in iter_jsonl(d / "records.jsonl"):  # all but the prompt, which the template rebuilds
                    fh.write(json.dumps({"cell": f"{d.parent.name}/{d.name}",
                                         **{k: v for k, v in r.items() if k != "prompt"}}) + "\n")
    written.append(out / OUTPUTS)
    return written


CELLS, OUTPUTS = "cells.json", "outputs.jsonl.gz"


def _cell_record(cell_dir: Path) -> dict[str, Any]:
    """What `restore` needs beside the records: the cell's metrics (its config hash among them, and its
    training figures, whose sft cell a new machine does not have) and provenance."""
    metrics = cells.read_metrics(cell_dir) or {}
    try:
        prov = read_json(cell_dir / "provenance.json")
    except (FileNotFoundError, ValueError):
        prov = {}
    return {"metrics": {**metrics, **results.trained_from(cell_dir)}, "provenance": prov}


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


def _outputs_by_cell(folder: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    path = folder / OUTPUTS
    if path.exists():
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                r = json.loads(line)
                out.setdefault(r.pop("cell"), []).append(r)
    return out


def _complete_records(records: list[dict[str, Any]], examples: dict[str, Any], limit: int) -> tuple[int, int]:
    """Records of an export made before they carried every grade field: the missing fields (strict grade,
    answer found, answer line followed, stopped by the limit) are read off the output again with the
    current grader; the stored grade (`extracted`, `correct`) is kept. Returns how many outputs the current
    grader grades differently from the stored grade (0: the restored cell is what was exported) and how
    many records were completed."""
    from .grading import grade

    differ = completed = 0
    for r in records:
        if all(k in r for k in ("strict_correct", "answer_found", "format_followed", "hit_limit")):
            continue
        ex = examples.get(r["id"])
        kind = r.get("answer_type") or (ex.answer_type if ex else None)
        if kind is None:
            raise GridError(f"record {r['id']!r} has no answer type and its test set is not at hand to tell it")
        g = grade(r["output"], r["gold"], kind, r.get("choices")).as_dict()
        differ += g["correct"] != r["correct"] or g["extracted"] != r["extracted"]
        r.update({k: v for k, v in g.items() if k not in ("extracted", "correct")}, answer_type=kind)
        r.setdefault("hit_limit", r["new_tokens"] >= limit)  # generation.finish: a cut output has the limit's length
        completed += 1
    return differ, completed


def _add_prompts(cell: Cell, records: list[dict[str, Any]], examples: dict[str, Any]) -> str:
    """Each record's prompt, which the export leaves out (the student's template around the question),
    rendered again as `evaluate.run_evaluate` renders it. Says how it went, for provenance."""
    from . import prompts

    if not examples:
        return "not rebuilt (the test set is not at hand)"
    template = prompts.template_for(cell.config.student)
    for r in records:
        if r["id"] in examples:
            r.setdefault("prompt", template.render(examples[r["id"]].question))
    return "rebuilt from the test set with this code's template"


def _metrics_from_row(cell: Cell, row: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    """An evaluate cell's metrics rebuilt from its results.csv row and its records (an export made before
    cells.json): the row's figures as exported, the length statistics again from the records. What the row
    does not carry (generation seconds, the stop string, the inference precision) is left out, not guessed."""
    from .evaluate import length_stats
    from .regrade import scores

    keep = results.COLUMNS[results.COLUMNS.index("n"):]  # the table's figures; the columns before it name the cell
    return {**scores(records), **length_stats(records), **{k: row[k] for k in keep if k in row and not _missing(row[k])},
            "decoding": cell.config.decoding.as_dict(),
            "lineage": {"student": cell.config.student, "dataset": cell.config.dataset,
                        "method": "base" if row.get("weights") == "base" else None, **cell.lineage}}


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def restore(grid: Grid, folder: Path) -> dict[str, list[str]]:
    """Rebuild in outputs/ the evaluate cells an export holds and this machine lacks: config, records,
    metrics (with the training figures of the sft cell that is not here) and provenance, which says where
    the cell came from. A cell is matched by name, which ends in its config hash, so a cell whose settings
    changed since the export is refused; one already done here is left as it is. Holds the grid's lock, as
    `cotlib run` does. Returns the cells `restored` and `kept` (done here already)."""
    if not (folder / "results.csv").exists():
        raise GridError(f"{folder} holds no results.csv: restore from a folder that `cotlib results GRID --export` wrote")
    rows = {r["cell"]: r for r in pd.read_csv(folder / "results.csv").to_dict("records")}
    saved = read_json(folder / CELLS) if (folder / CELLS).exists() else {}
    broken = sorted(n for n, rec in saved.items() if not isinstance(rec, dict) or not isinstance(rec.get("metrics"), dict)) \
        if isinstance(saved, dict) else []
    if not isinstance(saved, dict) or broken:
        raise GridError(f"{folder / CELLS}: not the export's cell records (damaged at {', '.join(broken[:3]) or 'the top'}): "
                        f"export again, or restore from a copy of the folder that has it intact")
    outputs = _outputs_by_cell(folder)
    code = read_json(folder / "code.json") if (folder / "code.json").exists() else {}
    by_name = {c.name: c for c in grid.cells}
    strangers = sorted(n for n in rows if n not in by_name)
    if strangers:
        raise GridError(f"{folder}: {len(strangers)} exported cells are not cells of {grid.path} (another grid, or "
                        f"one whose settings changed since the export): {', '.join(strangers[:3])}")
    missing = sorted(n for n in rows if n not in outputs and n not in saved)  # metrics rebuilt from outputs need them
    if missing:
        raise GridError(f"{folder}: no outputs for {', '.join(missing)} in {OUTPUTS}: export again from a machine that has them")
    done: dict[str, list[str]] = {"restored": [], "kept": []}
    with runner.grid_lock(grid):
        for name in rows:
            cell = by_name[name]
            d = grid.cell_dir(cell)
            if cells.is_done(d, cell.stage, cell.config):
                done["kept"].append(name)
                continue
            _write_restored(cell, d, folder, rows[name], saved.get(name), outputs.get(name, []), code)
            done["restored"].append(name)
    return done


def _write_restored(cell: Cell, d: Path, folder: Path, row: dict[str, Any], saved: dict[str, Any] | None,
                    records: list[dict[str, Any]], code: dict[str, Any]) -> None:
    from .files import write_jsonl
    from .regrade import examples_of

    if d.exists():  # a failed or unfinished attempt of this cell: set aside, not deleted
        d.rename(d.with_name(f"{d.name}.before-restore-{dt.datetime.now():%Y%m%d-%H%M%S}"))
    d.mkdir(parents=True)
    cells.write_config(d, cell.stage, cell.config)
    try:
        examples = examples_of(d) if records else {}
    except Exception:  # noqa: BLE001 - the test set not at hand: grades are completed from the records alone
        examples = {}
    differ, completed = _complete_records(records, examples, cell.config.decoding.max_new_tokens)
    if saved:
        metrics, prov = dict(saved["metrics"]), dict(saved.get("provenance") or {})
    else:
        metrics, prov = _metrics_from_row(cell, row, records), {"stage": cell.stage, "config_hash": cell.config_hash}
    # what it read when it ran (the trained student's folder) is not on this machine: kept, but not as an
    # input to fingerprint, or the cell would show as stale at once
    prov["inputs_when_run"] = prov.pop("inputs", {})
    prov["inputs"] = {}
    prov["restored"] = {"from": str(folder), "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                        "export_format": "cells.json" if saved else "results.csv and outputs (before cells.json)",
                        "records_completed": completed, "outputs_graded_differently_now": differ, "export_code": code}
    if completed and not _missing(row.get("hit_limit")):
        counted = sum(bool(r["hit_limit"]) for r in records)
        prov["restored"]["hit_limit_per_record"] = ("from the output length; matches the exported count"
                                                    if counted == row["hit_limit"] else
                                                    f"from the output length: {counted}, the export counted {row['hit_limit']}")
    if records:  # a cell scored without per-question records was exported without them
        prov["restored"]["prompts"] = _add_prompts(cell, records, examples)
        write_jsonl(d / "records.jsonl", records)
    atomic_write_json(d / "provenance.json", prov)
    atomic_write_json(d / cells.METRICS, {**metrics, "stage": cell.stage, "config_hash": cell.config_hash,
                                          "restored": prov["restored"]["from"]})  # last: its presence means done

"""Run a grid's cells through papermill: one notebook execution per cell, in dependency order,
skipping finished cells, recording failures and going on with every cell that does not need them."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from . import cells
from .files import atomic_write_json, read_json
from .config import STAGES, Cell, Grid, GridError


@dataclass
class CellState:
    cell: Cell
    state: str  # done | failed | pending | blocked | stale
    detail: str = ""


def cell_dir(grid: Grid, cell: Cell) -> Path:
    return grid.output_root / cell.name


def _figures_current(grid: Grid, cell: Cell) -> bool:
    """A soft-dependency cell is current only if it used exactly the upstream cells now finished."""
    m = cells.read_metrics(cell_dir(grid, cell)) or {}
    ups = [grid.by_name()[d] for d in cell.deps]
    finished = sorted(u.name for u in ups if cells.is_done(cell_dir(grid, u), u.stage, u.config))
    return m.get("inputs") == finished


def state_of(grid: Grid, cell: Cell) -> CellState:
    d = cell_dir(grid, cell)
    if cells.is_done(d, cell.stage, cell.config):
        if cell.soft_deps and not _figures_current(grid, cell):
            return CellState(cell, "stale", "new upstream results")
        return CellState(cell, "done")
    err = cells.read_error(d)
    if err:
        return CellState(cell, "failed", err.get("error", ""))
    return CellState(cell, "pending")


def status(grid: Grid) -> list[CellState]:
    """Each cell's state; a pending cell whose (hard) upstream failed or is blocked shows as blocked."""
    states: dict[str, CellState] = {}
    for c in grid.cells:
        st = state_of(grid, c)
        if st.state == "pending" and not c.soft_deps:
            bad = [d for d in c.deps if states[d].state in ("failed", "blocked")]
            if bad:
                st = CellState(c, "blocked", f"upstream not done: {', '.join(bad)}")
        states[c.name] = st
    return list(states.values())


def ensure_kernel(name: str) -> None:
    """Register this interpreter as the named Jupyter kernel if no such kernel exists yet."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        from ipykernel.kernelspec import install

        install(kernel_name=name, display_name=f"Python ({name})", prefix=sys.prefix)


def _params(grid: Grid, cell: Cell) -> dict:
    return {"cell_dir": str(cell_dir(grid, cell)), "config": cell.config.model_dump(mode="json")}


def execute_cell(grid: Grid, cell: Cell) -> None:
    """One papermill execution; raises on failure after the executed notebook is saved."""
    import papermill as pm

    d = cell_dir(grid, cell)
    d.mkdir(parents=True, exist_ok=True)
    cells.write_config(d, cell.stage, cell.config)
    t0 = time.perf_counter()
    pm.execute_notebook(
        str(grid.notebooks[cell.stage]), str(d / "executed.ipynb"), parameters=_params(grid, cell),
        kernel_name=grid.kernel, cwd=str(grid.notebooks[cell.stage].parent), progress_bar=False,
        log_output=False, request_save_on_cell_execute=True,
    )
    if not cells.is_done(d, cell.stage, cell.config):
        raise RuntimeError("the notebook finished without writing metrics.json (did it call cells.finish?)")
    atomic_write_json(d / "runtime.json", {"seconds": time.perf_counter() - t0, **cells.device_info()})


def _error_summary(exc: BaseException) -> tuple[str, str]:
    name = getattr(exc, "ename", type(exc).__name__)
    value = getattr(exc, "evalue", str(exc))
    tb = "\n".join(getattr(exc, "traceback", []) or [])
    return f"{name}: {value}".strip(), tb


def preflight(grid: Grid, check_devices: bool = True) -> None:
    """Check what the environment must provide (data files, the model package, CUDA for QLoRA)
    before any kernel starts, and report every problem at once. `check_devices=False` where the
    cells run elsewhere (a Ray cluster), since this machine's GPUs say nothing about the workers'."""
    from . import data, models, released, teachers, vllm_backend
    from .api import ApiError, api_key
    from .train import TrainError, check_method

    problems: list[str] = []
    seen: set[tuple] = set()
    for cell in grid.cells:
        cfg = cell.config
        key = ("data", getattr(cfg, "dataset", None), getattr(cfg, "split", None), getattr(cfg, "source", None))
        if key[1] and key not in seen:
            seen.add(key)
            try:
                data.load_examples(key[1], key[2], 1, source=key[3])
            except data.DataError as err:
                problems.append(f"{cell.name}: {err}")
        for name in (getattr(cfg, "teacher", None), getattr(cfg, "student", None)):
            if name == models.EMBEDDED and ("model", name) not in seen:
                seen.add(("model", name))
                try:
                    models.check_available(name)
                except models.ModelError as err:
                    problems.append(f"{cell.name}: {err}")
        if cell.stage == "generate" and cfg.backend == "replay":
            try:
                released.ensure_file(teachers.replay_file(cfg).name)
            except data.DataError as err:
                problems.append(f"{cell.name}: {err}")
        if cell.stage == "generate" and cfg.backend == "openai":
            try:
                api_key(cfg.api.api_key_env)
            except ApiError as err:
                problems.append(f"{cell.name}: {err}")
        if check_devices and getattr(cfg, "backend", None) == "vllm" and "vllm" not in seen:
            seen.add("vllm")
            try:
                vllm_backend.require()
            except vllm_backend.VllmMissing as err:
                problems.append(f"{cell.name}: {err}")
        if check_devices and cell.stage == "sft" and ("method", cfg.method, cfg.num_gpus) not in seen:
            seen.add(("method", cfg.method, cfg.num_gpus))
            try:
                check_method(cfg.method, cfg.num_gpus)
            except TrainError as err:
                problems.append(f"{cell.name}: {err}")
    if problems:
        raise GridError(f"{grid.path}: cannot start:\n  " + "\n  ".join(problems))


def blocked_reason(cell: Cell, upstream: dict[str, str]) -> str | None:
    """Why a cell cannot run given its upstream cells' states, or None. A soft-dependency cell
    (figures) runs with whatever finished, and is blocked only when nothing did."""
    bad = [name for name, state in upstream.items() if state != "done"]
    if bad and not cell.soft_deps:
        return f"upstream not done: {', '.join(bad)}"
    if cell.soft_deps and upstream and len(bad) == len(upstream):
        return "no upstream cell finished"
    return None


def attempt(grid: Grid, cell: Cell, execute: Callable[[Grid, Cell], None] = execute_cell) -> CellState:
    """Execute one cell; a failure is recorded in the cell (error.json) and returned, never raised."""
    try:
        execute(grid, cell)
    except Exception as exc:  # a failed cell is recorded and the others go on
        summary, tb = _error_summary(exc)
        cells.record_error(cell_dir(grid, cell), summary, tb)
        return CellState(cell, "failed", summary)
    return CellState(cell, "done")


def run(grid: Grid, *, log: Callable[[str], None] = print, execute: Callable[[Grid, Cell], None] = execute_cell) -> list[CellState]:
    """Run every cell that is not done; return the final state of each."""
    preflight(grid)
    ensure_kernel(grid.kernel)
    grid.output_root.mkdir(parents=True, exist_ok=True)
    final: dict[str, CellState] = {}
    todo = list(grid.cells)
    bar = tqdm(total=len(todo), desc=f"grid {grid.name}", unit="cell", file=sys.stderr)
    for i, cell in enumerate(todo, 1):
        st = state_of(grid, cell)
        prefix = f"[{i}/{len(todo)}] {cell.name}"
        if st.state == "done":
            final[cell.name] = st
            log(f"{prefix}: done, skipped")
            bar.update()
            continue
        reason = blocked_reason(cell, {d: final[d].state for d in cell.deps if d in final})
        if reason:
            final[cell.name] = CellState(cell, "blocked", reason)
            log(f"{prefix}: blocked ({reason})")
            bar.update()
            continue
        log(f"{prefix}: running")
        t0 = time.perf_counter()
        final[cell.name] = st = attempt(grid, cell, execute)
        if st.state == "failed":
            log(f"{prefix}: FAILED after {time.perf_counter() - t0:.0f}s: {st.detail}\n    see {cell_dir(grid, cell) / 'executed.ipynb'}")
        else:
            log(f"{prefix}: done in {time.perf_counter() - t0:.0f}s")
        bar.update()
    bar.close()
    return [final[c.name] for c in grid.cells]


def estimate(grid: Grid, states: list[CellState] | None = None) -> dict[str, dict]:
    """Hours still to run per stage, from the recorded time of finished cells of the same stage
    (runtime.json): device-hours on the device they ran on."""
    states = states or status(grid)
    out: dict[str, dict] = {}
    for stage in STAGES:
        todo = [s for s in states if s.cell.stage == stage and s.state != "done"]
        if not todo:
            continue
        done = [s for s in states if s.cell.stage == stage and s.state == "done"]
        runs = [read_json(p) for s in done if (p := cell_dir(grid, s.cell) / "runtime.json").exists()]
        if not runs:
            out[stage] = {"to_run": len(todo), "hours": None, "device": None}
            continue
        mean = sum(r["seconds"] for r in runs) / len(runs)
        gpus = [getattr(s.cell.config, "num_gpus", 1) if stage == "sft" else 1 for s in todo]
        devices = sorted({r.get("type", "cpu") for r in runs})
        out[stage] = {"to_run": len(todo), "hours": mean * sum(gpus) / 3600, "device": "/".join(devices),
                      "measured_cells": len(runs)}
    return out


def format_estimate(est: dict[str, dict]) -> str:
    if not est:
        return "nothing left to run"
    lines = []
    for stage, e in est.items():
        if e["hours"] is None:
            lines.append(f"{stage:9s} ~? hours (no finished {stage} cell has a recorded time yet)")
        else:
            unit = "GPU-hours" if "cuda" in e["device"] else "CPU-hours"
            lines.append(f"{stage:9s} ~{e['hours']:.2f} {unit} (mean of {e['measured_cells']} finished cells)")
    return "\n".join(lines)


def format_status(states: list[CellState]) -> str:
    width = max((len(s.cell.name) for s in states), default=10)
    lines = [f"{'cell'.ljust(width)}  state    detail"]
    for s in states:
        lines.append(f"{s.cell.name.ljust(width)}  {s.state.ljust(7)}  {s.detail}")
    counts: dict[str, int] = {}
    for s in states:
        counts[s.state] = counts.get(s.state, 0) + 1
    lines.append(", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return "\n".join(lines)


def summary_json(states: list[CellState]) -> str:
    return json.dumps([{"cell": s.cell.name, "stage": s.cell.stage, "state": s.state, "detail": s.detail} for s in states], indent=2)

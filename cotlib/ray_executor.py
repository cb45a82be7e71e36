"""Run a grid's cells as Ray tasks: one task per cell, asking for the GPUs its stage needs, with the
cell's upstream tasks as its arguments so Ray runs them in dependency order.

`ray.init()` starts a local instance by default; an address (`ray://head:10001` or `auto`) scales
out to a cluster whose workers have cotlib installed and see the same output folder. Done cells are
skipped exactly as by the local executor, so killing the driver and running again finishes only
what was missing. A task whose worker is lost is retried by Ray; a cell that fails in its notebook
is recorded (error.json, executed.ipynb) and not retried.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from . import cells
from .environment import ensure_kernel
from .expansion import Cell, Grid
from .runner import (UNNEEDED, CellState, attempt, blocked_reason, grid_lock, is_unneeded, preflight, readers,
                     state_of)
from .stages import STAGES


def gpus_for(cell: Cell, per_stage: dict[str, float], cluster_gpus: float) -> float:
    """GPUs a cell's task asks for, as its stage (and teacher backend) says; none on a cluster without GPUs."""
    if cluster_gpus <= 0:
        return 0.0
    return float(STAGES[cell.stage].gpus(cell.config, per_stage.get(cell.stage, 0.0)))


def _run_cell(grid: Grid, cell: Cell, *upstream: dict[str, Any]) -> dict[str, Any]:
    """Body of one Ray task: the same decisions as the local executor, then one papermill run."""
    import os

    reason = blocked_reason(cell, {u["cell"]: u["state"] for u in upstream})
    if reason:
        return {"cell": cell.name, "state": "blocked", "detail": reason}
    t0 = time.perf_counter()
    st = attempt(grid, cell)  # a notebook failure is recorded, not raised: Ray retries only lost workers
    if st.state != "done":
        return {"cell": cell.name, "state": st.state, "detail": st.detail}
    return {"cell": cell.name, "state": "done", "seconds": time.perf_counter() - t0,
            "node": os.uname().nodename, "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}


def run(grid: Grid, *, address: str | None = None, gpus: dict[str, float] | None = None,
        log: Callable[[str], None] = print, max_retries: int = 3) -> list[CellState]:
    import ray

    preflight(grid, check_devices=address is None)  # a cluster's workers have their own GPUs
    ensure_kernel(grid.kernel)
    with grid_lock(grid):
        return _run(grid, ray, address, gpus, log, max_retries)


def _run(grid: Grid, ray, address: str | None, gpus: dict[str, float] | None, log: Callable[[str], None],
         max_retries: int) -> list[CellState]:
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        per_stage = {**{n: s.default_gpus for n, s in STAGES.items()}, **(gpus or {})}
        cluster_gpus = ray.cluster_resources().get("GPU", 0.0)
        task = ray.remote(_run_cell)
        refs: dict[str, Any] = {}
        read_by = readers(grid)
        for cell in grid.cells:  # grid.cells is in dependency order
            st = state_of(grid, cell)
            if st.state == "done":
                refs[cell.name] = ray.put({"cell": cell.name, "state": "done"})
                log(f"{cell.name}: done, skipped")
                continue
            if is_unneeded(grid, cell, st.state, read_by[cell.name], lambda r: state_of(grid, r).state):
                refs[cell.name] = ray.put({"cell": cell.name, "state": "unneeded", "detail": UNNEEDED})
                log(f"{cell.name}: not needed, skipped")
                continue
            if st.state == "stale":
                cells.unseal(grid.cell_dir(cell))
            opts = {"num_gpus": gpus_for(cell, per_stage, cluster_gpus), "num_cpus": 1,
                    "max_retries": max_retries, "retry_exceptions": False, "name": cell.name}
            refs[cell.name] = task.options(**opts).remote(grid, cell, *(refs[d] for d in cell.deps if d in refs))
            log(f"{cell.name}: submitted ({opts['num_gpus']:g} GPU)")
        by_name = grid.by_name()
        final: dict[str, CellState] = {}
        pending = {ref: name for name, ref in refs.items()}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            name = pending.pop(ready[0])
            out = ray.get(ready[0])
            final[name] = CellState(by_name[name], out["state"], out.get("detail", ""))
            if out["state"] != "done" or "seconds" in out:
                log(f"{name}: {out['state']}" + (f" in {out['seconds']:.0f}s on {out['node']}" if "seconds" in out else f" ({out.get('detail', '')})"))
        return [final[c.name] for c in grid.cells]
    finally:
        if started_here:
            ray.shutdown()

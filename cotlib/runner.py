"""Run a grid's cells through papermill: one notebook execution per cell, skipping finished cells,
recording failures and going on with every cell that does not need them.

A cell is done when its metrics carry its config hash, its stage calls it complete (a generate cell
with retryable failed rows is `incomplete`), and the inputs it read are unchanged (else `stale`, and
redone). The local executor runs one cell at a time, depth first: a trained student is evaluated
before the next one trains, so results arrive while the grid runs (`--jobs N`: up to N ready cells at
once, the longest chain of waiting cells first). Two runs of one grid cannot
overlap: the second stops naming the first. A training cell that has not run here and whose evaluations
were all restored from an export (`cotlib results --restore`) is `unneeded`, and not run.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from . import cells, environment, hardware, redaction
from .expansion import Cell, Grid, GridError
from .files import atomic_write_json, read_json
from .stages import STAGES

FINAL_BAD = ("failed", "blocked", "incomplete")


@dataclass
class CellState:
    cell: Cell
    state: str  # done | failed | pending | blocked | stale | incomplete | unneeded | running
    detail: str = ""


def _soft_inputs_current(grid: Grid, cell: Cell) -> bool:
    """A soft-dependency cell is current only if it used exactly the upstream cells now finished."""
    m = cells.read_metrics(grid.cell_dir(cell)) or {}
    ups = [grid.by_name()[d] for d in cell.deps]
    finished = sorted(u.name for u in ups if cells.is_done(grid.cell_dir(u), u.stage, u.config))
    return m.get("inputs") == finished


def state_of(grid: Grid, cell: Cell) -> CellState:
    d = grid.cell_dir(cell)
    if cells.is_done(d, cell.stage, cell.config):
        why = STAGES[cell.stage].incomplete(cells.read_metrics(d) or {})
        if why:
            return CellState(cell, "incomplete", why)
        if cell.soft_deps and not _soft_inputs_current(grid, cell):
            return CellState(cell, "stale", "new upstream results")
        changed = cells.changed_inputs(d)
        if changed:
            return CellState(cell, "stale", f"its input changed since it ran: {', '.join(changed)}")
        return CellState(cell, "done")
    err = cells.read_error(d)
    if err:
        return CellState(cell, "failed", str(err.get("error", "")))
    if (d / cells.METRICS).exists() and cells.read_metrics(d) is None:
        return CellState(cell, "pending", f"its {cells.METRICS} is damaged (not a JSON object): the cell runs again")
    return CellState(cell, "pending")


UNNEEDED = "every cell that reads it was restored from an export, so it need not run"


def readers(grid: Grid) -> dict[str, list[Cell]]:
    """Each cell's downstream cells that cannot run without it (soft readers, the figures, can)."""
    out: dict[str, list[Cell]] = {c.name: [] for c in grid.cells}
    for c in grid.cells:
        if not c.soft_deps:
            for d in c.deps:
                out[d].append(c)
    return out


def is_unneeded(grid: Grid, cell: Cell, state: str, its_readers: list[Cell], reader_state: Callable[[Cell], str]) -> bool:
    """A cell of an intermediate stage (training) that has not run here (pending or failed: a stale or
    incomplete one is redone as before) and whose readers are all done and restored from an export: its
    output would be read by nobody."""
    return (STAGES[cell.stage].intermediate and state in ("pending", "failed") and bool(its_readers)
            and all(reader_state(r) == "done" and (cells.read_metrics(grid.cell_dir(r)) or {}).get("restored")
                    for r in its_readers))


def running(grid: Grid, cell: Cell) -> CellState | None:
    """The cell as another process runs it now (its lock is held), with who and, where the stage records
    it, how far it has got; None when nobody holds it."""
    d = grid.cell_dir(cell)
    h = cells.holder(d)
    if h is None:
        return None
    how_far = STAGES[cell.stage].progress(d)
    return CellState(cell, "running", f"pid {h['pid']} on {h['host']}, since {h['since']}" + (f"; {how_far}" if how_far else ""))


def status(grid: Grid) -> list[CellState]:
    """Each cell's state; a cell not done whose lock another process holds shows as running; a pending cell
    whose (hard) upstream failed, is blocked or incomplete shows as blocked; a training cell that has not run
    and whose evaluations were all restored shows as unneeded. (Only for the report: the runner's own
    decisions read `state_of`, which a held lock does not change.)"""
    states: dict[str, CellState] = {c.name: state_of(grid, c) for c in grid.cells}
    read_by = readers(grid)
    for c in grid.cells:
        st = states[c.name]
        if st.state != "done" and (now := running(grid, c)):
            states[c.name] = now
        elif is_unneeded(grid, c, st.state, read_by[c.name], lambda r: states[r.name].state):
            states[c.name] = CellState(c, "unneeded", UNNEEDED)
        elif st.state == "pending" and not c.soft_deps:
            bad = [d for d in c.deps if states[d].state in FINAL_BAD]
            if bad:
                states[c.name] = CellState(c, "blocked", f"upstream not done: {', '.join(bad)}")
    return list(states.values())


def _parameters(grid: Grid, cell: Cell) -> dict:
    return {"cell_dir": str(grid.cell_dir(cell)), "config": cell.config.model_dump(mode="json"),
            "inputs": grid.inputs_of(cell), "lineage": cell.lineage, "seal": "deferred"}


def _logged_kernel(log_path: Path):
    """A kernel manager whose kernel writes its own stdout/stderr (native libraries' messages) to the cell's
    kernel.log, not the grid's console, and talks to it over Unix sockets in a folder of its own. Over TCP,
    jupyter_client picks "free" ports by binding and releasing them before the kernel binds them, so two
    kernels started at once by two processes (`--jobs`) can be handed the same port, and one dies before it
    runs anything (papermill issue 511): a cell failed, and its readers were blocked, for no fault of its own."""
    import os
    import shutil
    import tempfile

    from jupyter_client.manager import AsyncKernelManager

    class LoggedKernelManager(AsyncKernelManager):
        async def _async_pre_start_kernel(self, **kw):
            if os.name == "posix" and self.transport != "ipc":  # Unix sockets; elsewhere TCP as before
                tmp = tempfile.gettempdir()  # a socket's path has at most 104-107 bytes: a long $TMPDIR would not fit
                folder = tempfile.mkdtemp(prefix="cotlib-kernel-", dir=tmp if len(tmp) <= 64 else "/tmp")
                self.transport, self.ip = "ipc", str(Path(folder) / "k")  # sockets <folder>/k-1, k-2, ...
            return await super()._async_pre_start_kernel(**kw)

        async def _async_cleanup_resources(self, restart: bool = False) -> None:
            await super()._async_cleanup_resources(restart=restart)
            if self.transport == "ipc" and not restart:  # a restarted kernel binds in the same folder again
                shutil.rmtree(Path(self.ip).parent, ignore_errors=True)

        # nbclient's last word on a kernel that died is `cleanup_resources`, an alias of the base method
        cleanup_resources = _async_cleanup_resources

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            with open(log_path, "ab") as fh:  # the kernel process keeps its own copy of the descriptor
                kw["stdout"] = kw["stderr"] = fh
                return await super()._async_launch_kernel(kernel_cmd, **kw)

    return LoggedKernelManager


def execute_cell(grid: Grid, cell: Cell) -> None:
    """One papermill execution; the cell is sealed done only when the whole notebook ran. Third-party
    noise goes to the cell's logs (kernel.log, runner.log), not the grid's console."""
    import papermill as pm

    d = grid.cell_dir(cell)
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pm.execute_notebook(
                str(grid.notebooks[cell.stage]), str(d / "executed.ipynb"), parameters=_parameters(grid, cell),
                kernel_name=grid.kernel, cwd=str(grid.notebooks[cell.stage].parent), progress_bar=False,
                log_output=False, request_save_on_cell_execute=True, kernel_manager_class=_logged_kernel(d / "kernel.log"),
            )
        except BaseException:
            with contextlib.suppress(OSError):  # an unwritable folder must not replace the cell's own error
                cells.unseal(d)  # whatever the stage wrote, the notebook did not finish
            raise
        finally:
            if caught:
                with contextlib.suppress(OSError):  # an unwritable folder must not replace the cell's own error
                    with open(d / "runner.log", "a", encoding="utf-8") as fh:
                        fh.writelines(f"{w.category.__name__}: {redaction.redact(str(w.message))}\n" for w in caught)
    atomic_write_json(d / "runtime.json", {"seconds": time.perf_counter() - t0, **hardware.device_info()})
    if not cells.seal(d) and not cells.is_done(d, cell.stage, cell.config):
        raise RuntimeError("the notebook finished without writing its metrics (does it call stages.run_cell?)")


def _error_summary(exc: BaseException) -> tuple[str, str]:
    name = getattr(exc, "ename", type(exc).__name__)
    value = getattr(exc, "evalue", str(exc))
    tb = "\n".join(getattr(exc, "traceback", []) or [])
    return redaction.redact(f"{name}: {value}".strip()), redaction.redact(tb)


def needs(grid: Grid) -> list[tuple[str, environment.Requirement]]:
    """Every cell's requirements, as its stage declares them."""
    return [(c.name, r) for c in grid.cells for r in STAGES[c.stage].requirements(c.config)]


def register_secrets(grid: Grid) -> None:
    """Keys the grid's cells read are masked in everything the runner prints or stores."""
    for c in grid.cells:
        api = getattr(c.config, "api", None)
        if api is not None:
            redaction.register_env(api.api_key_env)


def preflight(grid: Grid, *, check_devices: bool = True, dry_run: bool = False,
              log: Callable[[str], None] = print) -> None:
    """Check what the environment must provide (data and release files, models, API keys, engines, CUDA for
    QLoRA, a writable output folder) before any kernel starts, and report every problem at once.
    `check_devices=False` where the cells run elsewhere (a Ray cluster)."""
    register_secrets(grid)
    problems = environment.preflight(needs(grid), dry_run=dry_run, device_checks=check_devices, log=log)
    unwritable = environment.writable(grid.output_root)
    if unwritable:
        problems.append(unwritable)
    if problems:
        raise GridError(f"{grid.path}: cannot start:\n  " + "\n  ".join(redaction.redact(p) for p in problems))


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
        unwritten = cells.record_error(grid.cell_dir(cell), summary, tb)
        return CellState(cell, "failed", summary + (f" ({unwritten})" if unwritten else ""))
    st = state_of(grid, cell)
    return st if st.state == "incomplete" else CellState(cell, "done")


def _next_cell(todo: list[Cell], final: dict[str, CellState], order: dict[str, int],
               chain: dict[str, int] | None = None) -> Cell | None:
    """Of the cells whose upstream is settled: one at a time, depth first (the latest stage first, then grid
    order), so a trained student is evaluated before the next one trains; side by side (`chain`: how many
    cells wait on each, one behind another), the longest chain first, so no long chain is left to run
    alone at the end while the other cores idle."""
    stage_rank = {s: i for i, s in enumerate(STAGES)}
    ready = [c for c in todo if all(d in final for d in c.deps)]
    if chain is not None:
        return max(ready, key=lambda c: (chain[c.name], -order[c.name]), default=None)
    return max(ready, key=lambda c: (stage_rank[c.stage], -order[c.name]), default=None)


def _chains(grid: Grid, read_by: dict[str, list[Cell]]) -> dict[str, int]:
    """For each cell, the longest run of cells that depend on it one after another (0: nothing reads it)."""
    out: dict[str, int] = {}

    def length(name: str) -> int:
        if name not in out:
            out[name] = max((1 + length(r.name) for r in read_by[name]), default=0)
        return out[name]

    return {c.name: length(c.name) for c in grid.cells}


def run(grid: Grid, *, log: Callable[[str], None] = print, execute: Callable[[Grid, Cell], None] = execute_cell,
        jobs: int = 1) -> list[CellState]:
    """Run every cell that is not done; return the final state of each. `jobs` > 1 runs up to that many
    ready cells at once, each in its own process (see `_run_locked`)."""
    if jobs < 1:
        raise GridError(f"--jobs {jobs}: must be 1 or more")
    preflight(grid, log=log)
    environment.ensure_kernel(grid.kernel)
    with grid_lock(grid):
        return _run_locked(grid, log, execute, jobs)


def grid_lock(grid: Grid) -> contextlib.AbstractContextManager[None]:
    """One writer of a grid's outputs at a time (a run, a restore); a second stops naming the first."""
    return cells.exclusive(grid.output_root / ".grid.lock", f"grid {grid.name} ({grid.output_root})")


def _settle_without_running(grid: Grid, cell: Cell, final: dict[str, CellState], read_by: dict[str, list[Cell]]
                            ) -> tuple[CellState | None, str | None]:
    """A cell's state when it need not run (done, not needed, blocked) and the console line saying so;
    (None, line or None) when it must run (the line: why a stale cell is redone)."""
    st = state_of(grid, cell)
    if st.state == "done":
        return st, "done, skipped"
    if is_unneeded(grid, cell, st.state, read_by[cell.name], lambda r: state_of(grid, r).state):
        return CellState(cell, "unneeded", UNNEEDED), f"not needed, skipped ({UNNEEDED})"
    reason = blocked_reason(cell, {d: final[d].state for d in cell.deps})
    if reason:
        return CellState(cell, "blocked", reason), f"blocked ({reason})"
    if st.state == "stale":
        cells.unseal(grid.cell_dir(cell))
        return None, f"stale ({st.detail}), redoing"
    return None, None


def _outcome(grid: Grid, st: CellState, took: float) -> str:
    if st.state == "failed":
        return f"FAILED after {took:.0f}s: {st.detail}\n    see {grid.cell_dir(st.cell) / 'executed.ipynb'}"
    if st.state == "incomplete":
        return f"incomplete after {took:.0f}s: {st.detail}"
    return f"done in {took:.0f}s"


def _share_cores(jobs: int) -> None:
    """In a --jobs worker: its kernels get this machine's cores divided by `jobs` as their thread count
    (OMP_NUM_THREADS, which torch and vLLM read), unless the user set it. Two cells with 2 threads each on
    2 cores busy-wait against each other: the demo took 12 min 50 s that way, against 7 min 38 s one at a
    time and 4 min 48 s with a thread each."""
    import os

    if "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // jobs))


def _run_locked(grid: Grid, log: Callable[[str], None], execute: Callable[[Grid, Cell], None], jobs: int) -> list[CellState]:
    """The scheduling loop. With jobs = 1 each cell runs here, one after another. With more, up to `jobs`
    ready cells run side by side, each `attempt` in a spawned process (papermill's warnings capture is
    process-wide state) whose kernels share the cores (`_share_cores`): a kernel's start and imports are
    single-threaded work that another cell's compute can overlap, so the demo's small cells finish sooner
    two at a time on 2 cores, with the same results.
    Either way a cell starts only when its upstream cells have settled (`_next_cell` says which next).
    A worker process that dies (killed, or out of memory) takes the pool with it, and with it every cell in
    flight, without saying which one it was running: those cells are retried one by one, each alone in a
    fresh pool, and only one that kills its worker again, running alone, is recorded as failed. A cell
    whose worker died while no other cell was in flight is retried alone too: a cell beside it may have
    finished in the same instant (the two arrive together), so "alone" is only known for the retry."""
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool
    from multiprocessing import get_context

    final: dict[str, CellState] = {}
    order = {c.name: i for i, c in enumerate(grid.cells)}
    read_by = readers(grid)
    todo = list(grid.cells)
    bar = tqdm(total=len(todo), desc=f"grid {grid.name}", unit="cell", file=sys.stderr, dynamic_ncols=True)
    n = 0
    running: dict[Future, tuple[Cell, float]] = {}
    chain = _chains(grid, read_by) if jobs > 1 else None
    alone: set[str] = set()  # in flight when a worker died: each is retried by itself

    def new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_share_cores, initargs=(jobs,))

    pool = new_pool() if jobs > 1 else None

    def settle(st: CellState, line: str) -> None:
        nonlocal n
        n += 1
        final[st.cell.name] = st
        bar.write(f"[{n}/{len(grid.cells)}] {st.cell.name}: {line}")
        bar.update()

    def settle_dead_worker(cell: Cell, t0: float, in_flight: int) -> None:
        took = time.perf_counter() - t0
        if cell.name not in alone:
            alone.add(cell.name)
            todo.append(cell)
            others = f" with {in_flight - 1} other cell(s) in flight" if in_flight > 1 else ""
            bar.write(f"{cell.name}: a worker process died after {took:.0f}s{others}; retrying it alone")
            return
        summary = "its worker process died (killed, or out of memory?) while it ran alone"
        unwritten = cells.record_error(grid.cell_dir(cell), summary)
        st = CellState(cell, "failed", summary + (f" ({unwritten})" if unwritten else ""))
        settle(st, _outcome(grid, st, took))

    def recover(broken_pool: ProcessPoolExecutor) -> ProcessPoolExecutor:
        """The pool went down: a cell whose result arrived in the meantime is settled as it ended; every
        other cell in flight went down with the pool. A fresh pool takes the work on."""
        broken_pool.shutdown(wait=True, cancel_futures=True)
        dead = []
        for fut, (cell, t0) in running.items():
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                st = fut.result()
                settle(st, _outcome(grid, st, time.perf_counter() - t0))
            else:
                dead.append((cell, t0))
        running.clear()
        for cell, t0 in dead:
            settle_dead_worker(cell, t0, len(dead))
        return new_pool()

    try:
        while todo or running:
            broken = False
            while len(running) < jobs and not any(c.name in alone for c, _ in running.values()) \
                    and (cell := _next_cell(todo, final, order, chain)) is not None:
                if cell.name in alone and running:
                    break  # it runs once the others have finished
                todo.remove(cell)
                st, line = _settle_without_running(grid, cell, final, read_by)
                if st is not None:
                    settle(st, line)
                    continue
                if line:
                    bar.write(f"{cell.name}: {line}")
                t0 = time.perf_counter()
                if pool is None:
                    bar.set_postfix_str(cell.stage)
                    st = attempt(grid, cell, execute)
                    settle(st, _outcome(grid, st, time.perf_counter() - t0))
                    continue
                try:
                    running[pool.submit(attempt, grid, cell, execute)] = (cell, t0)
                except BrokenProcessPool:  # a worker died since the last wait: this cell never started
                    todo.append(cell)
                    broken = True
                    break
                bar.set_postfix_str(", ".join(c.stage for c, _ in running.values()))
            if not broken:
                if not running:
                    if todo:  # cannot happen in an acyclic grid: every cell's upstream is earlier
                        raise RuntimeError("no runnable cell left; the grid's dependencies form a cycle")
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    if isinstance(fut.exception(), BrokenProcessPool):
                        broken = True
                        continue
                    cell, t0 = running.pop(fut)
                    st = fut.result()
                    settle(st, _outcome(grid, st, time.perf_counter() - t0))
            if broken:
                pool = recover(pool)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    write_results(grid)
    log(f"{sum(s.state == 'done' for s in final.values())} of {len(final)} cells done")
    return [final[c.name] for c in grid.cells]


def estimate(grid: Grid, states: list[CellState] | None = None) -> dict[str, dict]:
    """Hours still to run per stage, from the recorded time of finished cells of the same stage
    (runtime.json): device-hours on the device they ran on."""
    states = states or status(grid)
    out: dict[str, dict] = {}
    for stage, spec in STAGES.items():
        todo = [s for s in states if s.cell.stage == stage and s.state not in ("done", "unneeded")]
        if not todo:
            continue
        done = [s for s in states if s.cell.stage == stage and s.state == "done"]
        runs = [read_json(p) for s in done if (p := grid.cell_dir(s.cell) / "runtime.json").exists()]
        if not runs:
            out[stage] = {"to_run": len(todo), "hours": None, "device": None}
            continue
        mean = sum(r["seconds"] for r in runs) / len(runs)
        weights = [max(1.0, spec.gpus(s.cell.config, 1.0)) for s in todo]  # a 4-GPU cell costs 4 device-hours
        devices = sorted({r.get("type", "cpu") for r in runs})
        out[stage] = {"to_run": len(todo), "hours": mean * sum(weights) / 3600, "device": "/".join(devices),
                      "measured_cells": len(runs)}
    return out


def summary_json(states: list[CellState]) -> str:
    return json.dumps([{"cell": s.cell.name, "stage": s.cell.stage, "state": s.state, "detail": s.detail} for s in states], indent=2)


def scored_dirs(grid: Grid) -> list[Path]:
    """The folders of the cells whose metrics are the rows of the grid's results table."""
    return [grid.cell_dir(c) for c in grid.cells if STAGES[c.stage].scored]


def write_results(grid: Grid) -> list[Path]:
    """`<grid>/results.csv` and `.parquet`: the grid's finished scored cells (the one writer of these files)."""
    from . import results

    table = results.collect(scored_dirs(grid))
    return results.write(table, grid.output_root) if not table.empty else []

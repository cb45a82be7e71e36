"""The Ray executor on a real local Ray instance: dependency order, failure isolation, resume after
the driver is killed. The stage notebooks are the stand-ins of test_runner.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cotlib.expansion import load_grid
from tests.test_runner import _runs, stub_grid  # noqa: F401  (the fixture)

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


def _order(g, tmp_project) -> list[str]:
    return [Path(p).relative_to(g.output_root).as_posix() for p in _runs(tmp_project)]


def test_ray_runs_in_dependency_order_and_isolates_failures(stub_grid, tmp_project, monkeypatch):  # noqa: F811
    from cotlib import ray_executor

    monkeypatch.setenv("FAIL_LEVELS", "2")
    g = load_grid(stub_grid)
    result = ray_executor.run(g, log=lambda _: None)
    states = {s.cell.name: s.state for s in result}
    gen2 = next(c.name for c in g.cells if c.stage == "generate" and c.config.level == 2)
    assert states[gen2] == "failed"
    assert sum(s == "blocked" for s in states.values()) == 2, [(s.cell.name, s.state, s.detail) for s in result]
    assert sum(s == "done" for s in states.values()) == len(g.cells) - 3
    order = _order(g, tmp_project)
    for c in g.cells:
        for d in c.deps:
            if c.name in order and d in order:
                assert order.index(d) < order.index(c.name)
    assert json.loads((g.output_root / gen2 / "error.json").read_text())["error"].startswith("RuntimeError")

    monkeypatch.setenv("FAIL_LEVELS", "")
    (tmp_project / "runs.log").unlink()
    again = ray_executor.run(load_grid(stub_grid), log=lambda _: None)
    assert all(s.state == "done" for s in again)
    assert len(_order(g, tmp_project)) == 3  # only the failed cell and the two it blocked


def test_killed_driver_resumes_without_redoing_finished_cells(stub_grid, tmp_project, monkeypatch):  # noqa: F811
    g = load_grid(stub_grid)
    child = subprocess.Popen([sys.executable, "-m", "cotlib.cli", "run", str(stub_grid), "--executor", "ray"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(_runs(tmp_project)) < 4:
        time.sleep(0.2)
    os.killpg(child.pid, signal.SIGKILL)  # the driver and the local Ray instance it started
    child.wait()
    time.sleep(5)  # a task already running when the driver died may still finish: count it as done
    done_before = {c.name for c in g.cells if (g.output_root / c.name / "metrics.json").exists()}
    assert 0 < len(done_before) < len(g.cells)
    (tmp_project / "runs.log").unlink()
    from cotlib import ray_executor

    final = ray_executor.run(load_grid(stub_grid), log=lambda _: None)
    assert all(s.state == "done" for s in final)
    rerun = set(_order(g, tmp_project))
    assert rerun and not rerun & done_before  # nothing finished was run again
    assert all((g.output_root / c.name / "metrics.json").exists() for c in g.cells)

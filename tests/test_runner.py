"""The grid runner through a real Jupyter kernel (papermill): order, failure isolation, resume.

The stage notebooks here are small stand-ins that do no model work, so the runner's own
behaviour is what is tested; the real notebooks run end to end in test_demo_e2e.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_notebook

from cotlib import runner
from cotlib.expansion import load_grid

from tests.conftest import needs_shared_data

pytestmark = pytest.mark.slow

_BODY = {
    "generate": (
        "from cotlib import cells\nfrom cotlib.schemas import GenerateConfig\nimport os\n"
        "cfg = GenerateConfig.model_validate(config)\n"
        "open(os.environ['RUN_LOG'], 'a').write(cell_dir + '\\n')\n"
        "if cfg.level in [int(x) for x in os.environ.get('FAIL_LEVELS', '').split(',') if x]:\n"
        "    raise RuntimeError(f'injected failure at level {cfg.level}')\n"
        "if cfg.level in [int(x) for x in os.environ.get('SLOW_LEVELS', '').split(',') if x]:\n"
        "    import time; time.sleep(8)\n"
        "if cfg.level in [int(x) for x in os.environ.get('KILL_WORKER_LEVELS', '').split(',') if x]:\n"
        "    import signal; os.kill(os.getppid(), signal.SIGKILL)  # the process that started this kernel\n"
        "cells.start(cell_dir, 'generate', cfg)\n"
        "cells.finish(cell_dir, 'generate', cfg, {'kept': 1})\n"
    ),
    "sft": (
        "from cotlib import cells\nfrom cotlib.schemas import SftConfig\nimport os\n"
        "cfg = SftConfig.model_validate(config)\n"
        "open(os.environ['RUN_LOG'], 'a').write(cell_dir + '\\n')\n"
        "cells.finish(cell_dir, 'sft', cfg, {'steps': 1})\n"
    ),
    "evaluate": (
        "from cotlib import cells\nfrom cotlib.schemas import EvaluateConfig\nimport os\n"
        "cfg = EvaluateConfig.model_validate(config)\n"
        "open(os.environ['RUN_LOG'], 'a').write(cell_dir + '\\n')\n"
        "lin = lineage  # handed in by the runner\n"
        "acc = 0.1 * (lin['level'] or 0)\n"
        "import json\n"
        "recs = [{'id': f'q{i}', 'output': f'The answer is {i}', 'gold': str(i % 2), 'answer_type': 'number', 'choices': None,\n"
        "         'extracted': str(i), 'correct': i % 2 == 0, 'strict_correct': i % 2 == 0, 'answer_found': True,\n"
        "         'format_followed': True, 'new_tokens': 5, 'hit_limit': False} for i in range(lin['level'] or 1)]\n"
        "open(f'{cell_dir}/records.jsonl', 'w').write(''.join(json.dumps(r) + '\\n' for r in recs))\n"
        "cells.finish(cell_dir, 'evaluate', cfg, {'n': 10, 'accuracy': acc, 'ci95_low': acc, 'ci95_high': acc, 'lineage': lin})\n"
    ),
}


def _stub_notebook(path: Path, body: str) -> None:
    nb = new_notebook()
    params = new_code_cell("cell_dir = None\nconfig = {}\ninputs = {}\nlineage = {}\nseal = 'now'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "cotlib", "display_name": "Python (cotlib)", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def stub_grid(tmp_project: Path, monkeypatch) -> Path:
    stubs = tmp_project / "stubs"
    stubs.mkdir()
    for stage, body in _BODY.items():
        _stub_notebook(stubs / f"{stage}.ipynb", body)
    grid = {
        "name": "mini", "output_dir": str(tmp_project / "outputs"),
        "notebooks": {s: f"../stubs/{s}.ipynb" for s in _BODY},  # figures: the real notebook
        "generate": {"level": [1, 2, 3], "n_examples": 2},
        "sft": {"max_steps": 1},
        "evaluate": {"n_examples": 2},
        "figures": {"formats": ["png"]},
    }
    path = tmp_project / "params" / "mini.yaml"
    path.write_text(yaml.safe_dump(grid))
    monkeypatch.setenv("RUN_LOG", str(tmp_project / "runs.log"))
    return path


def _runs(tmp_project: Path) -> list[str]:
    log = tmp_project / "runs.log"
    return log.read_text().split() if log.exists() else []


def test_failed_cell_is_recorded_others_run_and_rerun_resumes(stub_grid, tmp_project, monkeypatch):
    monkeypatch.setenv("FAIL_LEVELS", "2")
    g = load_grid(stub_grid)
    states = {s.cell.name: s for s in runner.run(g, log=lambda _: None)}

    failed = [s for s in states.values() if s.state == "failed"]
    assert [s.cell.name for s in failed] == [c.name for c in g.cells if c.stage == "generate" and c.config.level == 2]
    bad_dir = g.output_root / failed[0].cell.name
    assert "injected failure at level 2" in json.loads((bad_dir / "error.json").read_text())["error"]
    executed = nbformat.read(bad_dir / "executed.ipynb", as_version=4)  # the executed notebook keeps the error
    assert any(o.get("ename") == "RuntimeError" for c in executed.cells for o in c.get("outputs", []))
    blocked = {s.cell.name for s in states.values() if s.state == "blocked"}
    assert len(blocked) == 2  # the level-2 sft cell and its evaluate cell
    done = [s for s in states.values() if s.state == "done"]
    assert len(done) == len(g.cells) - 3  # everything independent of the failure finished, figures included
    # dependency order: every cell ran after the cells it needs
    order = [Path(p).relative_to(g.output_root).as_posix() for p in _runs(tmp_project)]
    for c in g.cells:
        for d in c.deps:
            if c.name in order and d in order:
                assert order.index(d) < order.index(c.name)
    fig = g.output_root / "figures"
    assert (fig / "accuracy_vs_level.png").stat().st_size > 10_000
    used = json.loads((fig / "metrics.json").read_text())["inputs"]  # every finished upstream it drew on
    assert sum(u.startswith("evaluate/") for u in used) == 3  # base + levels 1 and 3
    assert sum(u.startswith("generate/") for u in used) == 2  # the supervision figure's replayed rows

    # the dry-run estimate: the still-missing cells times the recorded time of finished cells of their stage
    est = runner.estimate(load_grid(stub_grid))
    runtimes = [json.loads((g.output_root / c.name / "runtime.json").read_text())["seconds"]
                for c in g.cells if c.stage == "generate" and c.name != failed[0].cell.name]
    assert est["generate"]["to_run"] == 1 and est["generate"]["device"] == "cpu"
    assert est["generate"]["hours"] == pytest.approx(sum(runtimes) / len(runtimes) / 3600)
    assert est["sft"]["to_run"] == 1 and "figures" not in est

    # a rerun skips finished cells: only the failed cell (and what it blocked) runs again
    monkeypatch.setenv("FAIL_LEVELS", "")
    (tmp_project / "runs.log").unlink()
    states2 = runner.run(load_grid(stub_grid), log=lambda _: None)
    assert all(s.state == "done" for s in states2)
    rerun = {Path(p).relative_to(g.output_root).as_posix() for p in _runs(tmp_project)}
    assert rerun == {failed[0].cell.name, *blocked}  # figures is no stand-in: it reran as stale, unlogged
    used = json.loads((fig / "metrics.json").read_text())["inputs"]
    assert sum(u.startswith("evaluate/") for u in used) == 4 and sum(u.startswith("generate/") for u in used) == 3

    (tmp_project / "runs.log").unlink()
    runner.run(load_grid(stub_grid), log=lambda _: None)
    assert _runs(tmp_project) == []  # nothing left to do


def test_cli_exits_nonzero_naming_failed_cells_and_status_shows_them(stub_grid, tmp_project, monkeypatch):
    monkeypatch.setenv("FAIL_LEVELS", "3")
    cli = [sys.executable, "-m", "cotlib.cli"]
    run = subprocess.run([*cli, "run", str(stub_grid)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 1
    assert "__L3__cot__" in run.stderr and "failed" in run.stderr
    status = subprocess.run([*cli, "status", str(stub_grid), "--json"], capture_output=True, text=True, timeout=120)
    rows = json.loads(status.stdout)
    assert {r["state"] for r in rows if "__L3__" in r["cell"] and r["stage"] == "generate"} == {"failed"}
    assert sum(r["state"] == "done" for r in rows) == 8  # 2 generate, 2 sft, 3 evaluate, figures
    assert [r["stage"] for r in rows if r["state"] == "blocked"] == ["sft", "evaluate"]
    dry = subprocess.run([*cli, "run", str(stub_grid), "--dry-run"], capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0 and "generate     3 cells, 2 done, 1 to run" in dry.stdout


def _span(cell_dir: Path) -> tuple[datetime, datetime]:
    pm = nbformat.read(cell_dir / "executed.ipynb", as_version=4).metadata.papermill
    return datetime.fromisoformat(pm.start_time), datetime.fromisoformat(pm.end_time)


def test_jobs_runs_ready_cells_side_by_side_with_the_outcome_of_one_at_a_time(stub_grid, tmp_project, monkeypatch):
    """`cotlib run --jobs 2` (what `make demo` uses): two notebooks at once, each cell still after the cells
    it reads, a failure recorded and what needs it blocked, one console line per cell, as without --jobs."""
    monkeypatch.setenv("FAIL_LEVELS", "3")
    cli = [sys.executable, "-m", "cotlib.cli"]
    bad = subprocess.run([*cli, "run", str(stub_grid), "--jobs", "0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--jobs 0: must be 1 or more" in bad.stderr and not _runs(tmp_project)
    run = subprocess.run([*cli, "run", str(stub_grid), "--jobs", "2"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 1 and "__L3__cot__" in run.stderr
    g = load_grid(stub_grid)
    states = {s.cell.name: s.state for s in runner.status(g)}
    assert sum(v == "done" for v in states.values()) == 8, (states, run.stdout + run.stderr)  # as test_cli_exits_nonzero_naming_failed_cells... finds
    assert sorted(c.stage for c in g.cells if states[c.name] == "blocked") == ["evaluate", "sft"]
    lines = [ln for ln in (run.stdout + run.stderr).replace("\r", "\n").splitlines() if re.match(r"\[\d+/11\] ", ln)]
    assert sorted(int(ln[1:ln.index("/")]) for ln in lines) == list(range(1, 12))  # each cell settled once
    spans = {c.name: _span(g.output_root / c.name) for c in g.cells if (g.output_root / c.name / "executed.ipynb").exists()}
    for c in g.cells:
        for d in c.deps:
            if c.name in spans and d in spans:
                assert spans[d][1] <= spans[c.name][0], f"{c.name} started before {d} had finished"
    ran = sorted(spans.values())
    assert any(b[0] < a[1] for a, b in zip(ran, ran[1:])), "no two notebooks ran at the same time"


def test_jobs_a_killed_worker_fails_only_its_own_cell_and_a_rerun_resumes(stub_grid, tmp_project, monkeypatch):
    """Under --jobs a cell runs in a worker process; one killed (by hand, by the OOM killer) takes down its
    pool and every cell in flight. The run goes on: the cells beside it are retried and finish, the one
    whose worker dies again while running alone is recorded as failed, and a rerun finishes it."""
    monkeypatch.setenv("KILL_WORKER_LEVELS", "2")
    monkeypatch.setenv("SLOW_LEVELS", "1,3")  # so that level 2's worker dies with another cell in flight
    cli = [sys.executable, "-m", "cotlib.cli"]
    run = subprocess.run([*cli, "run", str(stub_grid), "--jobs", "2"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stderr[-2000:]
    console = run.stdout + run.stderr
    assert "retrying it alone" in console and "BrokenProcessPool" not in console, console
    g = load_grid(stub_grid)
    states = {s.cell.name: s for s in runner.status(g)}
    failed = [s for s in states.values() if s.state == "failed"]
    assert [s.cell.stage for s in failed] == ["generate"] and "__L2__" in failed[0].cell.name
    assert "worker process died" in failed[0].detail
    assert sum(s.state == "done" for s in states.values()) == 8
    monkeypatch.delenv("KILL_WORKER_LEVELS")
    again = subprocess.run([*cli, "run", str(stub_grid), "--jobs", "2"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert all(s.state == "done" for s in runner.status(g))


def _kernel_sockets(out_dir: str, die: bool = False) -> str:
    """Run a notebook with the runner's kernel manager; what the kernel says it listens on. `die`: the kernel
    then exits under papermill's feet, as one killed or out of memory does."""
    import papermill as pm

    nb = new_notebook(cells=[new_code_cell(
        "from ipykernel.kernelapp import IPKernelApp\napp = IPKernelApp.instance()\nprint(app.transport, app.ip)")])
    if die:
        nb.cells.append(new_code_cell("import os\nos._exit(1)"))
    nb.metadata["kernelspec"] = {"name": "cotlib", "display_name": "Python (cotlib)", "language": "python"}
    src = Path(out_dir) / "in.ipynb"
    nbformat.write(nb, src)
    try:
        pm.execute_notebook(str(src), str(Path(out_dir) / "out.ipynb"), kernel_name="cotlib", progress_bar=False,
                            kernel_manager_class=runner._logged_kernel(Path(out_dir) / "kernel.log"))
    except Exception:
        if not die:
            raise
    else:
        assert not die, "the kernel was to die"
    return nbformat.read(Path(out_dir) / "out.ipynb", as_version=4).cells[0].outputs[0]["text"].strip()


@pytest.mark.skipif(sys.platform == "win32", reason="Unix sockets: the runner's kernels use TCP on Windows")
def test_kernels_started_at_once_by_separate_processes_do_not_share_sockets(tmp_path):
    """Under --jobs two processes start kernels at the same instant. Over TCP, jupyter_client hands out ports
    it has just seen free, so two kernels could be given the same one and one die before it ran anything
    (the likely cause of a cell failing, its readers blocked, on CI). The runner's kernels listen on Unix sockets in a folder
    of their own, removed when the kernel shuts down."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    dirs = [tmp_path / f"k{i}" for i in range(4)]
    for d in dirs:
        d.mkdir()
    with ProcessPoolExecutor(4, mp_context=get_context("spawn")) as pool:
        said = list(pool.map(_kernel_sockets, [str(d) for d in dirs]))
    transports, ips = zip(*(s.split(" ", 1) for s in said))
    assert set(transports) == {"ipc"} and len({Path(ip).parent for ip in ips}) == 4, said
    assert not any(Path(ip).parent.exists() for ip in ips), "a kernel's socket folder outlived it"
    (tmp_path / "dies").mkdir()
    transport, ip = _kernel_sockets(str(tmp_path / "dies"), die=True).split(" ", 1)
    assert transport == "ipc" and not Path(ip).parent.exists(), "a dead kernel's socket folder was left behind"


def test_validation_fails_before_any_kernel_starts(tmp_project, monkeypatch):
    monkeypatch.setenv("RUN_LOG", str(tmp_project / "runs.log"))
    path = tmp_project / "params" / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", "generate": {"level": 1}, "sft": {"epochs": 0}}))
    run = subprocess.run([sys.executable, "-m", "cotlib.cli", "run", str(path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert f"{path}: sft.epochs: Input should be greater than 0" in run.stderr
    assert not (tmp_project / "outputs").exists()


def test_the_explore_notebook_runs_in_a_real_kernel(tmp_path, project_root):
    import papermill as pm

    pm.execute_notebook(str(project_root / "notebooks" / "explore.ipynb"), str(tmp_path / "explore.ipynb"),
                        parameters={"grid": str(project_root / "params" / "demo.yaml")}, kernel_name="cotlib",
                        cwd=str(project_root / "notebooks"), progress_bar=False)
    nb = nbformat.read(tmp_path / "explore.ipynb", as_version=4)
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for c in nb.cells for o in c.get("outputs", []))
    assert "Explain in detailed numbered steps" in text  # the level table
    assert "format_followed" in text  # the grader's table


def test_qlora_on_a_cpu_machine_is_refused_before_any_kernel(tmp_project):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    path = tmp_project / "params" / "q.yaml"
    path.write_text(yaml.safe_dump({"name": "q", "output_dir": str(tmp_project / "outputs"),
                                    "generate": {"level": 1, "n_examples": 2}, "sft": {"method": "qlora"}}))
    run = subprocess.run([sys.executable, "-m", "cotlib.cli", "run", str(path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "cannot start" in run.stderr and "needs a CUDA GPU" in run.stderr and "use method: lora" in run.stderr
    assert not (tmp_project / "outputs" / "q" / "generate").exists()  # nothing ran, not even the generate cell


def test_export_attributes_only_finished_cells_and_figures_redraw_from_it(stub_grid, tmp_project):
    """`cotlib results --export` writes the small files to commit; `cotlib figures DIR` redraws from them alone.
    A cell cut short (provenance written at its start, no metrics.json) is not counted as produced by any code."""
    g = load_grid(stub_grid)
    assert all(s.state == "done" for s in runner.run(g, log=lambda _: None))
    cut = next(c for c in g.cells if c.stage == "generate")  # the stand-in that, like the real one, calls cells.start
    prov = json.loads((g.output_root / cut.name / "provenance.json").read_text())  # as `cells.start` left it
    (g.output_root / cut.name / "metrics.json").unlink()
    cli = [sys.executable, "-m", "cotlib.cli"]
    out = tmp_project / "docs" / "results"
    r = subprocess.run([*cli, "results", str(stub_grid), "--export", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    code = json.loads((out / "code.json").read_text())
    finished = sum((g.output_root / c.name / "metrics.json").exists() and (g.output_root / c.name / "provenance.json").exists()
                   for c in g.cells)
    assert sum(code["cells_by_code_version"].values()) == finished
    assert prov["git"] is not None and (out / "results.csv").exists() and (out / "grid").is_dir()
    rows = (out / "results.csv").read_text().splitlines()[1:]
    assert len((out / "results.md").read_text().splitlines()) == 2 + len(rows) > 2  # header, rule, a line per row
    for png in out.glob("*.png"):
        png.unlink()
    r = subprocess.run([*cli, "figures", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (out / "accuracy_vs_level.png").stat().st_size > 10_000


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cotlib.cli", *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_a_new_machine_restores_finished_evaluations_from_an_export_and_runs_only_the_rest(stub_grid, tmp_project):
    """What a fresh clone does with a committed export: `cotlib results --restore` rebuilds the exported evaluations,
    `cotlib status` shows their training as not needed, and `cotlib run` trains and evaluates only what the export
    lacks; a second export gives the restored rows back as they were."""
    import shutil

    g = load_grid(stub_grid)
    assert all(s.state == "done" for s in runner.run(g, log=lambda _: None))
    by = {(c.stage, c.lineage.get("level")): c for c in g.cells}
    (g.output_root / by["evaluate", 3].name / "metrics.json").unlink()  # level 3 not evaluated on the old machine
    first = tmp_project / "docs" / "first"
    assert _cli("results", str(stub_grid), "--export", str(first)).returncode == 0
    shutil.rmtree(g.output_root)  # a new machine: nothing in outputs/
    (tmp_project / "runs.log").unlink()

    r = _cli("results", str(stub_grid), "--restore", str(first))
    assert r.returncode == 0 and "restored 3 evaluate cells" in r.stdout, r.stdout + r.stderr  # levels 1, 2 and base
    state = {s["cell"]: s["state"] for s in json.loads(_cli("status", str(stub_grid), "--json").stdout)}
    assert [state[by["evaluate", k].name] for k in (1, 2, 3)] == ["done", "done", "pending"]
    assert [state[by["sft", k].name] for k in (1, 2, 3)] == ["unneeded", "unneeded", "pending"]
    prov = json.loads((g.output_root / by["evaluate", 1].name / "provenance.json").read_text())
    assert prov["restored"]["from"] == str(first) and prov["inputs"] == {}  # nothing here to fingerprint

    r = _cli("run", str(stub_grid))
    assert r.returncode == 0, r.stdout + r.stderr
    ran = {Path(p).relative_to(g.output_root).as_posix() for p in _runs(tmp_project)}
    assert ran == {*(by["generate", k].name for k in (1, 2, 3)), by["sft", 3].name, by["evaluate", 3].name}

    second = tmp_project / "docs" / "second"
    assert _cli("results", str(stub_grid), "--export", str(second)).returncode == 0
    import pandas as pd

    before, after = (pd.read_csv(f / "results.csv").set_index("cell") for f in (first, second))
    pd.testing.assert_frame_equal(after.loc[before.index], before)
    assert len(after) == 4
    c1, c2 = (pd.read_csv(f / "correct.csv", index_col="question") for f in (first, second))
    pd.testing.assert_frame_equal(c2[c1.columns].dropna(how="all"), c1.dropna(how="all"), check_dtype=False)


def test_restore_refuses_an_export_of_cells_the_grid_does_not_have(stub_grid, tmp_project):
    g = load_grid(stub_grid)
    assert all(s.state == "done" for s in runner.run(g, log=lambda _: None))
    out = tmp_project / "docs" / "results"
    assert _cli("results", str(stub_grid), "--export", str(out)).returncode == 0
    changed = yaml.safe_load(stub_grid.read_text())
    changed["evaluate"]["n_examples"] = 3  # the grid changed since the export: other cells
    stub_grid.write_text(yaml.safe_dump(changed))
    evaluate = load_grid(stub_grid).output_root / "evaluate"
    before = sorted(p.name for p in evaluate.iterdir())
    r = _cli("results", str(stub_grid), "--restore", str(out))
    assert r.returncode == 2 and "exported cells are not cells of" in r.stderr and "evaluate/" in r.stderr, r.stderr
    assert sorted(p.name for p in evaluate.iterdir()) == before  # refused before writing anything


def test_only_training_whose_evaluations_were_restored_is_skipped(stub_grid, tmp_project):
    """A training cell whose input changed (stale) or that failed is redone even though its evaluation is done
    here: `unneeded` is for evaluations restored from an export, not a way to keep a result past its input."""
    from cotlib import cells
    from cotlib.schemas import SftConfig

    g = load_grid(stub_grid)
    assert all(s.state == "done" for s in runner.run(g, log=lambda _: None))
    sft = [c for c in g.cells if c.stage == "sft"]
    data = tmp_project / "train.jsonl"
    data.write_text("one\n")
    cells.start(g.cell_dir(sft[0]), "sft", SftConfig.model_validate(sft[0].config.model_dump()), inputs={"train": data})
    data.write_text("two\n")  # its training data changed since it ran
    (g.cell_dir(sft[1]) / "metrics.json").unlink()
    cells.record_error(g.cell_dir(sft[1]), "RuntimeError: out of memory")
    state = {s.cell.name: s.state for s in runner.status(g)}
    assert [state[c.name] for c in sft[:2]] == ["stale", "failed"]
    (tmp_project / "runs.log").unlink()
    runner.run(g, log=lambda _: None)
    assert {Path(p).relative_to(g.output_root).as_posix() for p in _runs(tmp_project)} >= {sft[0].name, sft[1].name}


_LEGACY_FIELDS = ("id", "output", "gold", "answer_type", "choices", "extracted", "correct", "new_tokens")


def _as_before_cells_json(export: Path, to: Path) -> Path:
    """A copy of an export as cotlib wrote it before cells.json: no cells.json, and each output with its stored
    grade only (the grade fields a restore has to read off the output again left out)."""
    import gzip
    import shutil

    shutil.copytree(export, to)
    (to / "cells.json").unlink()
    with gzip.open(export / "outputs.jsonl.gz", "rt") as fh:
        rows = [json.loads(line) for line in fh]
    with gzip.open(to / "outputs.jsonl.gz", "wt") as fh:
        fh.writelines(json.dumps({"cell": r["cell"], **{k: r[k] for k in _LEGACY_FIELDS}}) + "\n" for r in rows)
    return to


@needs_shared_data
@pytest.mark.parametrize("form", ["as committed", "before cells.json"])
def test_the_committed_study_export_restores_into_the_study_grid(tmp_project, project_root, form):
    """The committed SVAMP results rebuild the study's finished evaluations on a new machine, and exporting them
    again gives the committed table and grades back; also from an export of the older form (no cells.json,
    outputs with their stored grade only), whose metrics are rebuilt from the table and the outputs."""
    import shutil

    import pandas as pd

    committed = project_root / "docs" / "results" / "svamp"
    source = committed if form == "as committed" else _as_before_cells_json(committed, tmp_project / "older")
    study = tmp_project / "params" / "study"
    shutil.copytree(project_root / "params" / "study", study)
    r = _cli("results", str(study / "svamp.yaml"), "--restore", str(source), cwd=tmp_project)
    n = len(pd.read_csv(committed / "results.csv"))
    assert r.returncode == 0 and f"restored {n} evaluate cells" in r.stdout, r.stdout + r.stderr
    states = json.loads(_cli("status", str(study / "svamp.yaml"), "--json", cwd=tmp_project).stdout)
    evaluated = [s for s in states if s["stage"] == "evaluate" and s["state"] == "done"]
    assert len(evaluated) == n
    for s in evaluated:
        cell = tmp_project / "outputs" / "study-svamp" / s["cell"]
        records = [json.loads(x) for x in (cell / "records.jsonl").read_text().splitlines()]
        assert len(records) == 300 and all(r["prompt"] and r["output"] and "format_followed" in r for r in records)
        restored = json.loads((cell / "provenance.json").read_text())["restored"]
        assert "rebuilt" in restored["prompts"]
    trained = [s for s in states if s["stage"] == "sft" and s["state"] != "pending"]
    assert trained and all(s["state"] == "unneeded" for s in trained)
    again = tmp_project / "again"
    r = _cli("results", str(study / "svamp.yaml"), "--export", str(again), cwd=tmp_project)
    assert r.returncode == 0, r.stdout + r.stderr
    before, after = pd.read_csv(committed / "results.csv"), pd.read_csv(again / "results.csv")
    added = set(after.columns) - set(before.columns)  # columns added since the export: empty where a cell lacks them
    assert all(after[c].isna().all() for c in added) and not set(before.columns) - set(after.columns)
    pd.testing.assert_frame_equal(after[before.columns], before)
    assert (again / "correct.csv").read_text() == (committed / "correct.csv").read_text()
    if form == "as committed":  # restored twice, the legacy cells keep the code versions their first export named
        code = {f: json.loads((f / "code.json").read_text()) for f in (committed, again)}
        assert code[again]["earlier_export_code_versions"] == code[committed]["earlier_export_code_versions"]
        # a newcomer's one command: every figure again from a copy of the committed folder alone
        copy = shutil.copytree(committed, tmp_project / "newcomer")
        for f in copy.glob("*.png"):
            f.unlink()
        r = _cli("figures", str(copy), cwd=tmp_project)
        assert r.returncode == 0, r.stdout + r.stderr
        assert {f.name for f in copy.glob("*.png")} == {f.name for f in committed.glob("*.png")}
        pd.testing.assert_frame_equal(pd.read_csv(copy / "paired.csv"), pd.read_csv(committed / "paired.csv"))

"""cotlib in JupyterLab as a user meets it (issue 19): the notebooks are committed the way git's filter
leaves them, Lab saves tracked notebooks that way too (so `git status` stays clean), progress bars and
library chatter suit where a notebook runs, and, in a real headless browser, the tour runs without an
error or warning box, an executed cell notebook under outputs/ opens, and git status is clean after.

The browser test needs Debian's `chromium` and `chromium-driver` and Selenium; without them it is
skipped with the command that runs it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import lab_browser_check as lab  # noqa: E402

STRIP_EXTRA = ["metadata.language_info"]  # what `make git-filter` adds to nbstripout's defaults


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def _project(tmp: Path) -> Path:
    """A fresh clone after `make setup`: the tracked files that matter here, committed, filter installed."""
    if not shutil.which("git") or not shutil.which("make"):
        pytest.skip("needs git and make")
    root = tmp / "clone"
    root.mkdir()
    for name in ("notebooks", "params"):
        shutil.copytree(ROOT / name, root / name)
    for name in (".gitattributes", ".gitignore", "Makefile"):
        shutil.copy(ROOT / name, root / name)
    assert _git(root, "init", "-q").returncode == 0
    made = subprocess.run(["make", "-s", "-f", str(root / "Makefile"), "git-filter", f"VENV={Path(sys.executable).parent.parent}"],
                          cwd=root, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stdout + made.stderr
    assert _git(root, "config", "filter.nbstripout.extrakeys").stdout.split() == STRIP_EXTRA
    return root


def _commit(root: Path) -> None:
    assert _git(root, "add", "-A").returncode == 0
    assert _git(root, "commit", "-qm", "clone").returncode == 0
    assert _git(root, "status", "--porcelain").stdout == ""


def _as_lab_saves_it(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """What Lab writes after the kernel connected and Run All: language_info, counts, outputs, widget state."""
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    nb.metadata["language_info"] = {"name": "python", "version": "3.11.2", "mimetype": "text/x-python"}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2}}
    for i, c in enumerate(nb.cells):
        if c.cell_type == "code":
            c.execution_count = i
            c.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello\n")]
            c.metadata["execution"] = {"iopub.status.idle": "2026-01-01T00:00:00Z"}
    return nb


def test_notebooks_are_committed_as_built_and_as_the_filter_leaves_them(tmp_path):
    from nbstripout import strip_output

    import build_notebooks

    build_notebooks.HERE = tmp_path
    build_notebooks.build()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        text = path.read_text()
        assert (tmp_path / path.name).read_text() == text, f"{path.name}: rerun scripts/build_notebooks.py"
        nb = nbformat.reads(text, as_version=4)
        stripped = strip_output(nbformat.reads(text, as_version=4), keep_output=False, keep_count=False, keep_id=False,
                                extra_keys=lab_config().STRIP_KEYS + STRIP_EXTRA)
        assert nbformat.writes(stripped) + "\n" == text, f"{path.name}: not as the git filter leaves it"
        assert nb.metadata.kernelspec.name == "cotlib"  # how Lab picks `Python (cotlib)` without asking
        assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1


def lab_config():
    """scripts/jupyter_lab_config.py as a module (it calls get_config() when Jupyter loads it)."""
    import types

    mod = types.ModuleType("jupyter_lab_config")
    mod.get_config = lambda: types.SimpleNamespace(ContentsManager=types.SimpleNamespace())
    exec(compile((ROOT / "scripts" / "jupyter_lab_config.py").read_text(), "jupyter_lab_config.py", "exec"), mod.__dict__)
    return mod


class _Contents:
    """The bits of a Jupyter contents manager the pre-save hook uses."""

    def __init__(self, root: Path):
        import logging

        self.root, self.log = root, logging.getLogger("test")

    def _get_os_path(self, path: str) -> str:
        return str(self.root / path)


@pytest.mark.slow  # a git repository whose filter starts Python for every notebook it reads
def test_a_notebook_saved_after_run_all_leaves_git_status_clean(tmp_path):
    """The save hook of `make lab` writes a tracked notebook as committed; without it the filter still
    keeps `git diff` empty, but git reports the file modified since its size changed (why the hook)."""
    root = _project(tmp_path)
    _commit(root)
    hook, cm = lab_config().strip_tracked_notebooks, _Contents(root)
    ran = _as_lab_saves_it(nbformat.read(root / "notebooks" / "explore.ipynb", as_version=4))

    model = {"type": "notebook", "content": json.loads(json.dumps(ran))}
    hook(model=model, path="notebooks/explore.ipynb", contents_manager=cm)
    nbformat.write(nbformat.from_dict(model["content"]), root / "notebooks" / "explore.ipynb")
    assert _git(root, "status", "--porcelain").stdout == ""

    nbformat.write(ran, root / "notebooks" / "explore.ipynb")  # saved by a Lab without the hook
    assert _git(root, "diff").stdout == ""  # the filter: nothing to commit
    assert _git(root, "status", "--porcelain").stdout.strip() == "M notebooks/explore.ipynb"  # yet git says M
    _git(root, "add", "notebooks/explore.ipynb")
    assert _git(root, "status", "--porcelain").stdout == ""

    model = {"type": "notebook", "content": json.loads(json.dumps(ran))}  # a notebook git does not track
    hook(model=model, path="notebooks/mine.ipynb", contents_manager=cm)
    assert any(c.get("outputs") for c in model["content"]["cells"])  # keeps its outputs


def test_provenance_dirty_flag_says_what_it_covers():
    from cotlib import cells

    g = cells._git()
    if g["sha"] is None:
        pytest.skip("not a git checkout")
    assert isinstance(g["dirty"], bool) and "notebooks/" in g["dirty_covers"]
    assert all(p.split("/")[0] in ("cotlib", "notebooks", "params", "pyproject.toml") for p in g["dirty_files"])


@pytest.mark.slow
def test_progress_bars_and_library_messages_under_papermill(tmp_path):
    """Under papermill: cotlib's and tqdm.auto's bars as plain stdout lines (no widget that Lab would later
    draw as a stale 0%), library stderr in the cell's kernel.log with a note, no pink box."""
    import papermill as pm
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell(
        "import os, sys, warnings\nfrom tqdm.auto import tqdm\nfrom cotlib import show\n\n"
        f"with show.quiet({str(tmp_path / 'cell')!r}):\n"
        "    warnings.warn('a library warning')\n    os.write(2, b'a native message\\n')\n"
        "    import tqdm.auto\n    for _ in tqdm.auto.tqdm(range(3), desc='library bar'):\n        pass\n"
        "for _ in show.progress(range(3), desc='cotlib bar'):\n    pass\nprint(show.progress_mode())")])
    nb.metadata["kernelspec"] = {"name": "cotlib", "display_name": "Python (cotlib)", "language": "python"}
    nbformat.write(nb, tmp_path / "in.ipynb")
    pm.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="cotlib", progress_bar=False)
    outs = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells[0].outputs
    stdout = "".join(o.text for o in outs if o.output_type == "stream" and o.name == "stdout")
    assert not [o for o in outs if o.output_type == "stream" and o.name == "stderr"]
    assert not [o for o in outs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert "library bar: 100%" in stdout and "cotlib bar: 100%" in stdout and "\r" not in stdout
    assert stdout.strip().endswith("lines")
    log = (tmp_path / "cell" / "kernel.log").read_text()
    assert "a library warning" in log and "a native message" in log
    assert any("went to" in str(o.get("data", {}).get("text/plain", "")) for o in outs)


_FAKE_UPSTREAM = """
import sys
from pathlib import Path
from cotlib import cells
from cotlib.expansion import load_grid
from cotlib.files import write_jsonl

root = Path(sys.argv[1])
g = load_grid(root / "params" / "labcheck.yaml", project_root=root)
for i, c in enumerate(g.cells):
    if c.stage == "figures":
        continue
    d = g.cell_dir(c)
    cells.start(d, c.stage, c.config)
    acc = 0.25 * (i % 3)
    if c.stage == "evaluate":
        write_jsonl(d / "records.jsonl", [{"id": f"q{k}", "gold": str(k), "correct": k <= i % 3,
                                           "output": f"Step one.\\nThe answer is {k}."} for k in range(1, 5)])
    m = {"generate": {"kept": 4, "n_examples": 4, "failed": 0, "retryable_failed": 0}, "sft": {"steps": 1},
         "evaluate": {"n": 4, "accuracy": acc, "ci95_low": max(0.0, acc - 0.2), "ci95_high": min(1.0, acc + 0.4),
                      "lineage": c.lineage}}[c.stage]
    cells.finish(d, c.stage, c.config, m)
"""

_GRID = """name: labcheck
generate: {dataset: demo-arith, teacher: smollm2-135m, level: [1, 3], n_examples: 4}
sft: {student: smollm2-135m, method: lora}
evaluate: {n_examples: 4}
figures: {formats: [png]}
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_lab_in_a_real_browser(tmp_path):
    """A fresh clone; a grid whose figures cell `cotlib run` executes (its upstream cells are marked done,
    no model runs); JupyterLab as `make lab` starts it; the tour run all and saved; the executed figures
    notebook opened from outputs/; a progress bar drawn; screenshots; git status clean after."""
    if lab.browser_paths() is None:
        pytest.skip(f"no chromium/chromedriver: {lab.HOW_TO_RUN}")
    pytest.importorskip("selenium", reason=f"no selenium: {lab.HOW_TO_RUN}")
    root = _project(tmp_path)
    (root / "params" / "labcheck.yaml").write_text(_GRID)
    _commit(root)
    py = sys.executable
    fake = subprocess.run([py, "-c", _FAKE_UPSTREAM, str(root)], capture_output=True, text=True, timeout=120)
    assert fake.returncode == 0, fake.stderr
    run = subprocess.run([py, "-m", "cotlib.cli", "run", "params/labcheck.yaml"], cwd=root, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    figures = "outputs/labcheck/figures/executed.ipynb"
    report = lab.run_check(root, run=["notebooks/explore.ipynb"], open_=[figures], shots=tmp_path / "shots",
                           expect_clean=True)
    print(json.dumps(report.__dict__, indent=1))
    assert report.problems == []
    assert f"GET /api/contents/{figures}: 200" in report.seen
    assert any("kernel 'Python (cotlib)' picked without a prompt" in s for s in report.seen)
    assert any("progress bar drawn as a widget: True" in s for s in report.seen)
    shown = report.texts[figures]
    assert "figures from 3 finished evaluate cells" in shown  # the headline
    assert "NaN" not in shown and "\t1.0\t" not in shown  # tidy tables: levels 1 and 3, '—' for the base student
    assert len(report.screenshots) >= 3 and all(Path(p).stat().st_size > 10_000 for p in report.screenshots)

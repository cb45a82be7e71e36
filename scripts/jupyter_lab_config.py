"""JupyterLab settings for this project (`make lab` passes `--config=scripts/jupyter_lab_config.py`).

A notebook that git tracks and strips (`*.ipynb filter=nbstripout` in .gitattributes) is saved the way
the filter leaves it: without outputs, execution counts, widget state or the language_info that Lab
writes as soon as a kernel connects. So opening the tour or a stage notebook, running it and saving
(autosave does, two minutes after the kernel connects) leaves the file byte for byte as committed, and
`git status` clean. The git filter alone cannot promise that: git reports a tracked file whose size
changed as modified without asking the filter, so `git diff` would be empty while `git status` says
`M`. Your edits to the cells are saved as usual; to keep a run with its outputs, save a copy outside the
tracked files (File > Save Notebook As... `outputs/explore.ipynb`; outputs/ is git-ignored).

Executed cell notebooks (outputs/<grid>/<stage>/<cell>/executed.ipynb) and any notebook git does not
track are saved unchanged.
"""

import subprocess
from pathlib import Path

# nbstripout's own defaults, and what `make git-filter` adds (git config filter.nbstripout.extrakeys)
STRIP_KEYS = ["metadata.signature", "metadata.widgets", "cell.metadata.collapsed", "cell.metadata.ExecuteTime",
              "cell.metadata.execution", "cell.metadata.heading_collapsed", "cell.metadata.hidden",
              "cell.metadata.scrolled"]
DEFAULT_EXTRA = ["metadata.language_info"]


def _git(os_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=os_path.parent, capture_output=True, text=True, timeout=20)


def stripped_by_git(os_path: Path) -> list[str] | None:
    """The keys git's nbstripout filter strips from this file, or None where git does not track it or
    does not strip it."""
    try:
        attr = _git(os_path, "check-attr", "filter", "--", os_path.name)
        if not attr.stdout.strip().endswith(": nbstripout"):
            return None
        if _git(os_path, "ls-files", "--error-unmatch", "--", os_path.name).returncode != 0:
            return None  # new: a notebook of yours, saved as it is
        extra = _git(os_path, "config", "filter.nbstripout.extrakeys").stdout.split() or DEFAULT_EXTRA
    except (OSError, subprocess.TimeoutExpired):
        return None
    return STRIP_KEYS + extra


def strip_tracked_notebooks(model, path, contents_manager, **kwargs):
    """Pre-save hook: a tracked, filtered notebook is saved as nbstripout would commit it."""
    if model.get("type") != "notebook" or not isinstance(model.get("content"), dict):
        return
    os_path = Path(contents_manager._get_os_path(path))
    keys = stripped_by_git(os_path)
    if keys is None:
        return
    import nbformat
    from nbstripout import strip_output

    nb = nbformat.from_dict(model["content"])
    model["content"] = strip_output(nb, keep_output=False, keep_count=False, keep_id=False, extra_keys=keys)
    contents_manager.log.info("saved %s without outputs (git strips them; see scripts/jupyter_lab_config.py)", path)


c = get_config()  # noqa: F821 - defined by Jupyter when it loads this file
c.ContentsManager.pre_save_hook = strip_tracked_notebooks

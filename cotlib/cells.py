"""The cell directory contract: config.yaml, provenance.json, records.jsonl, and metrics.json
written last and atomically; its presence with a matching config hash means "done"."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .files import atomic_write_json, atomic_write_yaml, canonical_hash, file_sha256, read_json

_PACKAGES = ("cotlib", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "papermill", "math-verify")


def config_hash(stage: str, cfg: BaseModel) -> str:
    """A cell's identity: its parameters, plus what else decides its output (a teacher's exact prompt)."""
    extra = cfg.identity_extra() if hasattr(cfg, "identity_extra") else {}
    return canonical_hash({"stage": stage, **cfg.model_dump(mode="json"), **extra})


def grid_root(cell_dir: str | Path) -> Path:
    """The grid's output folder: cells live at <root>/<stage>/<name>, figures at <root>/figures."""
    cell_dir = Path(cell_dir).resolve()
    return cell_dir.parent if cell_dir.name == "figures" else cell_dir.parent.parent


def _git() -> dict[str, Any]:
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return {"sha": None, "dirty": None}
    if sha.returncode != 0:
        return {"sha": None, "dirty": None}
    return {"sha": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for p in _PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def device_info() -> dict[str, Any]:
    """The device this process computes on; with CUDA, which GPUs it was given (Ray sets CUDA_VISIBLE_DEVICES)."""
    try:
        import torch
    except ImportError:
        return {"type": "cpu"}
    if torch.cuda.is_available():
        return {"type": "cuda", "name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
                "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "host": platform.node()}
    return {"type": "cpu", "threads": torch.get_num_threads(), "processor": platform.processor() or platform.machine(),
            "host": platform.node()}


def write_config(cell_dir: str | Path, stage: str, cfg: BaseModel) -> None:
    atomic_write_yaml(Path(cell_dir) / "config.yaml", {"stage": stage, "config_hash": config_hash(stage, cfg), **cfg.model_dump(mode="json")})


def start(cell_dir: str | Path, stage: str, cfg: BaseModel, inputs: dict[str, str | Path] | None = None) -> Path:
    """Open a cell: its config and provenance (code, packages, device, seed, input data hashes)."""
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
        "device": device_info(),
        "seed": getattr(cfg, "seed", None),
        "inputs": {k: {"path": str(v), "sha256": file_sha256(v)} for k, v in (inputs or {}).items()},
    }
    atomic_write_json(cell_dir / "provenance.json", prov)
    (cell_dir / "error.json").unlink(missing_ok=True)
    return cell_dir


def finish(cell_dir: str | Path, stage: str, cfg: BaseModel, metrics: dict[str, Any]) -> dict[str, Any]:
    """Mark a cell done: metrics.json, written last and atomically."""
    out = {"stage": stage, "config_hash": config_hash(stage, cfg),
           "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **metrics}
    atomic_write_json(Path(cell_dir) / "metrics.json", out)
    return out


def read_metrics(cell_dir: str | Path) -> dict[str, Any] | None:
    path = Path(cell_dir) / "metrics.json"
    try:
        return read_json(path)
    except (FileNotFoundError, ValueError):
        return None


def is_done(cell_dir: str | Path, stage: str, cfg: BaseModel) -> bool:
    m = read_metrics(cell_dir)
    return bool(m) and m.get("config_hash") == config_hash(stage, cfg)


def record_error(cell_dir: str | Path, error: str, detail: str = "") -> None:
    atomic_write_json(Path(cell_dir) / "error.json", {
        "error": error, "detail": detail[-4000:],
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "notebook": str(Path(cell_dir) / "executed.ipynb"),
    })


def read_error(cell_dir: str | Path) -> dict[str, Any] | None:
    try:
        return read_json(Path(cell_dir) / "error.json")
    except (FileNotFoundError, ValueError):
        return None

"""What a grid needs from the machine, checked before any kernel starts: data files, release files,
models, API keys, engines, GPUs, a writable output folder, and the Jupyter kernel the notebooks run in.

Stages and teacher backends declare their needs as `Requirement`s; `preflight` runs every distinct one
(in parallel: some are downloads) and reports every problem at once, so nothing expensive starts on a
machine that cannot finish.
"""

from __future__ import annotations

import concurrent.futures
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


WORKERS = 8  # requirements checked at once (some are downloads)


class RequirementError(RuntimeError):
    """Something the grid needs is missing; the message says what to install, set or fetch."""


@dataclass(frozen=True)
class Requirement:
    """One thing some cells need. Cells needing the same `key` share one check."""

    key: tuple[str, ...]
    check: Callable[[bool], None]  # check(dry_run): raise with a message naming the fix; no downloads when dry
    on_device: bool = False  # about the machine that computes (GPUs, engines): skipped for a remote cluster


def preflight(needs: list[tuple[str, Requirement]], *, dry_run: bool = False, device_checks: bool = True,
              log: Callable[[str], None] = print) -> list[str]:
    """Run each distinct requirement once; return one line per problem, naming the first cell that needs it."""
    first: dict[tuple[str, ...], tuple[str, Requirement]] = {}
    for cell, req in needs:
        if (device_checks or not req.on_device) and req.key not in first:
            first[req.key] = (cell, req)
    slow = sum(k[0] == "release" for k in first)
    if slow:
        from . import released

        fetch = (f" (missing ones are downloaded from {released.base_url()}, {WORKERS} at a time, each giving up "
                 f"after {released.DOWNLOAD_TIMEOUT_S:.0f} s without an answer)")
        log(f"checking {slow} released file(s){'' if dry_run else fetch}...")

    def run(item: tuple[str, Requirement]) -> str | None:
        cell, req = item
        try:
            req.check(dry_run)
        except Exception as err:  # every problem is reported, not just the first
            return f"{cell}: {err}"
        return None

    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        return [p for p in pool.map(run, first.values()) if p]


def writable(folder: Path) -> str | None:
    """None when `folder` can be created and written to, else why not (and what to do). Creates nothing
    (a check that fails, or a dry run, leaves no folder behind): the folder, or the nearest one above it
    that exists, must take a file."""
    try:
        probe = next((p for p in (folder, *folder.parents) if p.exists()), folder)
        if not probe.is_dir():
            raise NotADirectoryError(20, "a file is in the way", str(probe))
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".cotlib-write-check-"):
            pass
    except OSError as err:
        return (f"output folder {folder} is not writable ({err.strerror or err}): choose another `output_dir` "
                f"in the grid file, or fix the folder's permissions")
    return None


def ensure_kernel(name: str) -> None:
    """Register this interpreter as the named Jupyter kernel if no such kernel exists yet."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        from ipykernel.kernelspec import install

        install(kernel_name=name, display_name=f"Python ({name})", prefix=sys.prefix)

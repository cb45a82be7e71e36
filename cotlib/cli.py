"""The `cotlib` command: run a grid, show its status, collect its results."""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from . import grid as runner
from . import results
from .config import GridError, load_grid


def _cmd_run(args: argparse.Namespace) -> int:
    g = load_grid(args.grid)
    if args.dry_run:
        states = runner.status(g)
        by_stage = Counter((s.cell.stage, s.state == "done") for s in states)
        for stage in ("generate", "sft", "evaluate", "figures"):
            total = by_stage[(stage, True)] + by_stage[(stage, False)]
            if total:
                print(f"{stage:9s} {total:4d} cells, {by_stage[(stage, True)]} done, {by_stage[(stage, False)]} to run")
        print(runner.format_estimate(runner.estimate(g, states)))
        print(f"outputs: {g.output_root}")
        return 0
    if args.executor == "ray":
        from . import ray_executor

        states = ray_executor.run(g, address=args.ray_address)
    else:
        states = runner.run(g)
    failed = [s for s in states if s.state in ("failed", "blocked")]
    print(runner.format_status(states))
    table = results.collect(g.output_root, _evaluate_cells(g))
    if not table.empty:
        results.write(table, g.output_root)
    if failed:
        print("\nnot finished:\n" + "\n".join(f"  {s.cell.name}: {s.state}: {s.detail}" for s in failed), file=sys.stderr)
        return 1
    print(f"\nall {len(states)} cells done; outputs in {g.output_root}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    g = load_grid(args.grid)
    states = runner.status(g)
    print(runner.summary_json(states) if args.json else runner.format_status(states))
    return 0


def _evaluate_cells(g) -> list[str]:
    """The grid's own evaluate cells (cells of an older version of the grid stay out)."""
    return [c.name for c in g.cells if c.stage == "evaluate"]


def _cmd_results(args: argparse.Namespace) -> int:
    g = load_grid(args.grid)
    table = results.collect(g.output_root, _evaluate_cells(g))
    if table.empty:
        print(f"no finished evaluate cells under {g.output_root}", file=sys.stderr)
        return 1
    paths = results.write(table, g.output_root)
    with_cols = [c for c in ("cell", "student", "method", "teacher", "level", "dataset", "n", "accuracy", "ci95_low", "ci95_high") if c in table]
    print(table[with_cols].to_string(index=False))
    print("\nwritten: " + ", ".join(str(p) for p in paths))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cotlib", description="CoT-distillation experiments as papermill notebook grids")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run every unfinished cell of a grid")
    r.add_argument("grid")
    r.add_argument("--dry-run", action="store_true", help="validate, count cells and estimate GPU-hours; run nothing")
    r.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: one cell after another in this process (default); ray: one Ray task per cell")
    r.add_argument("--ray-address", default=None, help="a Ray cluster to use (default: start a local instance)")
    r.set_defaults(func=_cmd_run)
    s = sub.add_parser("status", help="show each cell's state")
    s.add_argument("grid")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_status)
    q = sub.add_parser("results", help="collect finished evaluate cells into results.csv/.parquet")
    q.add_argument("grid")
    q.set_defaults(func=_cmd_results)
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except GridError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

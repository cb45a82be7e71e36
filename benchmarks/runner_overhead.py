"""Per-cell overhead of the grid runner (kernel start, parameter injection, bookkeeping) against the
time of the cell's own work, for the local executor and, if installed, the Ray executor.

    python benchmarks/runner_overhead.py [--cells 6] [--work 2.0]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import yaml
from nbformat.v4 import new_code_cell, new_notebook

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cotlib import grid as runner  # noqa: E402
from cotlib.config import load_grid  # noqa: E402

_WORK = ("from cotlib import cells\nfrom cotlib.config import GenerateConfig\nimport time\n"
         "cfg = GenerateConfig.model_validate(config)\n"
         "cells.start(cell_dir, 'generate', cfg)\n"
         "time.sleep({work})  # the cell's own work\n"
         "cells.finish(cell_dir, 'generate', cfg, {{'kept': 1}})\n")


def _grid(root: Path, n: int, work: float) -> Path:
    nb = new_notebook()
    params = new_code_cell("cell_dir = None\nconfig = {}")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, new_code_cell(_WORK.format(work=work))]
    nb.metadata["kernelspec"] = {"name": "cotlib", "display_name": "Python (cotlib)", "language": "python"}
    nbformat.write(nb, root / "work.ipynb")
    path = root / "bench.yaml"
    path.write_text(yaml.safe_dump({"name": "bench", "output_dir": str(root / "out"),
                                    "notebooks": {"generate": "work.ipynb"},
                                    "generate": {"level": list(range(1, min(n, 6) + 1)), "n_examples": 1}}))
    return path


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--cells", type=int, default=6, help="at most 6")
    p.add_argument("--work", type=float, default=2.0, help="seconds of work inside each cell")
    a = p.parse_args()
    rows = []
    for executor in ["local"] + (["ray"] if importlib.util.find_spec("ray") else []):
        with tempfile.TemporaryDirectory() as tmp:
            g = load_grid(_grid(Path(tmp), a.cells, a.work), Path(__file__).resolve().parents[1])
            start = time.perf_counter()
            if executor == "ray":
                from cotlib import ray_executor

                states = ray_executor.run(g, log=lambda _: None)
            else:
                states = runner.run(g, log=lambda _: None)
            total = time.perf_counter() - start
            assert all(s.state == "done" for s in states)
            start = time.perf_counter()
            runner.run(load_grid(g.path, Path(__file__).resolve().parents[1]), log=lambda _: None)
            skip = time.perf_counter() - start
            rows.append((executor, len(g.cells), total, skip))
    print(f"cells of {a.work:.1f} s own work each")
    for executor, n, total, skip in rows:
        per = total / n
        if executor == "local":  # one cell after another: wall time minus work is the runner's own cost
            print(f"local: {n} cells in {total:6.1f} s = {per:5.2f} s per cell, overhead {per - a.work:5.2f} s per cell "
                  f"({100 * (per - a.work) / per:4.1f}% of the cell); rerun with all done: {skip:4.1f} s")
        else:  # cells run side by side, one per CPU: report wall time, Ray's start included
            print(f"ray  : {n} cells in {total:6.1f} s wall ({per:5.2f} s per cell, cells in parallel, Ray start included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

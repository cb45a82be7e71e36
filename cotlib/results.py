"""One table of every finished evaluate cell, with its lineage: what the figures read."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .files import read_json

COLUMNS = ["cell", "dataset", "student", "method", "teacher", "level", "format", "train_dataset", "n",
           "accuracy", "ci95_low", "ci95_high", "strict_accuracy", "format_followed",
           "mean_output_tokens", "hit_limit", "backend", "weights"]


def collect(root: str | Path, cells: list[str] | None = None) -> pd.DataFrame:
    """Rows for finished evaluate cells under a grid's output folder (all, or the named ones)."""
    root = Path(root)
    names = cells if cells is not None else sorted(f"evaluate/{p.name}" for p in (root / "evaluate").glob("*") if p.is_dir())
    rows = []
    for name in names:
        path = root / name / "metrics.json"
        if not path.exists():
            continue
        m = read_json(path)
        rows.append({"cell": name, **m.get("lineage", {}), **{k: m.get(k) for k in COLUMNS if k in m}})
    return pd.DataFrame(rows, columns=COLUMNS)


def write(table: pd.DataFrame, root: str | Path) -> list[Path]:
    """results.csv and results.parquet beside the grid's cells."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    csv, parquet = root / "results.csv", root / "results.parquet"
    table.to_csv(csv, index=False)
    table.to_parquet(parquet, index=False)
    return [csv, parquet]

"""One table of finished evaluate cells, with their lineage: what the figures and `cotlib results` read."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import cells

COLUMNS = ["cell", "dataset", "student", "method", "teacher", "level", "format", "train_dataset", "n",
           "accuracy", "ci95_low", "ci95_high", "strict_accuracy", "answer_found", "format_followed",
           "mean_output_tokens", "hit_limit", "backend", "weights"]


def collect(cell_dirs: list[str | Path]) -> pd.DataFrame:
    """A row per finished evaluate cell among `cell_dirs` (`<grid>/evaluate/<name>` folders)."""
    rows = []
    for d in map(Path, cell_dirs):
        m = cells.read_metrics(d)
        if not m:
            continue
        rows.append({"cell": f"{d.parent.name}/{d.name}", **m.get("lineage", {}), **{k: m.get(k) for k in COLUMNS if k in m}})
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.astype({"level": "Int64", "n": "Int64", "hit_limit": "Int64"})


def write(table: pd.DataFrame, folder: str | Path) -> list[Path]:
    """results.csv and results.parquet in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    csv, parquet = folder / "results.csv", folder / "results.parquet"
    table.to_csv(csv, index=False)
    table.to_parquet(parquet, index=False)
    return [csv, parquet]

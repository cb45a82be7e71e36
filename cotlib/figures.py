"""Figures from the results table: one function per figure, seaborn, PNG and PDF, stable names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from . import cells, results  # noqa: E402
from .config import FiguresConfig  # noqa: E402

STAGE = "figures"


def _save(fig: plt.Figure, out_dir: Path, stem: str, formats: list[str]) -> list[Path]:
    paths = []
    for ext in formats:
        p = out_dir / f"{stem}.{ext}"
        fig.savefig(p, dpi=160, bbox_inches="tight")
        paths.append(p)
    plt.close(fig)
    return paths


def accuracy_vs_level(table: pd.DataFrame, out_dir: str | Path, formats: list[str] = ("png", "pdf")) -> list[Path]:
    """Accuracy against granularity level, one line per student and dataset, base models dashed.

    The paper's first finding is that this curve is not monotonic for small students.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trained = table[table["method"] != "base"].dropna(subset=["level"]).copy()
    base = table[table["method"] == "base"]
    datasets = sorted(set(table["dataset"]))
    fig, axes = plt.subplots(1, max(1, len(datasets)), figsize=(4.2 * max(1, len(datasets)), 3.4), squeeze=False)
    palette = dict(zip(sorted(set(table["student"])), sns.color_palette("colorblind")))
    for ax, ds in zip(axes[0], datasets):
        sub = trained[trained["dataset"] == ds].sort_values("level")
        for (student, teacher), grp in sub.groupby(["student", "teacher"]):
            color = palette[student]
            ax.errorbar(grp["level"].astype(int), 100 * grp["accuracy"],
                        yerr=[100 * (grp["accuracy"] - grp["ci95_low"]), 100 * (grp["ci95_high"] - grp["accuracy"])],
                        marker="o", capsize=3, color=color, label=f"{student} (teacher {teacher})")
        for _, row in base[base["dataset"] == ds].iterrows():
            ax.axhline(100 * row["accuracy"], ls="--", lw=1, color=palette[row["student"]],
                       label=f"{row['student']} base (no SFT)")
        ax.set(title=ds, xlabel="granularity level", ylabel="accuracy (%)", xticks=range(1, 7), xlim=(0.5, 6.5))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Student accuracy vs. CoT granularity (our runs, 95% CI)", fontsize=10)
    return _save(fig, out_dir, "accuracy_vs_level", list(formats))


def run_figures(cfg: FiguresConfig, cell_dir: str | Path) -> dict[str, Any]:
    cell_dir = Path(cell_dir)
    root = cells.grid_root(cell_dir)
    cells.start(cell_dir, STAGE, cfg)
    table = results.collect(root, cfg.evaluate_cells or None)
    written = results.write(table, root)
    if table.empty:
        raise RuntimeError(f"no finished evaluate cells under {root}: run the evaluate stage first")
    table.to_json(cell_dir / "records.jsonl", orient="records", lines=True)
    files = accuracy_vs_level(table, cell_dir, cfg.formats)
    return {"inputs": sorted(table["cell"]), "n_cells": len(table),
            "files": [str(p.relative_to(root)) for p in files + written]}

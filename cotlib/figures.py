"""Every figure and table, from the results table (our runs) and the paper's reported numbers.

One function per figure; each returns the files it wrote and the exact values it plotted, so a
test (or a reader) can check every drawn number against its source. Seaborn style, PNG and PDF,
stable file names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from . import results  # noqa: E402
from .schemas import FiguresConfig  # noqa: E402
from .stages import Context  # noqa: E402

PAPER_RESULTS = Path(__file__).resolve().parent / "resources" / "paper_results.csv"


@dataclass
class Drawn:
    """What a figure function made: its files, the exact values it plotted, and the open figure."""

    paths: list[Path]
    data: pd.DataFrame
    figure: plt.Figure


def paper_results(path: str | Path = PAPER_RESULTS) -> pd.DataFrame:
    """The paper's reported numbers (accuracy in %), one row per value, each with its source."""
    df = pd.read_csv(path, dtype={"student": str})
    df["level"] = pd.to_numeric(df["level"], errors="coerce")
    return df


def _save(fig: plt.Figure, out_dir: str | Path, stem: str, formats: list[str], data: pd.DataFrame) -> Drawn:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in formats:
        p = out_dir / f"{stem}.{ext}"
        fig.savefig(p, dpi=160, bbox_inches="tight", metadata={"CreationDate": None} if ext == "pdf" else None)
        paths.append(p)
    return Drawn(paths, data, fig)


def _ours(table: pd.DataFrame) -> pd.DataFrame:
    df = table.copy()
    for c in ("accuracy", "ci95_low", "ci95_high"):
        df[c] = 100 * df[c].astype(float)
    return df


def accuracy_vs_level(table: pd.DataFrame, paper: pd.DataFrame, out_dir: Path, formats: list[str]) -> Drawn:
    """Accuracy against granularity level per dataset: our students (solid, 95% CI), the paper's
    values where known (dotted), base students (dashed). The paper's first finding is that this curve
    is not monotonic for small students."""
    ours = _ours(table)
    trained = ours[(ours["method"] != "base") & ours["level"].notna() & (ours["format"].fillna("cot") == "cot")]
    base = ours[ours["method"] == "base"]
    ref = paper[(paper["figure"] == "granularity") & (paper["metric"] == "accuracy")]
    datasets = sorted(set(trained["dataset"]) | set(base["dataset"]) | set(ref["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.4 * len(datasets), 3.6), squeeze=False)
    students = sorted(set(ours["student"].dropna()) | set(ref["student"].dropna()))
    palette = dict(zip(students, sns.color_palette("colorblind", max(3, len(students)))))
    drawn = []
    for ax, ds in zip(axes[0], datasets):
        for (student, teacher), g in trained[trained["dataset"] == ds].groupby(["student", "teacher"]):
            g = g.sort_values("level")
            x, y = g["level"].to_numpy(dtype=float), g["accuracy"].to_numpy(dtype=float)
            ax.errorbar(x, y, yerr=[y - g["ci95_low"].to_numpy(dtype=float), g["ci95_high"].to_numpy(dtype=float) - y],
                        marker="o", capsize=3, color=palette[student], label=f"ours: {student} ({teacher})")
            drawn += [{"dataset": ds, "series": "ours", "student": student, "teacher": teacher, "level": int(r.level),
                       "value": r.accuracy} for r in g.itertuples()]
        for (student, teacher), g in ref[ref["dataset"] == ds].groupby(["student", "teacher"]):
            g = g.sort_values("level")
            ax.plot(g["level"].to_numpy(dtype=float), g["value"].to_numpy(dtype=float), ls=":", marker="x", color=palette[student],
                    label=f"paper: {student} ({teacher})")
            drawn += [{"dataset": ds, "series": "paper", "student": student, "teacher": teacher, "level": int(r.level),
                       "value": r.value} for r in g.itertuples()]
        for r in base[base["dataset"] == ds].itertuples():
            ax.axhline(r.accuracy, ls="--", lw=1, color=palette[r.student], label=f"ours: {r.student} base")
            drawn.append({"dataset": ds, "series": "base", "student": r.student, "teacher": None, "level": None, "value": r.accuracy})
        if ref[ref["dataset"] == ds].empty:
            ax.plot([], [], " ", label="no paper values known: ours only")
        ax.set(title=ds, xlabel="granularity level", ylabel="accuracy (%)", xticks=range(1, 7), xlim=(0.5, 6.5))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="best")
    fig.suptitle("Student accuracy vs. CoT granularity (solid: our cells; dotted: the paper, as quoted by a secondary source)", fontsize=9)
    return _save(fig, out_dir, "accuracy_vs_level", formats, pd.DataFrame(drawn))


def _bars(table: pd.DataFrame, key: str, stem: str, title: str, out_dir: Path, formats: list[str]) -> Drawn:
    ours = _ours(table)
    ours = ours[ours["method"] != "base"].dropna(subset=[key])
    fig, ax = plt.subplots(figsize=(6, 3.4))
    if ours.empty:
        ax.text(0.5, 0.5, f"no finished cells with a {key} yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return _save(fig, out_dir, stem, formats, pd.DataFrame(columns=["group", key, "value"]))
    ours["group"] = ours["dataset"] + " / " + ours["student"]
    agg = ours.groupby(["group", key], as_index=False)["accuracy"].mean()
    sns.barplot(data=agg, x="group", y="accuracy", hue=key, ax=ax, errorbar=None)
    ax.set(xlabel="", ylabel="accuracy (%)", title=f"{title} (ours; the paper's values were not recovered)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, title=key, title_fontsize=7)
    return _save(fig, out_dir, stem, formats, agg.rename(columns={"accuracy": "value"}))


def format_comparison(table: pd.DataFrame, out_dir: Path, formats: list[str]) -> Drawn:
    """CoT formats (plain, BSM, RaR, SYM) side by side: the paper finds format matters little for SLMs."""
    return _bars(table, "format", "format_comparison", "Accuracy by CoT format", out_dir, formats)


def teacher_comparison(table: pd.DataFrame, out_dir: Path, formats: list[str]) -> Drawn:
    """Teachers side by side: the paper finds stronger teachers do not always give better students."""
    return _bars(table, "teacher", "teacher_comparison", "Accuracy by teacher", out_dir, formats)


def padding_ablation(paper: pd.DataFrame, out_dir: Path, formats: list[str]) -> Drawn:
    """The paper's granularity-vs-length control (GSM8K): longer supervision alone does not help."""
    ref = paper[paper["figure"] == "padding_ablation"].copy()
    ref["setup"] = ref.apply(lambda r: f"L{int(r.level)}" + (" + padding" if "padding" in r.format else ""), axis=1)
    wide = ref.pivot_table(index="setup", columns="metric", values="value", sort=False).reset_index()
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    sns.barplot(data=wide, x="setup", y="accuracy", ax=ax, color=sns.color_palette("colorblind")[0])
    for i, r in wide.iterrows():
        ax.text(i, r["accuracy"] + 0.5, f"{r['accuracy']:.2f}\n(len {r['sequence_length']:.0f})", ha="center", fontsize=7)
    ax.set(ylabel="GSM8K accuracy (%)", xlabel="", ylim=(0, wide["accuracy"].max() * 1.25),
           title="Paper: granularity vs. length (secondary source)")
    ax.title.set_fontsize(9)
    return _save(fig, out_dir, "paper_padding_ablation", formats, wide.rename(columns={"accuracy": "value"}))


def comparison_table(table: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Our cells next to the paper's values for the same setting: difference, and whether the paper's
    value lies inside our 95% interval."""
    ours = _ours(table)
    ref = paper[paper["metric"] == "accuracy"].rename(columns={"value": "paper_accuracy"})
    keys = ["dataset", "teacher", "student", "level", "format"]
    ours["format"] = ours["format"].fillna("cot")
    merged = ref.merge(ours, on=keys, how="left")
    merged["difference"] = merged["accuracy"] - merged["paper_accuracy"]
    inside = (merged["ci95_low"] <= merged["paper_accuracy"]) & (merged["paper_accuracy"] <= merged["ci95_high"])
    merged["paper_inside_our_ci"] = inside.astype("boolean").mask(merged["accuracy"].isna())  # NA: not reproduced
    cols = ["figure", *keys, "paper_accuracy", "accuracy", "ci95_low", "ci95_high", "difference", "paper_inside_our_ci",
            "cell", "source", "confidence"]
    return merged[cols]


def run_figures(cfg: FiguresConfig, ctx: Context) -> dict[str, Any]:
    table = results.collect(ctx.inputs.get("evaluate", []))
    if table.empty:
        raise RuntimeError("no finished evaluate cells among this cell's inputs: run the evaluate stage first")
    written = results.write(table, ctx.dir)
    paper = paper_results()
    fmts = list(cfg.formats)
    files: list[Path] = []
    for draw in (lambda: accuracy_vs_level(table, paper, ctx.dir, fmts), lambda: format_comparison(table, ctx.dir, fmts),
                 lambda: teacher_comparison(table, ctx.dir, fmts), lambda: padding_ablation(paper, ctx.dir, fmts)):
        d = draw()
        files += d.paths
        plt.close(d.figure)
    comp = comparison_table(table, paper)
    comp.to_csv(ctx.dir / "paper_vs_ours.csv", index=False)
    files.append(ctx.dir / "paper_vs_ours.csv")
    return {"inputs": sorted(table["cell"]), "n_cells": len(table),
            "files": [p.name for p in files + written]}


def input_files(cfg: FiguresConfig, ctx: Context) -> dict[str, Path]:
    """The metrics of every finished evaluate cell: a re-graded or re-run evaluation makes the figures stale."""
    return {f"evaluate/{d.name}": d / "metrics.json" for d in map(Path, ctx.inputs.get("evaluate", []))
            if (d / "metrics.json").exists()}

"""Every figure and table, from the results table (our runs) and the paper's reported numbers.

One function per figure; each returns the files it wrote and the exact values it plotted, so a
test (or a reader) can check every drawn number against its source. Seaborn style, PNG and PDF,
stable file names.
"""

from __future__ import annotations

import itertools

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


def _groups(ours: pd.DataFrame) -> pd.DataFrame:
    ours = ours.copy()
    ours["format"] = ours["format"].fillna("cot")
    return ours


def _references(ax, rows: pd.DataFrame, palette: dict[str, Any], drawn: list[dict], ds: str) -> None:
    """Per student, horizontal lines for its base (untrained) and answer-only cells: what CoT must beat."""
    for kind, ls in (("base", "--"), ("answer-only", "-.")):
        sel = rows[rows["method"] == "base"] if kind == "base" else rows[rows["teacher"] == "answer-only"]
        for r in sel.itertuples():
            ax.axhline(r.accuracy, ls=ls, lw=1, color=palette[r.student], label=f"ours: {r.student} {kind}")
            drawn.append({"dataset": ds, "series": kind, "student": r.student, "teacher": None, "level": None,
                          "value": r.accuracy})


def _significant_below_best(paired: pd.DataFrame | None, cells: pd.DataFrame) -> set[str]:
    """Cells of a series that are significantly (Holm, within the student) below the series' best cell."""
    if paired is None or paired.empty or cells.empty:
        return set()
    best = cells.loc[cells["accuracy"].idxmax(), "cell"]
    sig = paired[paired["significant"] & ((paired["a"] == best) | (paired["b"] == best))]
    return {r.b if r.a == best else r.a for r in sig.itertuples()} & set(cells["cell"])


def accuracy_vs_level(table: pd.DataFrame, paper: pd.DataFrame, out_dir: Path, formats: list[str],
                      paired: pd.DataFrame | None = None) -> Drawn:
    """Accuracy against granularity level, one panel per dataset, every student on it: our cells (solid,
    95% CI; an open marker where a level is significantly below the student's best level, exact McNemar
    with Holm's correction), each student's base and answer-only cells as reference lines, and the
    paper's values where known (dotted). The paper's first finding is that this curve is not monotonic
    for small students, and that where it peaks depends on the student."""
    ours = _groups(_ours(table))
    trained = ours[(ours["method"] != "base") & ours["level"].notna() & (ours["format"] == "cot")]
    ref = paper[(paper["figure"] == "granularity") & (paper["metric"] == "accuracy")]
    # a panel per dataset we have cells for (the paper's values drawn beside ours); the paper's alone only
    # where there are no cells of ours yet
    datasets = sorted(set(ours["dataset"].dropna()) or set(ref["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.2 * len(datasets), 3.9), squeeze=False)
    students = sorted(set(ours["student"].dropna()) | set(ref["student"].dropna()))
    palette = dict(zip(students, sns.color_palette("colorblind", max(3, len(students)))))
    # one marker per teacher (the one with the most levels: a circle), so a student's single-level cells of
    # other teachers (the teacher axis) do not read as points of its curve
    by_levels = trained.groupby("teacher")["level"].nunique().sort_values(ascending=False, kind="stable")
    marker = dict(zip(by_levels.index, itertools.cycle(["o", "s", "^", "D", "v", "P", "X"])))
    # side by side at a shared level, not on top: the main teacher on the level, the others 0.12 apart either side
    shift = {t: 0.12 * ((i + 1) // 2) * (1 if i % 2 else -1) for i, t in enumerate(by_levels.index)}
    drawn = []
    for ax, ds in zip(axes[0], datasets):
        for (student, teacher), g in trained[trained["dataset"] == ds].groupby(["student", "teacher"]):
            g = g.sort_values("level")
            x, y = g["level"].to_numpy(dtype=float) + shift[teacher], g["accuracy"].to_numpy(dtype=float)
            ax.errorbar(x, y, yerr=[y - g["ci95_low"].to_numpy(dtype=float), g["ci95_high"].to_numpy(dtype=float) - y],
                        marker=marker[teacher], capsize=3, color=palette[student], label=f"ours: {student} ({teacher})")
            below = _significant_below_best(paired, g)
            for r in g.itertuples():
                if r.cell in below:
                    ax.plot([r.level + shift[teacher]], [r.accuracy], marker[teacher], ms=9, mfc="white", mec=palette[student], zorder=5)
            drawn += [{"dataset": ds, "series": "ours", "student": student, "teacher": teacher, "level": int(r.level),
                       "value": r.accuracy, "below_best": r.cell in below} for r in g.itertuples()]
        for (student, teacher), g in ref[ref["dataset"] == ds].groupby(["student", "teacher"]):
            g = g.sort_values("level")
            ax.plot(g["level"].to_numpy(dtype=float), g["value"].to_numpy(dtype=float), ls=":", marker="x", color=palette[student],
                    label=f"paper: {student} ({teacher})")
            drawn += [{"dataset": ds, "series": "paper", "student": student, "teacher": teacher, "level": int(r.level),
                       "value": r.value} for r in g.itertuples()]
        _references(ax, ours[ours["dataset"] == ds], palette, drawn, ds)
        if ref[ref["dataset"] == ds].empty:
            ax.plot([], [], " ", label="no paper values known: ours only")
        if paired is not None and not paired.empty:
            ax.plot([], [], "o", mfc="white", mec="grey", label="significantly below the student's best level")
        ax.set(title=ds, xlabel="granularity level", ylabel="accuracy (%)", xticks=range(1, 7), xlim=(0.5, 6.5))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.16))  # below: never over the next panel
    fig.suptitle("Student accuracy vs. CoT granularity (error bars: 95% CI; dashed: base; dash-dot: answer-only)", fontsize=9)
    return _save(fig, out_dir, "accuracy_vs_level", formats, pd.DataFrame(drawn))


def comparable(table: pd.DataFrame, key: str) -> pd.DataFrame:
    """The cells a comparison by `key` (teacher or format) may put side by side: per dataset and student,
    the trained cells at the one level (and, for teachers, the one format) where the most values of `key`
    meet — plus, for teachers, the human set, which has no level. Cells that differ in anything else are
    never averaged into one bar."""
    ours = _groups(table)
    trained = ours[(ours["method"] != "base") & (ours["teacher"] != "answer-only")]
    keep = []
    for (_, _), g in trained.groupby(["dataset", "student"]):
        levelled = g[g["level"].notna()]
        if key == "teacher":
            levelled = levelled[levelled["format"] == "cot"]
        if levelled.empty:
            continue
        level = levelled.groupby("level")[key].nunique().idxmax()
        at = levelled[levelled["level"] == level]
        if key == "format":
            at = at[at["teacher"] == at.groupby("teacher")["format"].nunique().idxmax()]
        extra = g[(g["teacher"] == "human")] if key == "teacher" else g.iloc[0:0]
        if at[key].nunique() + (len(extra) > 0) > 1:
            keep.append(pd.concat([at, extra]))
    return pd.concat(keep) if keep else ours.iloc[0:0]


def _bars(table: pd.DataFrame, key: str, stem: str, title: str, out_dir: Path, formats: list[str],
          paired: pd.DataFrame | None = None) -> Drawn:
    """Grouped bars, one per cell (x: student, hue: `key`), with 95% CIs; each student's base and
    answer-only cells as reference ticks; a hatched bar where the cell is significantly below the student's
    best in this comparison (exact McNemar, Holm within the student's `key` family of `paired_table`)."""
    from matplotlib.patches import Patch

    ours = _ours(table)
    family = paired[paired["group"].str.endswith(f" / {key}s")] if paired is not None and not paired.empty else None
    family = None if family is None or family.empty else family  # no test of this comparison: no marker promised
    cells = comparable(ours, key)
    fig, axes = plt.subplots(1, max(1, cells["dataset"].nunique()), figsize=(6.4 * max(1, cells["dataset"].nunique()), 3.8),
                             squeeze=False)
    if cells.empty:
        ax = axes[0][0]
        ax.text(0.5, 0.5, f"no finished cells that differ only in their {key} yet", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return _save(fig, out_dir, stem, formats, pd.DataFrame(columns=["dataset", "student", key, "level", "value",
                                                                        "ci95_low", "ci95_high", "cell", "below_best"]))
    cells = cells.assign(**{key: cells[key].fillna("human")})
    hues = list(dict.fromkeys(cells.sort_values("level", na_position="last")[key]))
    colours = dict(zip(hues, sns.color_palette("colorblind", max(3, len(hues)))))
    drawn = []
    for ax, (ds, d) in zip(axes[0], cells.groupby("dataset")):
        students = sorted(d["student"].unique())
        width = 0.8 / len(hues)
        below = set().union(*(_significant_below_best(family, d[d["student"] == st]) for st in students))
        for i, hue in enumerate(hues):
            for j, st in enumerate(students):
                r = d[(d["student"] == st) & (d[key] == hue)]
                if r.empty:
                    continue
                r = r.iloc[0]
                x = j - 0.4 + width * (i + 0.5)
                ax.bar(x, r["accuracy"], width, color=colours[hue], label=hue if hue not in ax.get_legend_handles_labels()[1] else None,
                       yerr=[[r["accuracy"] - r["ci95_low"]], [r["ci95_high"] - r["accuracy"]]], capsize=2,
                       hatch="///" if r["cell"] in below else None, edgecolor="white" if r["cell"] in below else None)
                drawn.append({"dataset": ds, "student": st, key: hue, "level": r["level"], "value": r["accuracy"],
                              "ci95_low": r["ci95_low"], "ci95_high": r["ci95_high"], "cell": r["cell"],
                              "below_best": r["cell"] in below})
        refs = ours[(ours["dataset"] == ds) & ((ours["method"] == "base") | (ours["teacher"] == "answer-only"))]
        for j, st in enumerate(students):
            for r in refs[refs["student"] == st].itertuples():
                kind = "base" if r.method == "base" else "answer-only"
                label = f"{kind} (per student)"
                ax.hlines(r.accuracy, j - 0.45, j + 0.45, colors="black", linestyles="--" if kind == "base" else "-.", lw=1,
                          label=label if label not in ax.get_legend_handles_labels()[1] else None)
        levels = sorted({int(v) for v in d["level"].dropna()})
        ax.set(xticks=range(len(students)), xticklabels=students, ylabel="accuracy (%)",
               title=f"{ds}: {title} (level {', '.join(map(str, levels))}; error bars: 95% CI)")
        ax.title.set_fontsize(9)
        handles, labels = ax.get_legend_handles_labels()
        if family is not None and family["group"].str.startswith(f"{ds} / ").any():  # this panel's cells were tested
            handles.append(Patch(facecolor="grey", edgecolor="white", hatch="///"))
            labels.append("significantly below the\nstudent's best here\n(exact McNemar, Holm)")
        ax.legend(handles, labels, fontsize=7, title=key, title_fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, out_dir, stem, formats, pd.DataFrame(drawn))


def format_comparison(table: pd.DataFrame, out_dir: Path, formats: list[str], paired: pd.DataFrame | None = None) -> Drawn:
    """CoT formats (plain, BSM, RaR, SYM) at one level and teacher: the paper finds format matters little for SLMs."""
    return _bars(table, "format", "format_comparison", "accuracy by CoT format", out_dir, formats, paired)


def teacher_comparison(table: pd.DataFrame, out_dir: Path, formats: list[str], paired: pd.DataFrame | None = None) -> Drawn:
    """Teachers at one level, with the human annotations: the paper finds stronger teachers do not always
    give better students."""
    return _bars(table, "teacher", "teacher_comparison", "accuracy by teacher", out_dir, formats, paired)


def supervision(generated: pd.DataFrame, out_dir: Path, formats: list[str]) -> Drawn:
    """What the students were taught, from the replayed rows: each teacher's own accuracy and its mean
    CoT words, per level (unlevelled sets at the right)."""
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.4))
    g = generated.copy()
    unlevelled = list(dict.fromkeys(g.loc[g["level"].isna(), "teacher"]))  # side by side at "none", not on top
    g["x"] = g["level"].astype("float").fillna(g["teacher"].map({t: 7.0 + 0.15 * i for i, t in enumerate(unlevelled)}))
    shapes = {"cot": "o", "bsm": "s", "rar": "^", "sym": "D"}
    teachers = list(dict.fromkeys(g["teacher"]))
    colours = dict(zip(teachers, sns.color_palette("colorblind", max(3, len(teachers)))))
    drawn = []
    for ax, col, label in ((axes[0], "teacher_accuracy", "teacher accuracy (%)"), (axes[1], "mean_cot_words", "words per CoT")):
        for (teacher, fmt), d in g.groupby(["teacher", "format"]):
            d = d.sort_values("x")
            y = d[col].astype(float) * (100 if col == "teacher_accuracy" else 1)
            ax.plot(d["x"], y, marker=shapes.get(fmt, "P"), ls="-" if fmt == "cot" and len(d) > 1 else "none",
                    color=colours[teacher], label=f"{teacher} ({fmt})" if fmt != "cot" else teacher)
            drawn += [{"teacher": teacher, "format": fmt, "level": r.level, "metric": col, "value": v}
                      for r, v in zip(d.itertuples(), y)]
        ax.set(xticks=[1, 2, 3, 4, 5, 6, 7], xticklabels=["1", "2", "3", "4", "5", "6", "none"], xlabel="granularity level",
               ylabel=label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=6.5, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle("The supervision, as released: teacher accuracy on the training questions and CoT length", fontsize=9)
    return _save(fig, out_dir, "supervision", formats, pd.DataFrame(drawn))


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


def paired_table(table: pd.DataFrame, correct: dict[str, dict[str, bool]]) -> pd.DataFrame:
    """Exact McNemar tests, Holm-corrected within each family: per dataset and student, its levels (with
    answer-only), its teachers at the comparable level (with human), its formats."""
    from . import stats

    ours = _groups(table)
    families: dict[str, list[str]] = {}
    for (ds, st), g in ours[ours["method"] != "base"].groupby(["dataset", "student"]):
        levelled = g["level"].notna() & (g["format"] == "cot")
        main = g[levelled].groupby("teacher")["level"].nunique().idxmax() if levelled.any() else None  # most levels
        levels = g[(levelled & (g["teacher"] == main)) | (g["teacher"] == "answer-only")]
        families[f"{ds} / {st} / levels"] = list(levels["cell"])
        for key in ("teacher", "format"):
            cells = comparable(g, key)
            if len(cells) > 1:
                families[f"{ds} / {st} / {key}s"] = list(cells["cell"])
    families = {k: [c for c in v if c in correct] for k, v in families.items()}
    return stats.compare(correct, {k: v for k, v in families.items() if len(v) > 1})


def draw_all(table: pd.DataFrame, out_dir: Path, formats: list[str], correct: dict[str, dict[str, bool]] | None = None,
             generated: pd.DataFrame | None = None) -> list[Path]:
    """Every figure and table from the results table (and, where given, per-question correctness and the
    generate cells' metrics): what the figures cell and `cotlib figures DIR` both draw."""
    out_dir = Path(out_dir)
    paper = paper_results()
    paired = paired_table(table, correct) if correct else None
    files: list[Path] = []
    draws = [lambda: accuracy_vs_level(table, paper, out_dir, formats, paired), lambda: format_comparison(table, out_dir, formats, paired),
             lambda: teacher_comparison(table, out_dir, formats, paired), lambda: padding_ablation(paper, out_dir, formats)]
    if generated is not None and not generated.empty:
        draws.append(lambda: supervision(generated, out_dir, formats))
    for draw in draws:
        d = draw()
        files += d.paths
        plt.close(d.figure)
    comparison_table(table, paper).to_csv(out_dir / "paper_vs_ours.csv", index=False)
    files.append(out_dir / "paper_vs_ours.csv")
    if paired is not None:
        paired.to_csv(out_dir / "paired.csv", index=False)
        files.append(out_dir / "paired.csv")
    return files


def run_figures(cfg: FiguresConfig, ctx: Context) -> dict[str, Any]:
    evaluate_dirs = ctx.inputs.get("evaluate", [])
    table = results.collect(evaluate_dirs)
    if table.empty:
        raise RuntimeError("no finished evaluate cells among this cell's inputs: run the evaluate stage first")
    written = results.write(table, ctx.dir)
    generated = results.supervision(ctx.inputs.get("generate", []))
    files = draw_all(table, ctx.dir, list(cfg.formats), results.correctness(evaluate_dirs), generated)
    if not generated.empty:
        generated.to_csv(ctx.dir / "supervision.csv", index=False)
    used = sorted([*table["cell"], *(generated["cell"] if not generated.empty else [])])
    return {"inputs": used, "n_cells": len(table), "files": [p.name for p in files + written]}


def input_files(cfg: FiguresConfig, ctx: Context) -> dict[str, Path]:
    """The metrics of every finished evaluate cell: a re-graded or re-run evaluation makes the figures stale."""
    return {f"evaluate/{d.name}": d / "metrics.json" for d in map(Path, ctx.inputs.get("evaluate", []))
            if (d / "metrics.json").exists()}

"""Every figure renders from the paper's numbers and from a small results table, and what is drawn
equals the data it came from."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from cotlib import figures


def _table() -> pd.DataFrame:
    rows = []
    for level, acc in [(1, 0.40), (3, 0.55), (5, 0.50)]:
        rows.append({"cell": f"evaluate/a{level}", "dataset": "gsm8k", "student": "gemma-2b", "method": "lora", "teacher": "gpt-4o",
                     "level": level, "format": "cot", "n": 100, "accuracy": acc, "ci95_low": acc - 0.1, "ci95_high": acc + 0.1})
    for fmt, acc in [("rar", 0.52), ("sym", 0.48)]:
        rows.append({"cell": f"evaluate/f{fmt}", "dataset": "gsm8k", "student": "gemma-2b", "method": "lora", "teacher": "gpt-4o",
                     "level": 5, "format": fmt, "n": 100, "accuracy": acc, "ci95_low": acc - 0.1, "ci95_high": acc + 0.1})
    rows.append({"cell": "evaluate/g", "dataset": "gsm8k", "student": "gemma-2b", "method": "lora", "teacher": "gemini-1.5-flash",
                 "level": 5, "format": "cot", "n": 100, "accuracy": 0.45, "ci95_low": 0.35, "ci95_high": 0.55})
    rows.append({"cell": "evaluate/b", "dataset": "gsm8k", "student": "gemma-2b", "method": "base", "teacher": None,
                 "level": None, "format": None, "n": 100, "accuracy": 0.10, "ci95_low": 0.05, "ci95_high": 0.18})
    return pd.DataFrame(rows)


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_paper_numbers_are_data_with_sources():
    paper = figures.paper_results()
    assert {"figure", "dataset", "teacher", "student", "level", "format", "metric", "value", "source", "confidence"} <= set(paper)
    assert paper["source"].str.len().min() > 10 and set(paper["confidence"]) <= {"high", "medium", "low"}
    row = paper[(paper.student == "llama-3.2-3b") & (paper.level == 4)]
    assert row["value"].tolist() == [63.48]


def test_accuracy_vs_level_draws_ours_and_the_papers_values(tmp_path):
    table, paper = _table(), figures.paper_results()
    d = figures.accuracy_vs_level(table, paper, tmp_path, ["png", "pdf"])
    assert [p.name for p in d.paths] == ["accuracy_vs_level.png", "accuracy_vs_level.pdf"]
    assert all(p.stat().st_size > 5000 for p in d.paths)
    ax = d.figure.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    lines |= {c.get_label(): c.lines[0] for c in ax.containers}  # errorbar series: their data line
    ours = lines["ours: gemma-2b (gpt-4o)"]
    np.testing.assert_allclose(ours.get_xdata(), [1, 3, 5])
    np.testing.assert_allclose(ours.get_ydata(), [40, 55, 50])  # our cot cells only, in %
    ref = paper[(paper.figure == "granularity") & (paper.student == "gemma-2b")].sort_values("level")
    np.testing.assert_allclose(lines["paper: gemma-2b (gpt-4o)"].get_ydata(), ref["value"])
    np.testing.assert_allclose(lines["paper: llama-3.2-3b (gpt-4o)"].get_xdata(), [1, 3, 4, 5])
    np.testing.assert_allclose(np.asarray(lines["ours: gemma-2b base"].get_ydata(), dtype=float), [10, 10])
    ours_rows = d.data[(d.data.series == "ours") & (d.data.teacher == "gpt-4o")]
    assert ours_rows["value"].tolist() == pytest.approx([40.0, 55.0, 50.0])
    assert d.data[(d.data.series == "ours") & (d.data.teacher == "gemini-1.5-flash")]["value"].tolist() == pytest.approx([45.0])


def test_our_own_dataset_says_no_paper_values(tmp_path):
    table = _table().assign(dataset="demo-arith")
    d = figures.accuracy_vs_level(table, figures.paper_results(), tmp_path, ["png"])
    labels = [t.get_text() for ax in d.figure.axes for t in ax.get_legend().get_texts()]
    assert "no paper values known: ours only" in labels
    assert [ax.get_title() for ax in d.figure.axes] == ["demo-arith"]  # no panel of the paper's datasets alone


def test_each_panels_legend_stays_off_the_other_panels(tmp_path):
    table = pd.concat([_table(), _table().assign(dataset="svamp")])
    d = figures.accuracy_vs_level(table, figures.paper_results(), tmp_path, ["png"])
    fig = d.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["gsm8k", "svamp"]
    for ax in axes:
        legend = ax.get_legend().get_window_extent(renderer)
        for other in axes:
            if other is not ax:
                assert not legend.overlaps(other.get_tightbbox(renderer)), f"{ax.get_title()}'s legend covers {other.get_title()}"


@pytest.mark.parametrize("fn,key,expected", [
    # the cells that differ only in their format: gpt-4o at level 5 (cot 50%, rar 52%, sym 48%)
    (figures.format_comparison, "format", {"cot": 50, "rar": 52, "sym": 48}),
    # the cells that differ only in their teacher: cot at level 5 (gpt-4o 50%, gemini 45%)
    (figures.teacher_comparison, "teacher", {"gpt-4o": 50, "gemini-1.5-flash": 45}),
])
def test_bar_figures_draw_one_bar_per_comparable_cell_with_its_interval(tmp_path, fn, key, expected):
    d = fn(_table(), tmp_path, ["png"])
    assert d.paths[0].exists()
    got = dict(zip(d.data[key], d.data["value"]))
    assert got == pytest.approx(expected)  # never a mean over cells that differ in more than `key`
    assert (d.data["ci95_high"] - d.data["value"]).tolist() == pytest.approx([10.0] * len(expected))
    heights = sorted(round(p.get_height(), 6) for p in d.figure.axes[0].patches if p.get_height() > 0)
    assert heights == sorted(round(v, 6) for v in expected.values())
    refs = [c for c in d.figure.axes[0].collections if c.get_label().startswith("base")]
    assert refs  # the student's base cell is drawn as a reference


def test_bar_figures_hatch_a_cell_significantly_below_the_students_best(tmp_path):
    first = _table()
    first.loc[first.cell == "evaluate/fsym", ["accuracy", "ci95_low", "ci95_high"]] = [0.30, 0.21, 0.40]
    # a second student whose formats are all alike: nothing of it is hatched, whatever the first one's best is
    second = _table().assign(student="smollm2", cell=lambda t: t["cell"] + "-s")
    second.loc[second.cell == "evaluate/frar-s", ["accuracy", "ci95_low", "ci95_high"]] = [0.49, 0.39, 0.59]
    table = pd.concat([first, second], ignore_index=True)
    qs = [f"q{i}" for i in range(100)]
    correct = {c: {q: i < round(100 * a) for i, q in enumerate(qs)} for c, a in zip(table["cell"], table["accuracy"])}
    paired = figures.paired_table(table, correct)
    d = figures.format_comparison(table, tmp_path, ["png"], paired)
    # gemma-2b: rar 52% is the best; sym 30% has 22 questions right only under rar and none the other way; cot 50%
    # has 2. smollm2: cot 50%, rar 49%, sym 48%
    hatched = {(r.student, r.format) for r in d.data.itertuples() if r.below_best}
    assert hatched == {("gemma-2b", "sym")}, d.data
    ax = d.figure.axes[0]
    assert [round(p.get_height(), 6) for p in ax.patches if p.get_hatch()] == [30.0]  # drawn in percent
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("significantly below") for t in labels)
    assert labels.count("base (per student)") == 1  # one entry per kind of reference line, not one per student
    plain = figures.format_comparison(table, tmp_path, ["png"])  # no paired tests given: nothing hatched, no promise
    assert not any(p.get_hatch() for p in plain.figure.axes[0].patches)
    assert not any(t.get_text().startswith("significantly") for t in plain.figure.axes[0].get_legend().get_texts())


def test_exact_mcnemar_and_holm_give_the_textbook_results():
    from cotlib import stats

    # Fagerland, Lydersen & Laake (2013), BMC Med Res Methodol 13:91: 1 and 7 discordant pairs -> exact p = 0.070
    assert stats.mcnemar_exact(1, 7) == pytest.approx(0.0703125)
    assert stats.mcnemar_exact(7, 1) == stats.mcnemar_exact(1, 7) and stats.mcnemar_exact(5, 5) == 1.0
    assert stats.mcnemar_exact(0, 0) == 1.0
    # Holm (1979): sorted p x (m - rank), made monotone
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_paired_tests_compare_a_students_levels_on_the_same_questions():
    table = _table()
    qs = [f"q{i}" for i in range(100)]
    correct = {c: {q: i < round(100 * a) for i, q in enumerate(qs)} for c, a in zip(table["cell"], table["accuracy"])}
    paired = figures.paired_table(table, correct)
    levels = paired[paired["group"] == "gsm8k / gemma-2b / levels"]
    assert len(levels) == 3  # levels 1, 3, 5 of gpt-4o: three pairs
    row = levels[(levels["a"] == "evaluate/a1") & (levels["b"] == "evaluate/a3")].iloc[0]
    assert (row.n, row.a_only_right, row.b_only_right) == (100, 0, 15)  # 40% vs 55%, nested right answers
    assert row.p == pytest.approx(2 * 0.5**15) and row.significant


def test_padding_ablation_is_the_papers_three_rows(tmp_path):
    d = figures.padding_ablation(figures.paper_results(), tmp_path, ["png"])
    assert d.data["setup"].tolist() == ["L1", "L1 + padding", "L5"]
    assert d.data["value"].tolist() == [47.61, 46.62, 52.92]
    assert sorted(p.get_height() for p in d.figure.axes[0].patches) == sorted([47.61, 46.62, 52.92])


def test_comparison_table_lines_up_ours_with_the_paper():
    table = _table()
    table.loc[table.level == 5, "student"] = "gemma-2b"
    comp = figures.comparison_table(table, figures.paper_results())
    row = comp[(comp.student == "gemma-2b") & (comp.level == 5) & (comp.format == "cot") & (comp.teacher == "gpt-4o")].iloc[0]
    assert row.paper_accuracy == 53.42 and row.accuracy == 50.0
    assert row.difference == pytest.approx(-3.42) and bool(row.paper_inside_our_ci)
    missing = comp[comp.student == "bloom-3b"]
    assert missing["accuracy"].isna().all() and len(missing) == 3  # the paper's values we did not reproduce show as gaps


def test_the_markdown_results_table_carries_each_rows_own_numbers():
    """results.md, which the README quotes: one line per evaluate cell, its accuracy and interval as percentages,
    blanks (not 'nan') where an untrained student has no training figures."""
    from cotlib import results

    table = pd.DataFrame([
        {"student": "s", "supervision": "base", "n": 300, "accuracy": 0.0333, "ci95_low": 0.0182, "ci95_high": 0.0603,
         "answer_found": 0.997, "mean_output_tokens": 189.1, "hit_limit": 52, "train_loss": np.nan,
         "train_tokens": pd.NA, "train_seconds": np.nan},
        {"student": "s", "supervision": "gpt-4o L2", "n": 300, "accuracy": 0.13, "ci95_low": 0.097, "ci95_high": 0.173,
         "answer_found": 1.0, "mean_output_tokens": 44.3, "hit_limit": 2, "train_loss": 0.8312,
         "train_tokens": 75892, "train_seconds": 608.4},
    ])
    lines = results.markdown(table).splitlines()
    assert len(lines) == 4 and "nan" not in "".join(lines).lower()
    assert lines[2] == "| s | base (untrained) | 300 | 3.3% (1.8-6.0%) | 99.7% | 189 | 52 |  |  |  |"
    assert lines[3] == "| s | gpt-4o L2 | 300 | 13.0% (9.7-17.3%) | 100.0% | 44 | 2 | 0.831 | 75,892 | 608 |"


def test_supervision_figure_draws_each_sets_teacher_accuracy_and_length_distinguishably(tmp_path):
    rows = [("gpt-4o", 1, "cot", 0.98, 35.0), ("gpt-4o", 3, "cot", 0.97, 50.0), ("gpt-4o", 3, "bsm", 0.96, 83.0),
            ("gpt-4o", 3, "rar", 0.95, 91.0), ("human", None, "cot", 1.0, 10.0), ("answer-only", None, "cot", 1.0, 1.0)]
    generated = pd.DataFrame(rows, columns=["teacher", "level", "format", "teacher_accuracy", "mean_cot_words"])
    d = figures.supervision(generated, tmp_path, ["png"])
    assert d.paths[0].exists()
    acc = d.data[d.data.metric == "teacher_accuracy"]
    assert acc["value"].tolist() == pytest.approx([v * 100 for v in acc.merge(generated)["teacher_accuracy"]])
    words = d.data[d.data.metric == "mean_cot_words"]
    assert sorted(words["value"]) == sorted(generated["mean_cot_words"])
    left = d.figure.axes[0]
    shapes = {ln.get_label(): ln.get_marker() for ln in left.get_lines()}
    assert len({shapes["gpt-4o"], shapes["gpt-4o (bsm)"], shapes["gpt-4o (rar)"]}) == 3  # formats tell apart
    at_none = [ln.get_xdata()[0] for ln in left.get_lines() if ln.get_label() in ("human", "answer-only")]
    assert len(set(at_none)) == 2  # the two unlevelled sets side by side, not one over the other

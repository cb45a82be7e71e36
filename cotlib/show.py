"""What a person opening a cell notebook wants to see first: the headline of the cell (what was trained
on what, the score with its interval), then tidy details — not a raw dump of its metrics."""

from __future__ import annotations

import html
from typing import Any

import pandas as pd


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _trained_on(lineage: dict[str, Any]) -> str:
    if not lineage or lineage.get("method") in (None, "base"):
        return "the base model (not fine-tuned)"
    level = f"level {lineage['level']}" if lineage.get("level") else "no level"
    return (f"{lineage.get('method')} on {lineage.get('teacher')}'s {lineage.get('format')} CoTs, {level}, "
            f"{lineage.get('train_dataset')}")


def headline(stage: str, metrics: dict[str, Any]) -> str:
    """One sentence: the cell's main number and what it is about."""
    lin = metrics.get("lineage", {})
    if stage == "evaluate":
        return (f"{lin.get('student', '?')} — {_trained_on(lin)} — scores {_pct(metrics['accuracy'])} "
                f"(95% CI {_pct(metrics['ci95_low'])}–{_pct(metrics['ci95_high'])}) on {metrics['n']} "
                f"{lin.get('dataset', '')} questions")
    if stage == "sft":
        return (f"{lin.get('student', '?')} trained ({metrics['method']}) on {metrics['n_train']} examples of "
                f"{lin.get('teacher', '?')} level {lin.get('level') or '—'} {lin.get('format') or ''}: "
                f"{metrics['steps']} steps, loss {metrics['train_loss']:.3f}, "
                f"{metrics['tokens_per_second']:.0f} tokens/s ({metrics['precision']})")
    if stage == "generate":
        return (f"{metrics['kept']} of {metrics['n_examples']} CoTs kept ({metrics['filtered']} filtered, "
                f"{metrics['failed']} failed); teacher accuracy {_pct(metrics['teacher_accuracy'])}, "
                f"{metrics['mean_cot_words']:.0f} words per CoT")
    return f"{metrics.get('n_cells', 0)} evaluate cells drawn"


def _flat(metrics: dict[str, Any], skip: tuple[str, ...]) -> pd.DataFrame:
    rows = []
    for k, v in metrics.items():
        if k in skip:
            continue
        if isinstance(v, dict):
            rows += [(f"{k}.{kk}", vv) for kk, vv in v.items()]
        else:
            rows.append((k, v))
    return pd.DataFrame(rows, columns=["metric", "value"]).set_index("metric")


def summary(stage: str, metrics: dict[str, Any]) -> None:
    """Display the headline, then every metric as a tidy two-column table (nested values spelled out)."""
    from IPython.display import HTML, display

    display(HTML(f"<h3>{html.escape(headline(stage, metrics))}</h3>"))
    display(_flat(metrics, ("stage", "config_hash", "files", "inputs")).style.format(precision=4))


def examples(records: pd.DataFrame, columns: list[str], n: int = 4) -> None:
    """Records as a table whose long texts keep their line breaks."""
    from IPython.display import HTML, display

    def cell(v: Any) -> str:
        return html.escape("" if v is None else str(v)).replace("\n", "<br>")

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td style='text-align:left;vertical-align:top'>{cell(r[c])}</td>" for c in columns)
                   + "</tr>" for _, r in records.head(n).iterrows())
    display(HTML(f"<table><tr>{head}</tr>{body}</table>"))

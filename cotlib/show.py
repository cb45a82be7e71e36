"""What a person opening a cell notebook wants to see first: the headline of the cell (the score with its
interval and n, what was trained on what), then tidy details; examples with their line breaks; tables
without float levels and NaN; progress bars that suit where the notebook runs (a widget in JupyterLab,
plain lines under papermill); and libraries' chatter on stderr kept in the cell's kernel.log instead of
pink boxes (`quiet`).

Every display carries two forms: HTML for JupyterLab, and plain text for papermill's log, a terminal or
`jupyter nbconvert --to markdown`. Nothing here may fail a cell: a display that cannot be drawn falls
back to a plain listing.
"""

from __future__ import annotations

import contextlib
import functools
import html
import io
import os
import sys
from pathlib import Path
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pandas as pd

# shares in [0, 1], shown as percentages
SHARES = {"accuracy", "strict_accuracy", "answer_found", "format_followed", "teacher_accuracy", "ci95_low",
          "ci95_high", "pad_share", "same_output", "same_answer"}


class Shown:
    """A display with an HTML form (Lab) and a text form (logs, terminals)."""

    def __init__(self, html_: str, text: str):
        self.html, self.text = html_, text

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return self.text


def _display(obj: Any) -> None:
    try:
        from IPython.display import display
    except ImportError:  # plain Python
        print(obj)
        return
    display(obj)


# ---------------------------------------------------------------- values


def _missing(v: Any) -> bool:
    if v is None:
        return True
    try:
        return bool(pd.isna(v)) if not isinstance(v, (list, tuple, dict, set)) else False
    except (TypeError, ValueError):
        return False


def _pct(x: Any) -> str:
    return "—" if _missing(x) else f"{100 * float(x):.1f}%"


def value(key: str, v: Any) -> str:
    """One value as a person reads it: shares as percentages, whole floats as integers, None/NaN as '—',
    mappings as `k: v` pairs on one line."""
    if _missing(v):
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, Mapping):
        return ", ".join(f"{k}: {value(str(k), x)}" for k, x in v.items()) or "—"
    if isinstance(v, (list, tuple)):
        return ", ".join(value(key, x) for x in v) or "—"
    if isinstance(v, float):
        if key.split(".")[-1] in SHARES and 0 <= v <= 1:
            return _pct(v)
        if v.is_integer() and abs(v) < 1e15:
            return str(int(v))
        if key.endswith("seconds"):
            return f"{v:.1f} s"
        if abs(v) < 10:
            return f"{v:.3g}"
        return f"{v:.1f}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


# ---------------------------------------------------------------- the headline


def _level(lin: Mapping[str, Any]) -> str:
    return f"level-{value('level', lin['level'])}" if not _missing(lin.get("level")) else "unlevelled"


def trained_on(lin: Mapping[str, Any]) -> str:
    """What a student was trained on, in words."""
    if not lin or lin.get("method") in (None, "base"):
        return "the base model, not fine-tuned"
    method = {"lora": "LoRA", "qlora": "QLoRA", "full": "full fine-tuning"}.get(str(lin.get("method")), str(lin.get("method")))
    return (f"{method} on {lin.get('teacher', '?')}'s {_level(lin)} {lin.get('format') or ''} CoTs "
            f"for {lin.get('train_dataset') or '?'}").replace("  ", " ")


def headline(stage: str, metrics: Mapping[str, Any]) -> tuple[str, str]:
    """The cell's main number, and what it is about: (headline, subline)."""
    m, lin = metrics, metrics.get("lineage") or {}
    if stage == "evaluate":
        lo, hi = _pct(m.get("ci95_low")).rstrip("%"), _pct(m.get("ci95_high"))
        return (f"{_pct(m.get('accuracy'))} correct (95% CI {lo}–{hi}), n = {m.get('n', '?')} "
                f"{lin.get('dataset') or ''} questions".replace("  ", " "),
                f"student {lin.get('student', '?')}: {trained_on(lin)}")
    if stage == "sft":
        return (f"{lin.get('student', '?')} trained: {m.get('steps', '?')} steps on {m.get('n_train', '?')} examples, "
                f"final loss {value('loss', m.get('final_loss'))}",
                f"{trained_on(lin)}; {value('tps', m.get('tokens_per_second'))} tokens/s, {m.get('precision', '?')}")
    if stage == "generate":
        return (f"{m.get('kept', '?')} of {m.get('n_examples', '?')} CoTs kept ({m.get('filtered', 0)} filtered, "
                f"{m.get('failed', 0)} failed); the teacher was right on {_pct(m.get('teacher_accuracy'))}",
                f"{lin.get('teacher', '?')} ({m.get('backend', '?')}), {_level(lin)} {lin.get('format') or ''} CoTs for "
                f"{lin.get('train_dataset', '?')}: {value('w', m.get('mean_cot_words'))} words and "
                f"{value('s', m.get('mean_steps'))} steps per CoT")
    if stage == "figures":
        return (f"figures from {m.get('n_cells', 0)} finished evaluate cells",
                ", ".join(f for f in m.get("files", []) if f.endswith(".png")) or "no figures")
    return (f"{stage} cell", "")


# ---------------------------------------------------------------- the details

# (section, keys) per stage; keys not named land in "other"
_SECTIONS: dict[str, list[tuple[str, list[str]]]] = {
    "evaluate": [
        ("score", ["accuracy", "ci95_low", "ci95_high", "n", "strict_accuracy", "answer_found", "format_followed"]),
        ("outputs", ["mean_output_tokens", "median_output_tokens", "p90_output_tokens", "max_output_tokens", "hit_limit"]),
        ("run", ["backend", "weights", "precision", "generation_seconds", "decoding", "parity"]),
    ],
    "sft": [
        ("training", ["method", "n_train", "steps", "train_loss", "final_loss", "train_tokens", "too_long", "saved"]),
        ("run", ["precision", "quantization", "tokens_per_second", "train_seconds", "peak_memory_mb", "num_gpus",
                 "gradient_checkpointing", "gradient_checkpointing_reason", "group_by_length", "pad_share",
                 "stop_token", "stop_strategy", "resumed", "resumed_from_step"]),
    ],
    "generate": [
        ("chains of thought", ["n_examples", "kept", "filtered", "failed", "retryable_failed", "failure_reasons",
                               "teacher_accuracy", "format_followed", "mean_cot_words", "mean_cot_tokens",
                               "mean_steps", "hit_limit"]),
        ("run", ["backend", "engine", "requests"]),
    ],
    "figures": [("figures", ["n_cells", "inputs", "files"])],
}
_CELL = ["config_hash", "finished"]


def details(stage: str, metrics: Mapping[str, Any], cell_dir: str | None = None) -> list[tuple[str, str, str]]:
    """Every metric as (section, name, value), grouped; what the stage does not name comes under 'other'."""
    rows: list[tuple[str, str, str]] = []
    seen = {"stage", "lineage"}
    for section, keys in _SECTIONS.get(stage, []):
        for k in keys:
            if k in metrics:
                seen.add(k)
                if k == "ci95_high" and "ci95_low" in metrics:
                    continue
                if k == "ci95_low":
                    rows.append((section, "95% CI", f"{_pct(metrics['ci95_low'])} – {_pct(metrics.get('ci95_high'))}"))
                elif k in ("inputs", "files") and isinstance(metrics[k], list):
                    rows.append((section, k, "\n".join(map(str, metrics[k])) or "—"))
                else:
                    rows.append((section, k, value(k, metrics[k])))
    rows += [("other", k, value(k, v)) for k, v in metrics.items() if k not in seen and k not in _CELL]
    rows += [("what was run", k, value(k, v)) for k, v in (metrics.get("lineage") or {}).items() if not _missing(v)]
    rows += [("cell", k, value(k, metrics[k])) for k in _CELL if k in metrics]
    if cell_dir:
        rows.append(("cell", "folder", str(cell_dir)))
    return rows


def _esc(s: Any) -> str:
    return html.escape("" if s is None else str(s))


def summary_html(stage: str, metrics: Mapping[str, Any], cell_dir: str | None = None) -> Shown:
    """The headline in large type, then the details: one small table per section, side by side."""
    head, sub = headline(stage, metrics)
    rows = details(stage, metrics, cell_dir)
    sections: dict[str, list[tuple[str, str]]] = {}
    for section, k, v in rows:
        sections.setdefault(section, []).append((k, v))
    boxes = "".join(
        f"<table style='margin:0 1.5em 0.8em 0;float:left'><thead><tr><th colspan='2' style='text-align:left'>"
        f"{_esc(section)}</th></tr></thead><tbody>"
        + "".join(f"<tr><td style='text-align:left'>{_esc(k)}</td>"
                  f"<td style='text-align:left;white-space:pre-wrap'>{_esc(v)}</td></tr>" for k, v in items)
        + "</tbody></table>" for section, items in sections.items())
    out = (f"<div><h2 style='margin-bottom:0.2em'>{_esc(head)}</h2><p style='margin-top:0'>{_esc(sub)}</p>"
           f"<details open><summary>details</summary><div>{boxes}</div><div style='clear:both'></div></details></div>")
    width = max((len(k) for _, k, _ in rows), default=0)
    lines = [head, sub, ""]
    for section, items in sections.items():
        lines.append(f"{section}:")
        lines += [f"  {k:<{width}}  {str(v).replace(chr(10), chr(10) + ' ' * (width + 4))}" for k, v in items]
    return Shown(out, "\n".join(lines))


def summary(stage: str, metrics: Mapping[str, Any], cell_dir: str | None = None) -> None:
    """Display the headline (the main number and what it is about), then every metric, grouped."""
    try:
        shown = summary_html(stage, metrics, cell_dir)
    except Exception as err:  # noqa: BLE001 - a display must not fail the cell
        shown = Shown(f"<pre>{_esc(dict(metrics))}</pre>", f"{dict(metrics)}\n(summary not drawn: {err!r})")
    _display(shown)


# ---------------------------------------------------------------- examples and tables


def examples(records: pd.DataFrame, columns: list[str], n: int = 4, title: str | None = None) -> None:
    """The first `n` records as a table whose long texts keep their line breaks; `title` with a count."""
    cols = [c for c in columns if c in records.columns]
    shown = records.head(n)
    head = f"{title}: {len(shown)} of {len(records)}" if title else None
    if records.empty:
        _display(Shown(f"<p><b>{_esc(title or 'examples')}</b>: none</p>", f"{title or 'examples'}: none"))
        return
    th = "".join(f"<th style='text-align:left'>{_esc(c)}</th>" for c in cols)
    tr = "".join("<tr>" + "".join(f"<td style='text-align:left;vertical-align:top;white-space:pre-wrap'>"
                                  f"{_esc(value(c, r[c]))}</td>" for c in cols) + "</tr>" for _, r in shown.iterrows())
    caption = f"<p><b>{_esc(head)}</b></p>" if head else ""
    text = [head] if head else []
    for _, r in shown.iterrows():
        text.append("\n".join(f"{c}: {value(c, r[c])}" for c in cols))
    _display(Shown(f"{caption}<table>{'<tr>' + th + '</tr>'}{tr}</table>", "\n\n".join(text)))


def tidy(df: pd.DataFrame) -> pd.DataFrame:
    """A table as a person reads it, every value a string: whole-number floats (a level, a count) as
    integers, shares as percentages, missing values as '—'."""
    out = pd.DataFrame(index=df.index)
    for c in df.columns:
        out[c] = [value(str(c), v) for v in df[c]]
    return out


def table(df: pd.DataFrame, empty: str = "nothing to show yet") -> Shown:
    """Display form of a table (see `tidy`); `empty`: what an empty table says."""
    if df.empty:
        return Shown(f"<p><i>{_esc(empty)}</i></p>", empty)
    t = tidy(df)
    if "cell" in t.columns:  # the long cell name last: the columns before it say what it is
        t = t[[c for c in t.columns if c != "cell"] + ["cell"]]
    right = {c for c in t.columns if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])}
    prose = {c for c in t.columns if any("\n" in v or (" " in v and len(v) > 40) for v in t[c])}
    style = {c: "text-align:right;white-space:nowrap" if c in right else
             "text-align:left;white-space:pre-wrap" if c in prose else "text-align:left;white-space:nowrap"
             for c in t.columns}
    head = "".join(f"<th style='{style[c]}'>{_esc(c)}</th>" for c in t.columns)
    body = "".join("<tr>" + "".join(f"<td style='{style[c]};vertical-align:top'>{_esc(v)}</td>" for c, v in r.items())
                   + "</tr>" for _, r in t.iterrows())
    return Shown(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>", t.to_string(index=False))


# ---------------------------------------------------------------- progress bars


class _Lines:
    """A tqdm `file` that writes each refresh as one whole line (papermill logs, executed notebooks): no
    carriage returns, no repeats, no blank lines."""

    def __init__(self, stream=None):
        self.stream, self.last = stream, None

    def _out(self):
        return self.stream or (_VISIBLE[-1] if _VISIBLE else sys.stdout)

    def write(self, s: str) -> None:
        line = s.replace("\r", "").rstrip()
        if line and line != self.last:
            self._out().write(line + "\n")
            self.last = line

    def flush(self) -> None:
        self._out().flush()


def _in_kernel() -> bool:
    ip = sys.modules.get("IPython")
    try:
        return ip is not None and "IPKernelApp" in ip.get_ipython().config
    except AttributeError:
        return False


def progress_mode() -> str:
    """`widget` in a kernel that a Jupyter server started (JupyterLab, Notebook: it sets JPY_SESSION_NAME),
    `lines` in another kernel (papermill under `cotlib run`), `terminal` outside a kernel;
    COTLIB_PROGRESS=widget|lines|terminal|off decides instead."""
    forced = os.environ.get("COTLIB_PROGRESS", "").strip().lower()
    if forced in ("widget", "lines", "terminal", "off"):
        return forced
    if not _in_kernel():
        return "terminal"
    if os.environ.get("JPY_SESSION_NAME"):
        try:
            import ipywidgets  # noqa: F401
        except ImportError:
            return "lines"
        return "widget"
    return "lines"


@functools.lru_cache(maxsize=1)
def _lines_tqdm():
    """tqdm writing one plain line per refresh to stdout (papermill: a log line, not a pink box)."""
    from tqdm.std import tqdm

    class LinesTqdm(tqdm):
        def __init__(self, *args: Any, **kw: Any):
            kw = {"mininterval": 10.0, "ncols": 80, **kw, "file": _Lines()}
            kw.pop("dynamic_ncols", None)
            super().__init__(*args, **kw)

    return LinesTqdm


def progress(iterable: Iterable | None = None, **kw: Any):
    """A tqdm progress bar that suits where it runs (see `progress_mode`): a widget in Lab, one plain line
    per refresh (every 10 s at most) in a papermill log, the usual bar on a terminal."""
    mode = progress_mode()
    if mode == "widget":
        from tqdm.notebook import tqdm

        return tqdm(iterable, **kw)
    if mode == "lines":
        return _lines_tqdm()(iterable, **kw)
    from tqdm.std import tqdm

    return tqdm(iterable, **kw, **({"disable": True} if mode == "off" else {}))


# ---------------------------------------------------------------- libraries' chatter

_VISIBLE: list = []  # the notebook's own stdout while `quiet` sends sys.stdout to the log


class _Switch(io.TextIOBase):
    """sys.stderr while a stage runs: to the log while on, to the original stream after (a library that
    kept a reference to it, such as a logging handler, then writes where it wrote before)."""

    def __init__(self, original, log):
        self.original, self.log, self.on = original, log, True

    def write(self, s: str) -> int:
        if self.on:
            self.log.write(s)
            self.log.flush()
            return len(s)
        return self.original.write(s)

    def flush(self) -> None:
        (self.log if self.on else self.original).flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.original.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.original, "encoding", "utf-8")


@contextlib.contextmanager
def _fds_to(path: Path) -> Iterator[None]:
    """Native libraries and child processes write to file descriptors 1 and 2 directly: point them at the log."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        saved = [os.dup(1), os.dup(2)]
    except OSError:
        yield
        return
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        for n, old in ((1, saved[0]), (2, saved[1])):
            os.dup2(old, n)
            os.close(old)
        os.close(fd)


@contextlib.contextmanager
def quiet(cell_dir: str | Path, log_name: str = "kernel.log") -> Iterator[None]:
    """While a stage runs: what libraries print (their logs, warnings and native messages, on stdout or
    stderr) goes to `<cell_dir>/kernel.log` instead of the notebook, where stderr shows as pink boxes;
    progress bars stay, suited to where the notebook runs (tqdm.auto's too: plain lines under papermill,
    widgets in Lab). cotlib's stages print nothing themselves. Afterwards a note says how many lines went
    to the log, its last lines folded away. Errors still show: an exception leaves the block as usual."""
    import tqdm.auto
    import tqdm.autonotebook

    from .stages import cell_folder

    d = cell_folder(cell_dir)  # a wrong papermill parameter is named here, before pathlib trips on it
    d.mkdir(parents=True, exist_ok=True)
    path = d / log_name
    start = path.stat().st_size if path.exists() else 0
    patched = {}
    if progress_mode() in ("lines", "off"):
        for mod in (tqdm.auto, tqdm.autonotebook):
            patched[mod] = (mod.tqdm, getattr(mod, "trange", None))
            mod.tqdm = _lines_tqdm()
            mod.trange = lambda *a, _t=mod.tqdm, **kw: _t(range(*a), **kw)
    sys.stdout.flush()
    sys.stderr.flush()
    log = open(path, "a", encoding="utf-8", errors="replace")
    originals = sys.stdout, sys.stderr
    switches = _Switch(sys.stdout, log), _Switch(sys.stderr, log)
    sys.stdout, sys.stderr = switches
    _VISIBLE.append(originals[0])
    try:
        with _fds_to(path):
            yield
    finally:
        _VISIBLE.remove(originals[0])
        for sw in switches:
            sw.on = False
        if sys.stdout is switches[0]:
            sys.stdout = originals[0]
        if sys.stderr is switches[1]:
            sys.stderr = originals[1]
        log.close()
        for mod, (tq, tr) in patched.items():
            mod.tqdm = tq
            if tr is not None:
                mod.trange = tr
        note = _log_note(path, start)
        if note is not None:
            _display(note)


def _log_note(path: Path, start: int) -> Shown | None:
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    lines = [ln for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    if not lines:
        return None
    tail = "\n".join(lines[-40:])
    say = f"{len(lines)} lines of library messages (logs, warnings) went to {path}"
    return Shown(f"<details><summary style='color:var(--jp-ui-font-color2, gray)'>{_esc(say)}; the last of "
                 f"them</summary><pre>{_esc(tail)}</pre></details>", say)

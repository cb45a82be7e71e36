"""Grade every teacher CoT in the paper's released files against the gold answers.

For each CoT with a final "The answer is ..." line, a plain reference check says whether that
line is right (same number, same letter, same yes/no, or the same MATH string). The goal: at
least 99.5% of CoTs whose line is right are graded correct by cotlib's grader. Rows where the
grader and the line check disagree go to a table for review.

    python benchmarks/grader_agreement.py [--out outputs/benchmarks/grader_agreement]
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from pathlib import Path

import pandas as pd

from cotlib import released
from cotlib.grading import grade

_LINE = re.compile(r"the answer is[:\s]*(.*)", re.IGNORECASE | re.DOTALL)


def answer_line(text: str) -> str | None:
    """What follows the last 'The answer is', up to the end of its line."""
    hits = list(re.finditer(r"the answer is", text, re.IGNORECASE))
    if not hits:
        return None
    tail = text[hits[-1].end():].lstrip(" :\t")
    return tail.splitlines()[0].strip() if tail.strip() else ""


def line_is_right(line: str, gold: str, kind: str) -> bool:
    """A deliberately plain check, independent of the grader under test."""
    s = line.strip().rstrip(".").strip()
    if kind == "number":
        m = re.search(r"-?\d[\d,]*(?:\.\d+)?", s.replace("$", ""))
        return bool(m) and abs(float(m.group(0).replace(",", "")) - float(gold)) < 1e-6
    if kind == "choice":
        m = re.match(r"\W*(?:option\s*)?\(?([A-E])\)?(?![A-Za-z])", s, re.IGNORECASE)
        return bool(m) and m.group(1).upper() == gold
    if kind == "boolean":
        m = re.match(r"\W*(true|false|yes|no)\b", s, re.IGNORECASE)
        return bool(m) and (m.group(1).lower() in ("true", "yes")) == (gold == "True")
    norm = lambda x: re.sub(r"\s|\$|\\boxed\{|\}$|^\{", "", x)  # noqa: E731
    return norm(s) == norm(gold)


def run(out: Path) -> pd.DataFrame:
    files = [f for f in released.local_files() if f.teacher != "answer-only"]
    per_file, disagreements = [], []
    t0 = time.perf_counter()
    for f in files:
        rows = released.load_rows(f)
        n_line = n_right = n_right_graded = n_wrong_graded = 0
        for r in rows:
            line = answer_line(r["text"])
            g = grade(r["text"], r["gold"], r["answer_type"], r["choices"])
            if line is None:
                continue
            n_line += 1
            right = line_is_right(line, r["gold"], r["answer_type"])
            n_right += right
            n_right_graded += right and g.strict_correct
            n_wrong_graded += (not right) and g.strict_correct
            if right != g.strict_correct:
                disagreements.append({"file": f.name, "dataset": f.dataset, "gold": r["gold"], "answer_line": line[:200],
                                      "line_right": right, "grader_correct": g.strict_correct,
                                      "grader_extracted": g.extracted, "question": r["question"][:200]})
        per_file.append({"file": f.name, "dataset": f.dataset, "teacher": f.teacher, "level": f.level, "format": f.format,
                         "rows": len(rows), "with_answer_line": n_line, "line_right": n_right,
                         "graded_correct_when_line_right": n_right_graded, "graded_correct_when_line_wrong": n_wrong_graded})
        print(f"{f.name:45s} rows {len(rows):5d}  line right {n_right:5d}  grader agrees {n_right_graded:5d}", file=sys.stderr)
    files_df = pd.DataFrame(per_file)
    by_ds = files_df.groupby("dataset")[["rows", "with_answer_line", "line_right", "graded_correct_when_line_right",
                                         "graded_correct_when_line_wrong"]].sum()
    by_ds.loc["ALL"] = by_ds.sum()
    by_ds["agreement_%"] = 100 * by_ds["graded_correct_when_line_right"] / by_ds["line_right"]
    out.mkdir(parents=True, exist_ok=True)
    files_df.to_csv(out / "per_file.csv", index=False)
    by_ds.to_csv(out / "per_dataset.csv")
    pd.DataFrame(disagreements).to_csv(out / "disagreements.csv", index=False)
    print(f"\n{len(files)} released files graded in {time.perf_counter() - t0:.0f}s; disagreements -> {out / 'disagreements.csv'}")
    return by_ds


def extra_acceptances(out: Path, n: int, seed: int = 16) -> pd.DataFrame:
    """`n` random rows the grader accepts although the plain line check rejects them."""
    d = pd.read_csv(out / "disagreements.csv", keep_default_na=False)
    extra = d[(d["grader_correct"].astype(str) == "True") & (d["line_right"].astype(str) == "False")]
    rows = sorted(random.Random(seed).sample(range(len(extra)), min(n, len(extra))))
    return extra.iloc[rows]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("outputs/benchmarks/grader_agreement"))
    p.add_argument("--sample", type=int, default=20, help="extra acceptances to print for review")
    args = p.parse_args()
    by_ds = run(args.out)
    print(by_ds.to_string(float_format=lambda v: f"{v:.2f}"))
    n_extra = int(by_ds.loc["ALL", "graded_correct_when_line_wrong"])
    print(f"\nextra acceptances (graded correct, plain line check says wrong): {n_extra}; {args.sample} at random:")
    for _, r in extra_acceptances(args.out, args.sample).iterrows():
        print(f"  [{r['dataset']}] gold {r['gold']!r:24} line {str(r['answer_line'])[:70]!r:74} read {r['grader_extracted']!r}")
    worst = by_ds["agreement_%"].min()
    print(f"\ngoal: >= 99.5% of CoTs whose answer line is right are graded correct; lowest dataset: {worst:.2f}%")
    print(f"grader_agreement: lowest dataset {worst:.2f}% of {int(by_ds.loc['ALL', 'line_right'])} right answer lines; "
          f"{n_extra} extra acceptances")
    return 0 if worst >= 99.5 else 1


if __name__ == "__main__":
    sys.exit(main())

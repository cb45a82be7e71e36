"""Run-on outputs in real student records: is the first or the last answer line the right one?

A student that answers and then runs on into a new question ("... The answer is 8. Q: ... The
answer is 35.") has several answer lines. cotlib.grading.RUNON_POLICY decides which one counts;
this script measures, on evaluation records (JSON lines with output, gold and optionally
answer_type/choices, as written by `cotlib evaluate` to outputs/<study>/evaluate/*/records.jsonl),
how often each policy grades such outputs correct:

  first           the first answer line of the output
  last            the last answer line of the output (cotlib before issue 16)
  first-response  the last answer line before the first new question/turn after an answer (default)

It prints the counts and examples where the policies disagree, so the default can be confirmed.

    python benchmarks/grader_runon.py 'outputs/study-svamp/evaluate/*/records.jsonl' [--examples 10]
"""

from __future__ import annotations

import argparse
import glob
import json
import re
import sys
from collections import Counter
from pathlib import Path

from cotlib.grading import _NEW_TURN, _TRIGGER, RUNON_POLICIES, RUNON_POLICY, grade


def infer_type(golds: list[str]) -> str:
    """The answer type of a record file from its golds, when the records do not say."""
    if all(re.fullmatch(r"-?[\d.,]+(?:/\d+)?", g.strip()) for g in golds):
        return "number"
    if all(re.fullmatch(r"[A-J]", g.strip()) for g in golds):
        return "choice"
    if all(g.strip() in ("True", "False") for g in golds):
        return "boolean"
    return "math"


def load(patterns: list[str], answer_type: str | None) -> list[dict]:
    rows = []
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            recs = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
            kind = answer_type or infer_type([str(r["gold"]) for r in recs]) if recs else None
            for r in recs:
                rows.append({"file": path, "output": str(r.get("output", "")), "gold": str(r["gold"]),
                             "answer_type": r.get("answer_type") or kind, "choices": r.get("choices")})
    return rows


def analyse(rows: list[dict]) -> dict:
    several, right, new_turn, examples = 0, Counter(), 0, []
    for r in rows:
        if len(_TRIGGER.findall(r["output"])) < 2:
            continue
        several += 1
        new_turn += bool(_NEW_TURN.search(r["output"]))
        verdicts = {p: grade(r["output"], r["gold"], r["answer_type"], r["choices"], policy=p).correct for p in RUNON_POLICIES}
        right.update(p for p, ok in verdicts.items() if ok)
        if len(set(verdicts.values())) > 1:
            examples.append((r, verdicts))
    return {"records": len(rows), "several": several, "new_turn": new_turn, "right": right, "examples": examples}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("records", nargs="+", help="record files (globs allowed)")
    p.add_argument("--answer-type", choices=["number", "choice", "boolean", "math"], help="default: from the golds")
    p.add_argument("--examples", type=int, default=10)
    args = p.parse_args()
    rows = load(args.records, args.answer_type)
    if not rows:
        print(f"no records match {args.records}")
        print("grader_runon: 0 records")
        return 0
    res = analyse(rows)
    n = res["several"]
    print(f"{res['records']} records in {len({r['file'] for r in rows})} files; {n} outputs with more than one answer line"
          f" ({res['new_turn']} of them start a new question or turn)")
    for pol in RUNON_POLICIES:
        mark = "  <- RUNON_POLICY" if pol == RUNON_POLICY else ""
        print(f"  right when graded by {pol:15s}: {res['right'][pol]:6d} of {n}{mark}")
    print(f"\n{len(res['examples'])} outputs the policies grade differently; {min(args.examples, len(res['examples']))} of them:")
    for r, verdicts in res["examples"][:args.examples]:
        tail = r["output"] if len(r["output"]) < 600 else r["output"][:300] + " [...] " + r["output"][-300:]
        print(f"--- {r['file']}  gold {r['gold']!r}  " + "  ".join(f"{k}={v}" for k, v in verdicts.items()))
        print("    " + tail.replace("\n", "\n    "))
    print(f"\ngrader_runon: {n} of {res['records']} outputs with several answer lines; right by first "
          f"{res['right']['first']}, last {res['right']['last']}, first-response {res['right']['first-response']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Agreement of cotlib's grader with the field's own test cases, fetch-free.

The cases live in tests/data/grader/ (see SOURCES.md there): hendrycks MATH's equivalence tests and
Math-Verify's parametrized tests, copied with their licences and source commits, and realistic
outputs written for cotlib (each group of misses of issue 16, gsm8k/AQuA/StrategyQA styles, the
Minerva normalisation rules of lm-evaluation-harness, MAmmoTH's answer_clean). Each case is a gold,
a model output and the expected verdict; `grade(output, gold, answer_type)` must give that verdict
(flexible scoring). Cases judged not applicable are listed with their reason
(tests/data/grader/judgements.json); a judgement may also state that the peer is wrong, with why.

Printed per source: agreement over the applicable cases, every disagreement, and every case where
cotlib accepts what the peer rejects (the target there is none).

    python benchmarks/grader_peer.py [--data tests/data/grader]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

from cotlib.grading import grade

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "grader"
CASE_FILES = ("hendrycks_math_equivalence.jsonl", "math_verify_cases.jsonl", "cotlib_cases.jsonl")


def load_cases(data: Path = DATA) -> list[dict]:
    cases = []
    for name in CASE_FILES:
        with open(data / name, encoding="utf-8") as f:
            cases += [json.loads(line) for line in f if line.strip()]
    return cases


def judgements(data: Path = DATA) -> dict[str, dict]:
    return json.loads((data / "judgements.json").read_text(encoding="utf-8"))


def run(data: Path = DATA) -> dict:
    """Grade every case; returns per-source counts and the lists to print."""
    cases, judged = load_cases(data), judgements(data)
    unknown = set(judged) - {c["id"] for c in cases}
    if unknown:
        raise ValueError(f"judgements for unknown cases: {sorted(unknown)}")
    per = defaultdict(lambda: {"cases": 0, "applicable": 0, "agree": 0})
    disagree, false_accept, not_applicable, peer_wrong = [], [], [], []
    for c in cases:
        src = c["source"] if c["source"] != "cotlib" else f"cotlib/{c['group']}"
        per[src]["cases"] += 1
        j = judged.get(c["id"], {})
        if j.get("status") == "not-applicable":
            not_applicable.append((c, j["reason"]))
            continue
        expected = c["expected"]
        if j.get("status") == "peer-wrong":
            peer_wrong.append((c, j["reason"]))
            expected = not expected
        g = grade(c["prediction"], c["gold"], c.get("answer_type") or "math", c.get("choices"))
        per[src]["applicable"] += 1
        per[src]["agree"] += g.correct == expected
        if g.correct != expected:
            disagree.append((c, g))
            if g.correct and not c["expected"]:
                false_accept.append((c, g))
    return {"per_source": dict(per), "disagree": disagree, "false_accept": false_accept,
            "not_applicable": not_applicable, "peer_wrong": peer_wrong}


def _short(s: str, n: int = 90) -> str:
    s = s.replace("\n", "\\n")
    return s if len(s) <= n else s[:n - 3] + "..."


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA)
    args = p.parse_args()
    t0 = time.perf_counter()
    res = run(args.data)
    per = res["per_source"]
    print(f"{'source':40s} {'cases':>6s} {'applicable':>10s} {'agree':>6s} {'agreement':>9s}")
    groups: dict[str, dict] = defaultdict(lambda: {"cases": 0, "applicable": 0, "agree": 0})
    for src in sorted(per):
        s = per[src]
        print(f"{src:40s} {s['cases']:6d} {s['applicable']:10d} {s['agree']:6d} {100 * s['agree'] / max(1, s['applicable']):8.1f}%")
        top = src.split("/")[0]
        for k in s:
            groups[top][k] += s[k]
    print()
    for top, s in sorted(groups.items()):
        print(f"{'source ' + top:40s} {s['cases']:6d} {s['applicable']:10d} {s['agree']:6d} {100 * s['agree'] / max(1, s['applicable']):8.1f}%")
    print(f"\nnot applicable ({len(res['not_applicable'])}):")
    for c, reason in res["not_applicable"]:
        print(f"  {c['id']} [{c.get('test', c.get('group'))}] gold {_short(c['gold'], 40)!r} pred {_short(c['prediction'], 50)!r}\n      {reason}")
    print(f"\npeer judged wrong ({len(res['peer_wrong'])}):")
    for c, reason in res["peer_wrong"]:
        print(f"  {c['id']} gold {_short(c['gold'], 40)!r} pred {_short(c['prediction'], 50)!r} peer says {c['expected']}\n      {reason}")
    print(f"\ndisagreements ({len(res['disagree'])}):")
    for c, g in res["disagree"]:
        print(f"  {c['id']} expected {c['expected']} got {g.correct} (read {g.extracted!r}) gold {_short(c['gold'], 40)!r}"
              f" pred {_short(c['prediction'])!r}")
    print(f"\ncotlib accepts what the peer rejects: {len(res['false_accept'])}")
    for c, g in res["false_accept"]:
        print(f"  {c['id']} gold {_short(c['gold'], 40)!r} pred {_short(c['prediction'])!r} read {g.extracted!r}")
    n_app = sum(s["applicable"] for s in per.values())
    n_agree = sum(s["agree"] for s in per.values())
    print(f"\n{sum(s['cases'] for s in per.values())} cases graded in {time.perf_counter() - t0:.0f}s")
    print(f"grader_peer agreement: {100 * n_agree / n_app:.1f}% of {n_app} applicable cases; "
          f"{len(res['false_accept'])} accepted that the peer rejects")
    return 0 if n_agree / n_app >= 0.97 and not res["false_accept"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Write cotlib/resources/level_targets.csv: per dataset and granularity level, the released band of
mean words per CoT (min..max over the paper's LLM teachers, plain-CoT files) and the word count our
level prompt asks for.

The target is the band's centre, raised where needed to stay at least 5% above the level below (the
release is not monotonic everywhere: LLaMA's SVAMP level 4 averages 82 words, more than any level 5),
then clamped into the band. Levels the release lacks for a dataset continue the last released step
(between 5% and 25%). Where band and order cannot both hold (a one-teacher band below the level
beneath it), order wins and the row says in_band=false. demo-arith, our own arithmetic set, takes
SVAMP's targets.

    python scripts/build_level_targets.py      # reads the release files (../shared/data/paper_sft here)
"""

from __future__ import annotations

import csv
from pathlib import Path

from cotlib import data, released

OUT = Path(__file__).resolve().parents[1] / "cotlib" / "resources" / "level_targets.csv"
STEP = 1.05  # the least step between levels
MAX_STEP = 1.25  # the most step carried on into levels the release lacks


def targets(bands: dict[int, tuple[float, float]]) -> dict[int, tuple[float, bool]]:
    out: dict[int, tuple[float, bool]] = {}
    prev = None
    step = STEP
    for level in range(1, 7):
        if level in bands:
            lo, hi = bands[level]
            t = (lo + hi) / 2 if prev is None else max((lo + hi) / 2, prev * STEP)
            t = min(max(t, lo), hi)
            if prev is not None and t < prev * STEP:
                t = prev * STEP  # order wins over the band
            if prev is not None:
                step = min(MAX_STEP, max(STEP, t / prev))
            ok = lo - 0.5 <= t <= hi + 0.5  # rounding to whole words
        else:
            t, ok = (prev * step if prev is not None else 20.0), True
        out[level] = (round(t), ok)
        prev = t
    return out


def main() -> None:
    rows = []
    for dataset in data.DATASETS:
        bands = released.level_bands("svamp" if dataset == "demo-arith" else dataset)
        if not bands:
            continue
        for level, (t, ok) in targets(bands).items():
            lo, hi = bands.get(level, (None, None))
            rows.append({"dataset": dataset, "level": level,
                         "released_min": f"{lo:.1f}" if lo is not None else "",
                         "released_max": f"{hi:.1f}" if hi is not None else "",
                         "target_words": t, "in_band": "" if lo is None else str(ok).lower()})
    with OUT.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {OUT} ({len(rows)} rows)")


if __name__ == "__main__":
    main()

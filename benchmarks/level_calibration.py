"""Calibrate the granularity-level prompts: does our level k land in the released level k's length
band, and do our levels keep the order 1 < ... < 6?

The band of level k is the range of mean words per CoT over the paper's teachers' released files for
that dataset and level (cotlib.released). Our teacher writes CoTs for the same training questions
at every level, with any backend:

    python benchmarks/level_calibration.py --backend vllm --teacher smollm2-135m --n 32
    OPENAI_API_KEY=... python benchmarks/level_calibration.py --backend openai --teacher gpt-4o --n 700

Use many questions: the bands are means over whole files, and GPT-4o's own released CoTs (replay)
fall outside its own band at 5 of 6 levels on the first 50 SVAMP questions, at 2 on 200, at none on
all 700. The ± column is the 95% interval of our mean.

A level's CoTs are kept under `--out` (default benchmarks/out/level_calibration), in a folder named
by the generate cell's own hash (cells.config_hash: the config and the exact prompt the teacher is sent). A rerun after editing
one level's prompt regenerates that level only and reuses the others (greedy decoding: the same prompt
gives the same CoTs), so a before/after comparison of one prompt change costs one level, not six.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from cotlib import cells, prompts, released
from cotlib.files import iter_jsonl
from cotlib.schemas import GenerateConfig

# Each level in its own process: an engine's memory (a 1.5B model in fp32 is 6 GB) is only surely given
# back when its process ends.
_CHILD = """
import json, sys
from cotlib.schemas import GenerateConfig
from cotlib.stages import run_cell
run_cell("generate", sys.argv[2], GenerateConfig.model_validate(json.loads(sys.argv[1])))
"""


def summarize(rows) -> tuple[float, float, float, float]:
    """Of a level's answered rows (generate records): mean words, its 95% half-interval, the teacher's
    share correct and the share that wrote the answer line."""
    rows = [r for r in rows if r["status"] != "failed"]
    words = [r["words"] for r in rows]
    half = 1.96 * statistics.stdev(words) / len(words) ** 0.5 if len(words) > 1 else float("nan")
    return (statistics.fmean(words), half, statistics.fmean(bool(r["teacher_correct"]) for r in rows),
            statistics.fmean(bool(r["format_followed"]) for r in rows))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="svamp")
    p.add_argument("--backend", default="auto", choices=["auto", "transformers", "openai", "vllm", "replay"])
    p.add_argument("--teacher", default="smollm2-135m")
    p.add_argument("--base-url", default=None)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=320)
    p.add_argument("--batch-size", type=int, default=64, help="prompts per chunk (vLLM batches a chunk at once)")
    p.add_argument("--out", default=str(Path(__file__).parent / "out" / "level_calibration"),
                   help="where each level's CoTs are kept and reused; '' for a temporary folder")
    a = p.parse_args()
    bands = released.level_bands(a.dataset)
    ours: dict[int, float] = {}
    half: dict[int, float] = {}
    shares: dict[int, list[float]] = {}  # teacher correct, answer line written
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(a.out) if a.out else Path(tmp)
        for level in range(1, 7):
            cfg = GenerateConfig.model_validate({
                "dataset": a.dataset, "split": "train", "n_examples": a.n, "backend": a.backend, "teacher": a.teacher,
                "level": level, "filter": "keep_all", "max_new_tokens": a.max_new_tokens, "batch_size": a.batch_size,
                **({"api": {"base_url": a.base_url}} if a.base_url else {})})
            cell = out / f"{a.dataset}-{a.teacher}-n{a.n}" / f"L{level}-{cells.config_hash('generate', cfg)}"
            if cells.is_done(cell, "generate", cfg):
                print(f"L{level}: reusing {cell} (same config, same prompt)", flush=True)
            else:
                subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cfg.model_dump(mode="json")), str(cell)], check=True)
            ours[level], half[level], *shares[level] = summarize(iter_jsonl(cell / "records.jsonl"))
    print(f"{a.dataset}: mean words per CoT (± 95% CI), {a.teacher} ({a.backend}, {a.n} questions) vs. the released band")
    inside = 0
    for level in range(1, 7):
        lo, hi = bands.get(level, (float("nan"), float("nan")))
        ok = lo <= ours[level] <= hi
        inside += ok
        print(f"  L{level}: ours {ours[level]:6.1f} ± {half[level]:4.1f}   asked {prompts.target_words(a.dataset, level):4d}   "
              f"released {lo:6.1f} .. {hi:6.1f}   {'in band' if ok else 'OUT':7s}   "
              f"teacher correct {shares[level][0]:4.0%}   answer line {shares[level][1]:4.0%}")
    ordered = all(ours[k] < ours[k + 1] for k in range(1, 6))
    print(f"level calibration: {inside}/6 levels in band; order 1 < ... < 6 {'kept' if ordered else 'NOT kept'}")
    return 0 if inside == 6 and ordered else 1


if __name__ == "__main__":
    sys.exit(main())

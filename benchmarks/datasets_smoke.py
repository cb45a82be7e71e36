"""Every dataset through a real evaluation: the embedded student answers a few real test questions of
each of the seven datasets, through `cotlib run` machinery (a grid of evaluate cells, papermill,
the stage notebook), from the local files in ../shared/data.

Per dataset it prints how often the model's outputs carry the dataset's answer line, how often the
gold answer parses (the grader reads "The answer is <gold>" as correct: a broken loader or answer type
shows up as a zero), and the accuracy; and checks that each prompt is the student template around the
question exactly as the training side renders that dataset's questions.

    python benchmarks/datasets_smoke.py [--n 8] [--max-new-tokens 96] [--backend auto]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

import yaml

from cotlib import data, prompts, runner
from cotlib.expansion import load_grid
from cotlib.files import read_jsonl
from cotlib.grading import grade

DATASETS = ["svamp", "gsm8k", "aqua", "math", "csqa", "obqa", "strategyqa"]
# How each kind of question reads on the training side (the release's own layouts)
LAYOUT = {"svamp": r"^[^\n]+$", "gsm8k": r".+", "math": r".+", "strategyqa": r"^[^\n]+\?$",
          "aqua": r"^.+ Answer Choices: \(A\) .+ \(B\) .+$",
          "csqa": r"^Q: .+ Answer choices: A: .+, B: .+$", "obqa": r"^Q: .+ Answer choices: A: .+, B: .+$"}


def run_grid(root: Path, n: int, max_new_tokens: int, backend: str, project: Path) -> dict[str, list[dict]]:
    """A grid of base-student evaluate cells, one per dataset; returns each cell's records."""
    nb = root / "notebooks"
    if not nb.exists():
        nb.symlink_to(project / "notebooks")
    grid = {"name": "datasets", "output_dir": str(root / "outputs"),
            "evaluate": {"student": "smollm2-135m", "dataset": DATASETS, "split": "test", "source": "local",
                         "n_examples": n, "max_new_tokens": max_new_tokens, "batch_size": n, "backend": backend}}
    path = root / "datasets.yaml"
    path.write_text(yaml.safe_dump(grid))
    g = load_grid(path, project_root=root)
    states = runner.run(g, log=lambda _: None, jobs=2)  # two cells at a time, as `make demo` runs: each is mostly a kernel start
    bad = [(s.cell.name, s.detail) for s in states if s.state != "done"]
    if bad:
        raise RuntimeError(f"cells not done: {bad}")
    return {c.config.dataset: read_jsonl(g.cell_dir(c) / "records.jsonl") for c in g.cells}


def report(dataset: str, records: list[dict]) -> dict:
    """What a user relies on, per dataset: template and layout, answer type, gold that parses, answer lines."""
    spec = data.spec(dataset)
    template = prompts.template_for("smollm2-135m")
    prompt_ok = layout_ok = 0
    for r, ex in zip(records, data.load_examples(dataset, "test", len(records), source="local")):
        prompt_ok += r["prompt"] == template.render(ex.question) and r["id"] == ex.id
        layout_ok += bool(re.match(LAYOUT[dataset], ex.question, re.DOTALL))
    gold_parses = sum(grade(prompts.answer_line(r["gold"]), r["gold"], r["answer_type"], r["choices"]).strict_correct
                      for r in records)
    return {"n": len(records), "answer_type": {r["answer_type"] for r in records} == {spec.answer_type},
            "prompt_as_rendered": prompt_ok, "layout_as_training": layout_ok, "gold_parses": gold_parses,
            "answer_line": sum(r["format_followed"] for r in records), "correct": sum(r["correct"] for r in records),
            "has_gold_and_extracted": all("gold" in r and "extracted" in r for r in records)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--backend", default="auto")
    a = p.parse_args()
    project = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        found = run_grid(Path(tmp), a.n, a.max_new_tokens, a.backend, project)
    print(f"{'dataset':11s} {'type':8s} {'prompt ok':>9s} {'layout ok':>9s} {'gold parses':>11s} {'answer line':>11s} {'correct':>8s}")
    zeros = 0
    for ds in DATASETS:
        r = report(ds, found[ds])
        zeros += r["gold_parses"] == 0 or r["prompt_as_rendered"] == 0
        print(f"{ds:11s} {data.spec(ds).answer_type:8s} {r['prompt_as_rendered']:>5d}/{r['n']:<3d} {r['layout_as_training']:>5d}/{r['n']:<3d} "
              f"{r['gold_parses']:>7d}/{r['n']:<3d} {r['answer_line']:>7d}/{r['n']:<3d} {r['correct']:>4d}/{r['n']:<3d}")
    print(f"datasets smoke: {len(DATASETS) - zeros} of {len(DATASETS)} datasets load, render and grade "
          f"(SmolLM2-135M base, {a.n} questions each)")
    return 1 if zeros else 0


if __name__ == "__main__":
    sys.exit(main())

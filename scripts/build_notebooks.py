"""Write the stage notebooks from the cell sources below (run after editing them; commit the result).

Notebooks stay thin: a parameters cell, a few calls into cotlib, then what a person wants to see.
They are written the way git's nbstripout filter (`make setup`, `.gitattributes`) leaves a notebook:
no outputs, no execution counts, cell ids "0", "1", ..., no language_info; so opening and running one
in JupyterLab leaves `git status` clean. Their kernelspec and the `parameters` tag are kept.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent.parent / "notebooks"

_INTRO = ("Run by `cotlib run`, which injects `cell_dir`, `config`, `inputs` (the upstream cells' folders) and "
          "`lineage`; the defaults below run a small demo interactively, under `outputs/interactive/`.\n\n"
          "**Which parameters apply:** in a notebook that `cotlib run` executed (`outputs/<grid>/<stage>/<cell>/"
          "executed.ipynb`), the cell right after the defaults, headed `# Parameters` (tag `injected-parameters`), "
          "replaces them; the summary below names the cell folder the run used.")

# the first lines of every stage notebook's parameters cell
_DEFAULTS = ("# Defaults, for running this notebook by hand. Under `cotlib run` the next cell,\n"
             "# \"# Parameters\" (tag injected-parameters), replaces them: those values apply.\n")

NOTEBOOKS = {
    "01_generate.ipynb": [
        ("md", "# 1. Generate teacher chains of thought\nOne cell of the grid: dataset x teacher x granularity level x format. " + _INTRO),
        ("parameters", _DEFAULTS + 'cell_dir = "../outputs/interactive/generate/demo"\n'
                       'config = {"dataset": "demo-arith", "n_examples": 16, "level": 3, "max_new_tokens": 128, "filter": "keep_all"}\n'
                       'inputs = {}\n'
                       'lineage = {}\n'
                       'seal = "now"'),
        ("code", "import pandas as pd\n"
                 "from cotlib import show, stages\n\n"
                 'with show.quiet(cell_dir):  # libraries\' warnings and logs go to <cell_dir>/kernel.log\n'
                 '    metrics = stages.run_cell("generate", cell_dir, config, inputs, lineage, seal)\n'
                 'show.summary("generate", metrics, cell_dir)'),
        ("md", "## What the teacher wrote"),
        ("code", 'records = pd.read_json(f"{cell_dir}/records.jsonl", lines=True, dtype={"gold": str, "teacher_answer": str})\n'
                 'records["status"].value_counts().to_frame("rows")'),
        ("code", 'show.examples(records, ["id", "status", "teacher_answer", "gold", "words", "steps", "cot"], n=6)'),
    ],
    "02_sft.ipynb": [
        ("md", "# 2. Fine-tune a student on one generated set\nLoRA on a CPU, QLoRA or full fine-tuning on a GPU. "
               "The student template and end token are the same here and in evaluation. " + _INTRO),
        ("parameters", _DEFAULTS + 'cell_dir = "../outputs/interactive/sft/demo"\n'
                       'config = {"generate_cell": "generate/demo", "max_steps": 4}\n'
                       'inputs = {"train": "../outputs/interactive/generate/demo"}\n'
                       'lineage = {}\n'
                       'seal = "now"'),
        ("code", "import pandas as pd\n"
                 "from cotlib import show, stages\n\n"
                 'with show.quiet(cell_dir):  # libraries\' warnings and logs go to <cell_dir>/kernel.log\n'
                 '    metrics = stages.run_cell("sft", cell_dir, config, inputs, lineage, seal)\n'
                 'show.summary("sft", metrics, cell_dir)'),
        ("md", "## Training loss"),
        ("code", 'loss = pd.read_json(f"{cell_dir}/loss.json")\n'
                 'ax = loss.plot(x="step", y="loss", marker="o", title="training loss (completion tokens only)")'),
    ],
    "03_evaluate.ipynb": [
        ("md", "# 3. Evaluate a base or trained student on one test set\nBatched greedy decoding, answer extraction and grading; "
               "every example's prompt, output and grade are in `records.jsonl`. " + _INTRO),
        ("parameters", _DEFAULTS + 'cell_dir = "../outputs/interactive/evaluate/demo"\n'
                       'config = {"student": "smollm2-135m", "sft_cell": "sft/demo", "n_examples": 16, "max_new_tokens": 128}\n'
                       'inputs = {"student": "../outputs/interactive/sft/demo"}\n'
                       'lineage = {}\n'
                       'seal = "now"'),
        ("code", "import pandas as pd\n"
                 "from cotlib import show, stages\n\n"
                 'with show.quiet(cell_dir):  # libraries\' warnings and logs go to <cell_dir>/kernel.log\n'
                 '    metrics = stages.run_cell("evaluate", cell_dir, config, inputs, lineage, seal)\n'
                 'show.summary("evaluate", metrics, cell_dir)'),
        ("md", "## Right and wrong examples"),
        ("code", 'records = pd.read_json(f"{cell_dir}/records.jsonl", lines=True, dtype={"gold": str, "extracted": str})\n'
                 'cols = ["id", "gold", "extracted", "correct", "format_followed", "new_tokens", "output"]\n'
                 'show.examples(records[records.correct], cols, title="right")\n'
                 'show.examples(records[~records.correct], cols, title="wrong")'),
        ("md", "## Output length"),
        ("code", 'ax = records["new_tokens"].plot.hist(bins=20, title="output tokens per example")\n'
                 'ax.set_xlabel("new tokens (the right edge: the max_new_tokens limit)")'),
        ("md", "## vLLM against transformers\nWith `backend: vllm` and `parity_n: N`, the first N examples were also "
               "generated with transformers: where the two differ, both outputs."),
        ("code", 'if "parity" in metrics:\n'
                 '    display(show.table(pd.DataFrame([metrics["parity"]])))\n'
                 '    parity = pd.read_json(f"{cell_dir}/parity.jsonl", lines=True, dtype={"vllm_answer": str, "transformers_answer": str})\n'
                 '    show.examples(parity[~parity.same_output], ["id", "vllm_answer", "transformers_answer", "vllm_output", "transformers_output"])\n'
                 'else:\n'
                 '    print("no parity check in this cell (it needs backend: vllm and parity_n > 0)")'),
    ],
    "04_figures.ipynb": [
        ("md", "# 4. Figures\nEvery figure is drawn from the results table of this cell's inputs, i.e. from finished evaluate cells. " + _INTRO),
        ("parameters", _DEFAULTS + 'cell_dir = "../outputs/interactive/figures"\n'
                       'config = {}\n'
                       'inputs = {"evaluate": ["../outputs/interactive/evaluate/demo"]}\n'
                       'lineage = {}\n'
                       'seal = "now"'),
        ("code", "import pandas as pd\n"
                 "from IPython.display import Image, display\n"
                 "from cotlib import show, stages\n\n"
                 'with show.quiet(cell_dir):  # libraries\' warnings and logs go to <cell_dir>/kernel.log\n'
                 '    metrics = stages.run_cell("figures", cell_dir, config, inputs, lineage, seal)\n'
                 'show.summary("figures", metrics, cell_dir)'),
        ("md", "## Accuracy against granularity level\nOur cells (solid, 95% CI), the paper's reported values where known (dotted)."),
        ("code", 'display(Image(f"{cell_dir}/accuracy_vs_level.png"))'),
        ("md", "## Formats, teachers, and the paper's padding ablation\nOne bar per cell that differs from the "
               "others only in its format (or teacher), 95% CI; a hatched bar is significantly below the student's "
               "best in that comparison (the paired tests below)."),
        ("code", 'for name in ("format_comparison", "teacher_comparison", "paper_padding_ablation"):\n'
                 '    display(Image(f"{cell_dir}/{name}.png"))'),
        ("md", "## Which differences the data carry: paired tests\nEvery cell is scored on the same questions, so "
               "each pair of a student's cells within a family (its levels with answer-only; its teachers at one "
               "level, with human; its formats) gets an exact McNemar test on the questions only one of them got "
               "right, Holm-corrected within the family. Significant pairs first."),
        ("code", 'if "paired.csv" in metrics.get("files", []):  # what this run wrote, not a file left by an earlier one\n'
                 '    paired = pd.read_csv(f"{cell_dir}/paired.csv").sort_values(["significant", "p_holm"], ascending=[False, True])\n'
                 '    display(show.table(paired, empty="no family with two or more cells yet"))\n'
                 'else:\n'
                 '    print("no per-question records among the inputs: no paired tests")'),
        ("md", "## What the students were taught\nThe teachers' own accuracy on the training questions and their CoT "
               "length, per level, from the generate cells' rows."),
        ("code", 'if "supervision.png" in metrics.get("files", []):\n'
                 '    display(Image(f"{cell_dir}/supervision.png"))\n'
                 'else:\n'
                 '    print("not drawn: no generate cells among the inputs, or png is not among config\'s formats")'),
        ("md", "## Our cells beside the paper's numbers\nEmpty `accuracy`: a paper value we have not reproduced yet."),
        ("code", 'show.table(pd.read_csv(f"{cell_dir}/paper_vs_ours.csv"))'),
        ("md", "## The results table these figures read"),
        ("code", 'show.table(pd.read_csv(f"{cell_dir}/results.csv"), empty="no finished evaluate cells")'),
    ],
    "explore.ipynb": [
        ("md", "# A tour of cotlib\nThe paper's factors as data: granularity levels, formats, the teachers' released chains of "
               "thought, the grader, and the results of a grid. Nothing here trains or loads a model; run the stage "
               "notebooks (or `cotlib run params/demo.yaml`) for that."),
        ("parameters", '# the grid whose cells and results the last section shows; the dataset of the released CoTs\n'
                       'grid = "../params/demo.yaml"\n'
                       'dataset = "svamp"'),
        ("md", "## Six granularity levels and four formats\nOne instruction per level and per format; each teacher "
               "prompt is one-shot, with a worked example written at the same level."),
        ("code", "import pandas as pd\n"
                 "from cotlib import prompts, show\n\n"
                 'show.table(pd.DataFrame({"level": list(prompts.LEVELS), "instruction": list(prompts.LEVELS.values())}))'),
        ("code", 'show.table(pd.DataFrame({"format": list(prompts.FORMATS), "instruction": list(prompts.FORMATS.values())}))'),
        ("code", 'for m in prompts.teacher_messages("Tom has 3 apples and buys 4 more. How many apples does he have?", 5, "cot"):\n'
                 '    print(f"--- {m[\'role\']}\\n{m[\'content\']}")'),
        ("md", "## What the paper's teachers wrote, level by level\nThe released CoTs for one training question "
               "(needs the release under `$COTLIB_DATA_DIR/paper_sft`)."),
        ("code", "from cotlib import data, released\n\n"
                 "files = [f for f in released.local_files() if f.dataset == dataset and f.level and f.format == 'cot']\n"
                 "question = data.load_examples(dataset, 'train', 1, source='local')[0].question if files else None\n"
                 "rows = []\n"
                 "for f in files:\n"
                 "    text = {data.norm_question(r['question']): r['text'] for r in released.load_rows(f)}.get(data.norm_question(question))\n"
                 "    rows.append({'teacher': f.teacher, 'level': f.level, 'words': len((text or '').split()), 'cot': text})\n"
                 "print(question)\n"
                 "show.table(pd.DataFrame(rows).sort_values(['teacher', 'level']) if rows else pd.DataFrame(),\n"
                 "           empty='no release files here: put them under $COTLIB_DATA_DIR/paper_sft')"),
        ("md", "## The grader\nThe text after the last \"The answer is\" wins; otherwise the last candidate (flexible only)."),
        ("code", "from cotlib.grading import grade\n\n"
                 "cases = [('So 3 + 4 = 7. The answer is 7.', '7', 'number'), ('The answer is $1,250.', '1250', 'number'),\n"
                 "         ('I think the option is (C)', 'C', 'choice'), ('The answer is \\\\frac{1}{2}', '0.5', 'math'),\n"
                 "         ('Yes, it could. The answer is True', 'True', 'boolean'), ('we get 12 in the end', '12', 'number')]\n"
                 "show.table(pd.DataFrame([{'output': o, 'gold': g, **grade(o, g, t).as_dict()} for o, g, t in cases]))"),
        ("md", "## A grid and its results\nThe cells a grid expands to, their state, and the results table its evaluate cells made."),
        ("code", "from cotlib import results, runner\n"
                 "from cotlib.expansion import load_grid\n\n"
                 "g = load_grid(grid)\n"
                 "show.table(pd.DataFrame([{'stage': s.cell.stage, 'state': s.state, 'cell': s.cell.name} for s in runner.status(g)]))"),
        ("code", "show.table(results.collect(runner.scored_dirs(g)),\n"
                 "           empty=f'no finished evaluate cells in {g.name} yet: `cotlib run {grid}` makes them')"),
    ],
}


def build() -> None:
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook()
        nb.metadata["kernelspec"] = {"name": "cotlib", "display_name": "Python (cotlib)", "language": "python"}
        for kind, src in cells:
            if kind == "md":
                nb.cells.append(new_markdown_cell(src))
            else:
                cell = new_code_cell(src)
                if kind == "parameters":
                    cell.metadata["tags"] = ["parameters"]
                nb.cells.append(cell)
        for i, cell in enumerate(nb.cells):
            cell["id"] = str(i)  # what nbstripout's filter makes of any id
        nbformat.write(nb, HERE / name)


if __name__ == "__main__":
    build()

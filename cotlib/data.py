"""The dataset registry: one Example schema, and loaders for the embedded demo data, local files
in their original layouts, and the hub."""

from __future__ import annotations

import gzip
import json
import logging
import os
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

log = logging.getLogger(__name__)

AnswerType = Literal["number", "choice", "boolean", "math"]


class Example(BaseModel):
    """One question with its gold answer; `question` is already rendered (choices included)."""

    model_config = ConfigDict(frozen=True)

    id: str
    question: str
    answer: str
    answer_type: AnswerType
    choices: list[str] | None = None


class DataError(ValueError):
    """A dataset cannot be loaded as asked; the message names the dataset, file and fix."""


# ---------------------------------------------------------------- embedded demo data

_NAMES = ["Ava", "Ben", "Chloe", "Dan", "Emma", "Finn", "Grace", "Hugo", "Iris", "Jack", "Lena", "Omar"]
_ITEMS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "cookies", "stamps", "shells", "cards"]


def _demo_problem(rng: random.Random) -> tuple[str, int]:
    name, other = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    kind = rng.choice(["add", "sub", "mul", "add_sub", "div"])
    if kind == "add":
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        return f"{name} has {a} {item}. {other} gives {name} {b} more {item}. How many {item} does {name} have now?", a + b
    if kind == "sub":
        a = rng.randint(10, 60)
        b = rng.randint(1, a - 1)
        return f"{name} had {a} {item} and gave {b} of them to {other}. How many {item} does {name} have left?", a - b
    if kind == "mul":
        a, b = rng.randint(2, 9), rng.randint(2, 12)
        return f"{name} has {a} boxes with {b} {item} in each box. How many {item} does {name} have in total?", a * b
    if kind == "div":
        b, q = rng.randint(2, 9), rng.randint(2, 12)
        return f"{name} shares {b * q} {item} equally among {b} friends. How many {item} does each friend get?", q
    a, b = rng.randint(5, 30), rng.randint(2, 20)
    c = rng.randint(1, a + b - 1)
    return (
        f"{name} has {a} {item}. {name} buys {b} more and then gives {c} to {other}. "
        f"How many {item} does {name} have now?",
        a + b - c,
    )


def demo_examples(split: str, n: int | None = None, seed: int = 1234) -> list[Example]:
    """Seeded arithmetic word problems, so the demo needs no download; train and test never overlap."""
    sizes = {"train": 400, "test": 200}
    if split not in sizes:
        raise DataError(f"dataset 'demo-arith' has splits {sorted(sizes)}, not {split!r}")
    rng = random.Random(seed)
    seen: set[str] = set()
    rows: dict[str, list[Example]] = {"train": [], "test": []}
    for name in ("train", "test"):
        while len(rows[name]) < sizes[name]:
            q, a = _demo_problem(rng)
            if q in seen:
                continue
            seen.add(q)
            rows[name].append(Example(id=f"demo-{name}-{len(rows[name]):04d}", question=q, answer=str(a), answer_type="number"))
    return rows[split][:n] if n else rows[split]


# ---------------------------------------------------------------- local files (original layouts)


def data_root() -> Path:
    """Where local copies live: $COTLIB_DATA_DIR, else ../shared/data beside the checkout, else ~/.cache."""
    env = os.environ.get("COTLIB_DATA_DIR")
    if env:
        return Path(env)
    beside = Path(__file__).resolve().parents[2] / "shared" / "data"
    if beside.is_dir():
        return beside
    return Path.home() / ".cache" / "cotlib" / "data"


def read_json_records(path: Path) -> list[dict]:
    """Rows of a JSON array or JSONL file, gzipped or not: the layouts the test sets and the release use."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        if path.name.endswith((".jsonl", ".jsonl.gz")):
            return [json.loads(line) for line in fh if line.strip()]
        return json.load(fh)


def _find(rel: str, dataset: str) -> Path:
    root = data_root()
    for cand in (root / rel, root / (rel + ".gz")):
        if cand.exists():
            return cand
    raise DataError(
        f"dataset {dataset!r}: file {rel!r} not found under {root} "
        f"(set COTLIB_DATA_DIR to the folder holding testsets/ and paper_sft/, or use the hub loader)"
    )


def _need(row: dict, keys: tuple[str, ...], dataset: str, path: Path) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise DataError(f"dataset {dataset!r}: {path} rows lack fields {missing}; expected fields {list(keys)}")


def _num(x: object) -> str:
    v = float(x)
    return str(int(v)) if v.is_integer() else str(v)


def render_choices(stem: str, choices: list[str], style: str) -> str:
    """One rendering of a multiple-choice question, shared by training, generation and evaluation."""
    letters = "ABCDEFGHIJ"
    if style == "aqua":
        return f"{stem} Answer Choices: " + " ".join(f"({letters[i]}) {c}" for i, c in enumerate(choices))
    return f"Q: {stem} Answer choices: " + ", ".join(f"{letters[i]}: {c}" for i, c in enumerate(choices))


_CHOICE_LINE = re.compile(r"^\s*([A-J])[.:)]\s*(.*)$")


def _parse_csqa_test(instruction: str) -> tuple[str, list[str]]:
    stem, _, tail = instruction.partition("Answer Choices:")
    choices = [m.group(2).strip() for line in tail.splitlines() if (m := _CHOICE_LINE.match(line))]
    return stem.strip(), choices


def _load_svamp_test(dataset: str) -> list[Example]:
    path = _find("testsets/svamp/test.jsonl", dataset)
    train_questions = {r["instruction"].strip() for r in read_json_records(_find("paper_sft/SVAMP_only_ans.json", dataset))}
    out = []
    for r in read_json_records(path):
        _need(r, ("Body", "Question", "Answer", "ID"), dataset, path)
        q = f"{r['Body'].strip()} {r['Question'].strip()}"
        if q in train_questions:
            continue
        out.append(Example(id=r["ID"], question=q, answer=_num(r["Answer"]), answer_type="number"))
    return out


def _load_gsm8k_test(dataset: str) -> list[Example]:
    path = _find("testsets/gsm8k/test.jsonl", dataset)
    out = []
    for i, r in enumerate(read_json_records(path)):
        _need(r, ("question", "answer"), dataset, path)
        gold = r["answer"].split("####")[-1].strip().replace(",", "")
        out.append(Example(id=f"gsm8k-test-{r.get('idx', i)}", question=r["question"], answer=gold, answer_type="number"))
    return out


def _load_aqua_test(dataset: str) -> list[Example]:
    path = _find("testsets/aqua/test.jsonl", dataset)
    out = []
    for i, r in enumerate(read_json_records(path)):
        _need(r, ("question", "options", "correct"), dataset, path)
        choices = [re.sub(r"^[A-J]\)", "", o).strip() for o in r["options"]]
        out.append(Example(id=f"aqua-test-{i}", question=render_choices(r["question"], choices, "aqua"),
                           answer=r["correct"].strip(), answer_type="choice", choices=choices))
    return out


def _load_label_file(rel: str, kind: str) -> Callable[[str], list[Example]]:
    def load(dataset: str) -> list[Example]:
        path = _find(rel, dataset)
        out = []
        for i, r in enumerate(read_json_records(path)):
            _need(r, ("instruction", "label"), dataset, path)
            label = str(r["label"]).strip()
            if kind == "boolean":
                out.append(Example(id=f"{dataset}-test-{i}", question=r["instruction"].strip(), answer=label, answer_type="boolean"))
                continue
            if kind == "csqa":
                stem, choices = _parse_csqa_test(r["instruction"])
            else:  # obqa test rows are already in the training layout
                stem = r["instruction"].partition("Answer choices:")[0].removeprefix("Q:").strip()
                choices = parse_rendered_choices(r["instruction"]) or []
            out.append(Example(id=f"{dataset}-test-{i}", question=render_choices(stem, choices, "qa"),
                               answer=label, answer_type="choice", choices=choices))
        return out

    return load


LOCAL_TEST: dict[str, Callable[[str], list[Example]]] = {
    "svamp": _load_svamp_test,
    "gsm8k": _load_gsm8k_test,
    "aqua": _load_aqua_test,
    "csqa": _load_label_file("testsets/csqa/csqa_test.json", "csqa"),
    "obqa": _load_label_file("testsets/obqa/openbookQA_test.json", "obqa"),
    "strategyqa": _load_label_file("testsets/strategyqa/strategyQA_test.json", "boolean"),
}

# The paper's training questions: its released answer-only files (paper_sft/), in its own layout.
TRAIN_FILES: dict[str, str] = {
    "svamp": "SVAMP_only_ans.json",
    "gsm8k": "gsm_train_onlyans.json",
    "aqua": "aqua_only_ans.json",
    "math": "math_human.json",
    "csqa": "commonsenseQA_onlyans.json",
    "obqa": "openbookQA_onlyans.json",
    "strategyqa": "strategyQA_onlyans.json",
}
ANSWER_TYPES: dict[str, AnswerType] = {
    "demo-arith": "number", "svamp": "number", "gsm8k": "number", "aqua": "choice", "math": "math",
    "csqa": "choice", "obqa": "choice", "strategyqa": "boolean",
}
_AQUA_CHOICES = re.compile(r"\(([A-J])\)\s*(.*?)\s*(?=\([A-J]\)|$)")


def parse_rendered_choices(question: str) -> list[str] | None:
    """Choices from a question already rendered by render_choices (either style)."""
    if "Answer Choices:" in question:
        return [m.group(2) for m in _AQUA_CHOICES.finditer(question.split("Answer Choices:", 1)[1])] or None
    if "Answer choices:" in question:
        tail = question.split("Answer choices:", 1)[1]
        return [c.split(":", 1)[1].strip() for c in re.split(r",\s*(?=[A-J]:)", tail.strip()) if ":" in c] or None
    return None


def math_gold(row: dict) -> str:
    """MATH's final answer: the solution's last \\boxed{}, else the release's `output` with braces closed."""
    from .grading import last_boxed

    boxed = last_boxed(row.get("solution", ""))
    if boxed:
        return boxed
    out = str(row.get("output", "")).strip()
    return out + "}" * max(0, out.count("{") - out.count("}"))


def clean_gold(dataset: str, raw: object, choices: list[str] | None = None) -> str | None:
    """Gold answers as the graders compare them: numbers without trailing zeros, bare letters, True/False.

    None when the release's answer field holds no recognisable answer (some AQuA rows).
    """
    from .grading import extract_choice

    text = str(raw).strip()
    kind = ANSWER_TYPES[dataset]
    if kind == "number":
        return _num(text.replace(",", ""))
    if kind == "choice":
        return extract_choice(text, choices)
    if kind == "boolean":
        return "True" if text.lower() in ("true", "yes") else "False"
    return text


def _load_train(dataset: str) -> list[Example]:
    path = _find(f"paper_sft/{TRAIN_FILES[dataset]}", dataset)
    out, unreadable = [], 0
    for i, r in enumerate(read_json_records(path)):
        if dataset == "math":
            _need(r, ("problem", "solution", "output"), dataset, path)
            out.append(Example(id=f"math-train-{i}", question=r["problem"], answer=math_gold(r), answer_type="math"))
            continue
        _need(r, ("instruction", "output"), dataset, path)
        q = r["instruction"].strip()
        choices = parse_rendered_choices(q)
        gold = clean_gold(dataset, r["output"], choices)
        if gold is None:
            unreadable += 1
            continue
        out.append(Example(id=f"{dataset}-train-{i}", question=q, answer=gold,
                           answer_type=ANSWER_TYPES[dataset], choices=choices))
    if unreadable:
        log.warning("%s: skipped %d rows of %s whose answer field names no choice", dataset, unreadable, path.name)
    return out


# ---------------------------------------------------------------- the hub (machines with internet)

HUB_IDS: dict[str, tuple[str, str | None]] = {
    "svamp": ("ChilleD/SVAMP", None),
    "gsm8k": ("openai/gsm8k", "main"),
    "aqua": ("deepmind/aqua_rat", "raw"),
    "math": ("HuggingFaceH4/MATH-500", None),
    "csqa": ("tau/commonsense_qa", None),
    "obqa": ("allenai/openbookqa", "main"),
}
_HUB_SPLIT = {("csqa", "test"): "validation"}  # CSQA's test labels are hidden: the paper's 1,221 are validation


def _from_hub_row(dataset: str, i: int, r: dict) -> Example:
    if dataset == "svamp":
        q = f"{r['Body'].strip()} {r['Question'].strip()}"
        return Example(id=str(r.get("ID", i)), question=q, answer=_num(r["Answer"]), answer_type="number")
    if dataset == "gsm8k":
        return Example(id=f"gsm8k-{i}", question=r["question"], answer=_num(r["answer"].split("####")[-1].replace(",", "")),
                       answer_type="number")
    if dataset == "aqua":
        choices = [re.sub(r"^[A-J]\)", "", o).strip() for o in r["options"]]
        return Example(id=f"aqua-{i}", question=render_choices(r["question"], choices, "aqua"), answer=r["correct"].strip(),
                       answer_type="choice", choices=choices)
    if dataset == "math":
        return Example(id=str(r.get("unique_id", f"math-{i}")), question=r["problem"],
                       answer=r.get("answer") or math_gold(r), answer_type="math")
    if dataset == "csqa":
        choices = list(r["choices"]["text"])
        return Example(id=r.get("id", f"csqa-{i}"), question=render_choices(r["question"], choices, "qa"),
                       answer=r["answerKey"], answer_type="choice", choices=choices)
    if dataset == "obqa":
        choices = list(r["choices"]["text"])
        return Example(id=r.get("id", f"obqa-{i}"), question=render_choices(r["question_stem"], choices, "qa"),
                       answer=r["answerKey"], answer_type="choice", choices=choices)
    raise DataError(f"dataset {dataset!r} has no hub loader")


def _load_hub(dataset: str, split: str) -> list[Example]:
    if dataset not in HUB_IDS:
        raise DataError(f"dataset {dataset!r} has no standard hub copy with the paper's split; "
                        f"use the paper's files (source: local, COTLIB_DATA_DIR)")
    from datasets import load_dataset

    repo, name = HUB_IDS[dataset]
    try:
        rows = load_dataset(repo, name, split=_HUB_SPLIT.get((dataset, split), split))
    except Exception as err:  # network, auth or an unknown split: say which dataset and how to avoid the hub
        raise DataError(f"dataset {dataset!r}: could not load {repo} split {split!r} from the hub ({err}); "
                        f"offline, use local files (source: local, COTLIB_DATA_DIR)") from err
    return [_from_hub_row(dataset, i, r) for i, r in enumerate(rows)]


DATASETS = list(ANSWER_TYPES)
Source = Literal["auto", "local", "hub"]


def load_examples(dataset: str, split: str = "test", n: int | None = None, seed: int = 1234,
                  source: Source = "auto") -> list[Example]:
    """Examples of one dataset split, in a stable order (the first `n` when n is given).

    source 'local' reads the original files under data_root(); 'hub' uses `datasets`; 'auto' tries
    local files first and falls back to the hub.
    """
    if dataset == "demo-arith":
        return demo_examples(split, n, seed)
    if dataset not in ANSWER_TYPES:
        raise DataError(f"unknown dataset {dataset!r}; known datasets: {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise DataError(f"dataset {dataset!r} has splits 'train' and 'test', not {split!r}")
    rows: list[Example] | None = None
    if source in ("auto", "local"):
        try:
            rows = _load_train(dataset) if split == "train" else _load_local_test(dataset)
        except DataError:
            if source == "local":
                raise
    if rows is None:
        rows = _load_hub(dataset, split)
    if not rows:
        raise DataError(f"dataset {dataset!r} split {split!r} is empty")
    return rows[:n] if n else rows


def _load_local_test(dataset: str) -> list[Example]:
    if dataset not in LOCAL_TEST:
        raise DataError(f"dataset {dataset!r}: no local test file is known (MATH-500 comes from the hub: "
                        f"{HUB_IDS['math'][0]})")
    return LOCAL_TEST[dataset](dataset)

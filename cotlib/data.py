"""The dataset registry: one Example schema, and one `DatasetSpec` per dataset, which says everything
the package knows of it (answer type, the paper's training file, the local test file and its layout,
the hub copy, the teacher exemplar kind, how the release names it, its subjects). A new dataset joins
by adding one spec to `SPECS`.

Loaders read the embedded demo data, local files in their original layouts (under `data_root()`), and
the hub. A layout shared by a local file and its hub copy is parsed by one function.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

log = logging.getLogger(__name__)

AnswerType = Literal["number", "choice", "boolean", "math"]
Source = Literal["auto", "local", "hub"]


class Example(BaseModel):
    """One question with its gold answer; `question` is already rendered (choices included)."""

    model_config = ConfigDict(frozen=True)

    id: str
    question: str
    answer: str
    answer_type: AnswerType
    choices: list[str] | None = None
    subject: str | None = None  # MATH: the problem's subject, in its canonical spelling


class DataError(ValueError):
    """A dataset cannot be loaded as asked; the message names the dataset, file and fix."""


# ---------------------------------------------------------------- shared parsing


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
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            if path.name.endswith((".jsonl", ".jsonl.gz")):
                return [json.loads(line) for line in fh if line.strip()]
            return json.load(fh)
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: unreadable ({type(err).__name__}: {err}); the file is damaged or truncated: "
                        f"replace it with an intact copy") from None


def norm_question(q: str) -> str:
    """Whitespace-normalised question text, for matching a question across files."""
    return " ".join(q.split())


def _num(x: object) -> str:
    v = float(str(x).replace(",", ""))
    return str(int(v)) if v.is_integer() else str(v)


def render_choices(stem: str, choices: list[str], style: str) -> str:
    """One rendering of a multiple-choice question, shared by training, generation and evaluation."""
    letters = "ABCDEFGHIJ"
    if style == "aqua":
        return f"{stem} Answer Choices: " + " ".join(f"({letters[i]}) {c}" for i, c in enumerate(choices))
    return f"Q: {stem} Answer choices: " + ", ".join(f"{letters[i]}: {c}" for i, c in enumerate(choices))


_AQUA_CHOICES = re.compile(r"\(([A-J])\)\s*(.*?)\s*(?=\([A-J]\)|$)")
_CHOICE_LINE = re.compile(r"^\s*([A-J])[.:)]\s*(.*)$")


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


def _need(row: dict, keys: tuple[str, ...], dataset: str, where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise DataError(f"dataset {dataset!r}: {where} rows lack fields {missing}; expected fields {list(keys)}")


# Row parsers: (dataset, split, index, row, where) -> Example. `where` names the file or hub copy in errors.
RowParser = Callable[[str, str, int, dict, str], Example]


def _svamp_row(ds: str, split: str, i: int, r: dict, where: str) -> Example:
    _need(r, ("Body", "Question", "Answer"), ds, where)
    return Example(id=str(r.get("ID", f"{ds}-{split}-{i}")), question=f"{r['Body'].strip()} {r['Question'].strip()}",
                   answer=_num(r["Answer"]), answer_type="number")


def _gsm8k_row(ds: str, split: str, i: int, r: dict, where: str) -> Example:
    _need(r, ("question", "answer"), ds, where)
    return Example(id=f"{ds}-{split}-{r.get('idx', i)}", question=r["question"],
                   answer=_num(r["answer"].split("####")[-1].strip()), answer_type="number")


def _aqua_row(ds: str, split: str, i: int, r: dict, where: str) -> Example:
    _need(r, ("question", "options", "correct"), ds, where)
    choices = [re.sub(r"^[A-J]\)", "", o).strip() for o in r["options"]]
    return Example(id=f"{ds}-{split}-{i}", question=render_choices(r["question"], choices, "aqua"),
                   answer=r["correct"].strip(), answer_type="choice", choices=choices)


def _math_row(ds: str, split: str, i: int, r: dict, where: str) -> Example:
    """MATH-500 (PRM800K's split, HuggingFaceH4/MATH-500's layout): gold is the `answer` field."""
    _need(r, ("problem", "answer"), ds, where)
    subject = r.get("subject") or r.get("type")
    return Example(id=str(r.get("unique_id", f"{ds}-{split}-{i}")), question=r["problem"], answer=str(r["answer"]),
                   answer_type="math", subject=canonical_subject(subject) if subject else None)


def _csqa_paper_row(ds: str, split: str, i: int, r: dict, where: str) -> Example:
    """The paper's CommonsenseQA test file: '<stem> Answer Choices:\\nA. ...' and a label letter."""
    _need(r, ("instruction", "label"), ds, where)
    stem, _, tail = r["instruction"].partition("Answer Choices:")
    choices = [m.group(2).strip() for line in tail.splitlines() if (m := _CHOICE_LINE.match(line))]
    return Example(id=f"{ds}-{split}-{i}", question=render_choices(stem.strip(), choices, "qa"),
                   answer=str(r["label"]).strip(), answer_type="choice", choices=choices)


def _obqa_paper_row(ds: str, split: str, i: int, r: dict, where: str) -> Example:
    """The paper's OpenBookQA test file, already in the training layout ('Q: ... Answer choices: A: ...')."""
    _need(r, ("instruction", "label"), ds, where)
    stem = r["instruction"].partition("Answer choices:")[0].removeprefix("Q:").strip()
    choices = parse_rendered_choices(r["instruction"]) or []
    return Example(id=f"{ds}-{split}-{i}", question=render_choices(stem, choices, "qa"),
                   answer=str(r["label"]).strip(), answer_type="choice", choices=choices)


def _boolean_row(ds: str, split: str, i: int, r: dict, where: str) -> Example:
    _need(r, ("instruction", "label"), ds, where)
    return Example(id=f"{ds}-{split}-{i}", question=r["instruction"].strip(), answer=str(r["label"]).strip(),
                   answer_type="boolean")


def _csqa_hub_row(ds: str, split: str, i: int, r: dict, where: str) -> Example:
    choices = list(r["choices"]["text"])
    return Example(id=r.get("id", f"{ds}-{split}-{i}"), question=render_choices(r["question"], choices, "qa"),
                   answer=r["answerKey"], answer_type="choice", choices=choices)


def _obqa_hub_row(ds: str, split: str, i: int, r: dict, where: str) -> Example:
    choices = list(r["choices"]["text"])
    return Example(id=r.get("id", f"{ds}-{split}-{i}"), question=render_choices(r["question_stem"], choices, "qa"),
                   answer=r["answerKey"], answer_type="choice", choices=choices)


# ---------------------------------------------------------------- the registry


@dataclass(frozen=True)
class LocalFile:
    """A test set in its original layout under data_root()."""

    path: str
    parse: RowParser


@dataclass(frozen=True)
class HubCopy:
    """The standard hub copy with the paper's split; `splits` maps ours to the hub's where they differ."""

    repo: str
    config: str | None
    parse: RowParser
    splits: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    answer_type: AnswerType
    exemplar: str  # the kind of one-shot exemplar a teacher sees (prompts.EXEMPLARS)
    train_file: str | None = None  # the paper's training questions: its answer-only file in paper_sft/
    test_file: LocalFile | None = None
    test_from_train_complement: str | None = None  # SVAMP: the test split is the file's rows not in training
    hub: HubCopy | None = None
    release_names: tuple[str, ...] = ()  # how the paper's release file names spell it
    subjects: tuple[str, ...] = ()  # canonical subject names a split can be restricted to
    embedded: bool = False  # written by the package itself (cotlib.data.demo_examples), both splits

    @property
    def has_train(self) -> bool:
        """Whether the dataset has training questions, so teachers write CoTs for it (and level targets
        exist); an evaluation-only dataset has none."""
        return self.train_file is not None or self.embedded


# MATH subjects in MATH-500's spelling; the paper's training file writes two without spaces.
MATH_SUBJECTS = ("Prealgebra", "Algebra", "Number Theory", "Counting & Probability", "Geometry",
                 "Intermediate Algebra", "Precalculus")
PAPER_MATH_SUBJECTS = ("Prealgebra", "Algebra", "Counting & Probability", "Number Theory")

SPECS: dict[str, DatasetSpec] = {s.name: s for s in [
    DatasetSpec("demo-arith", "number", "number", embedded=True),
    DatasetSpec("svamp", "number", "number", train_file="SVAMP_only_ans.json",
                test_from_train_complement="testsets/svamp/test.jsonl",
                hub=HubCopy("ChilleD/SVAMP", None, _svamp_row), release_names=("svamp",)),
    # all 1,000 SVAMP problems, as papers that report SVAMP on the whole set test: evaluation only, and for
    # base students or students not trained on SVAMP, since it holds SVAMP's 700 training problems
    DatasetSpec("svamp-1000", "number", "number", test_file=LocalFile("testsets/svamp/test.jsonl", _svamp_row)),
    DatasetSpec("gsm8k", "number", "number", train_file="gsm_train_onlyans.json",
                test_file=LocalFile("testsets/gsm8k/test.jsonl", _gsm8k_row),
                hub=HubCopy("openai/gsm8k", "main", _gsm8k_row), release_names=("gsm8k", "gsm")),
    DatasetSpec("aqua", "choice", "aqua", train_file="aqua_only_ans.json",
                test_file=LocalFile("testsets/aqua/test.jsonl", _aqua_row),
                hub=HubCopy("deepmind/aqua_rat", "raw", _aqua_row), release_names=("aqua", "auqa")),
    DatasetSpec("math", "math", "math", train_file="math_human.json",
                test_file=LocalFile("testsets/math/test.jsonl", _math_row),
                hub=HubCopy("HuggingFaceH4/MATH-500", None, _math_row), release_names=("math",),
                subjects=MATH_SUBJECTS),
    DatasetSpec("csqa", "choice", "choice", train_file="commonsenseQA_onlyans.json",
                test_file=LocalFile("testsets/csqa/csqa_test.json", _csqa_paper_row),
                # CSQA's test labels are hidden: the paper's 1,221 test questions are the validation split
                hub=HubCopy("tau/commonsense_qa", None, _csqa_hub_row, {"test": "validation"}),
                release_names=("csqa", "commonsenseqa", "cqa", "ecqa")),
    DatasetSpec("obqa", "choice", "choice", train_file="openbookQA_onlyans.json",
                test_file=LocalFile("testsets/obqa/openbookQA_test.json", _obqa_paper_row),
                hub=HubCopy("allenai/openbookqa", "main", _obqa_hub_row), release_names=("obqa", "openbookqa")),
    DatasetSpec("strategyqa", "boolean", "boolean", train_file="strategyQA_onlyans.json",
                test_file=LocalFile("testsets/strategyqa/strategyQA_test.json", _boolean_row),
                release_names=("stqa", "strategyqa")),
]}
DATASETS = list(SPECS)


def spec(dataset: str) -> DatasetSpec:
    if dataset not in SPECS:
        raise DataError(f"unknown dataset {dataset!r}; known datasets: {', '.join(DATASETS)}")
    return SPECS[dataset]


def release_dataset(name_key: str) -> str | None:
    """The dataset a release file name's leading word denotes ('stqa' -> strategyqa)."""
    return next((s.name for s in SPECS.values() if name_key in s.release_names), None)


def _subject_key(s: str) -> str:
    return re.sub(r"[^a-z]", "", s.lower().replace("&", "and"))


def canonical_subject(subject: str) -> str:
    """A MATH subject in MATH-500's spelling: 'CountingAndProbability' -> 'Counting & Probability'."""
    by_key = {_subject_key(s): s for s in MATH_SUBJECTS}
    return by_key.get(_subject_key(subject), subject)


def canonical_subjects(dataset: str, subjects: list[str]) -> list[str]:
    """Validated subjects for a dataset, canonically spelled; a clear error names the known ones."""
    known = spec(dataset).subjects
    if not known:
        raise ValueError(f"dataset {dataset!r} has no subjects to restrict to (only: "
                         f"{', '.join(d for d, s in SPECS.items() if s.subjects)})")
    out = []
    for s in subjects:
        c = canonical_subject(s)
        if c not in known:
            raise ValueError(f"unknown {dataset} subject {s!r}; known: {', '.join(known)}")
        out.append(c)
    if not out:
        raise ValueError("an empty list keeps nothing; leave subjects unset to keep every subject")
    return out


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


def _find(rel: str, dataset: str) -> Path:
    root = data_root()
    for cand in (root / rel, root / (rel + ".gz")):
        if cand.exists():
            return cand
    raise DataError(
        f"dataset {dataset!r}: file {rel!r} not found under {root} "
        f"(set COTLIB_DATA_DIR to the folder holding testsets/ and paper_sft/, or use the hub loader)"
    )


def clean_gold(dataset: str, raw: object, choices: list[str] | None = None) -> str | None:
    """Gold answers as the graders compare them: numbers without trailing zeros, bare letters, True/False.

    None when the release's answer field holds no recognisable answer (some AQuA rows).
    """
    from .grading import extract_choice

    text = str(raw).strip()
    kind = spec(dataset).answer_type
    if kind == "number":
        return _num(text)
    if kind == "choice":
        return extract_choice(text, choices)
    if kind == "boolean":
        return "True" if text.lower() in ("true", "yes") else "False"
    return text


def _load_train(dataset: str) -> list[Example]:
    """The paper's training questions, in its own layout (the answer-only files of its release)."""
    s = spec(dataset)
    path = _find(f"paper_sft/{s.train_file}", dataset)
    out, unreadable = [], 0
    for i, r in enumerate(read_json_records(path)):
        if dataset == "math":
            _need(r, ("problem", "solution", "output"), dataset, str(path))
            out.append(Example(id=f"math-train-{i}", question=r["problem"], answer=math_gold(r), answer_type="math",
                               subject=canonical_subject(r["type"]) if r.get("type") else None))
            continue
        _need(r, ("instruction", "output"), dataset, str(path))
        q = r["instruction"].strip()
        choices = parse_rendered_choices(q)
        gold = clean_gold(dataset, r["output"], choices)
        if gold is None:
            unreadable += 1
            continue
        out.append(Example(id=f"{dataset}-train-{i}", question=q, answer=gold, answer_type=s.answer_type, choices=choices))
    if unreadable:
        log.warning("%s: skipped %d rows of %s whose answer field names no choice", dataset, unreadable, path.name)
    return out


def _load_local_test(dataset: str) -> list[Example]:
    s = spec(dataset)
    if s.test_from_train_complement:
        path = _find(s.test_from_train_complement, dataset)
        train = {norm_question(e.question) for e in _load_train(dataset)}
        return [ex for i, r in enumerate(read_json_records(path))
                if norm_question((ex := _svamp_row(dataset, "test", i, r, str(path))).question) not in train]
    if s.test_file is None:
        raise DataError(f"dataset {dataset!r}: no local test file is known; use the hub (source: hub)")
    path = _find(s.test_file.path, dataset)
    return [s.test_file.parse(dataset, "test", i, r, str(path)) for i, r in enumerate(read_json_records(path))]


# ---------------------------------------------------------------- the hub (machines with internet)


def _load_hub(dataset: str, split: str) -> list[Example]:
    hub = spec(dataset).hub
    if hub is None:
        raise DataError(f"dataset {dataset!r} has no standard hub copy with the paper's split; "
                        f"use the paper's files (source: local, COTLIB_DATA_DIR)")
    from datasets import load_dataset

    where = f"{hub.repo} split {hub.splits.get(split, split)!r}"
    try:
        rows = load_dataset(hub.repo, hub.config, split=hub.splits.get(split, split))
    except Exception as err:  # network, auth or an unknown split: say which dataset and how to avoid the hub
        raise DataError(f"dataset {dataset!r}: could not load {where} from the hub ({err}); "
                        f"offline, use local files (source: local, COTLIB_DATA_DIR)") from err
    return [hub.parse(dataset, split, i, r, where) for i, r in enumerate(rows)]


# ---------------------------------------------------------------- the one entry point


def _rows(dataset: str, split: str, source: Source) -> list[Example]:
    rows: list[Example] | None = None
    if source in ("auto", "local"):
        try:
            rows = _load_train(dataset) if split == "train" else _load_local_test(dataset)
        except DataError:
            if source == "local":
                raise
    if rows is None:
        rows = _load_hub(dataset, split)
    return rows


def train_test_overlap(dataset: str, train: list[Example], source: Source = "auto") -> set[str]:
    """Normalised training questions (whitespace and case) that are also test questions."""
    key = lambda q: norm_question(q).lower()  # noqa: E731
    try:
        test = {key(e.question) for e in _rows(dataset, "test", source)}
    except DataError:
        return set()  # no test set at hand: nothing to leak into
    return {key(e.question) for e in train} & test


def requirement(dataset: str, split: str, source: Source, subjects: list[str] | None = None):
    """The dataset split must load here (local files, or the hub where allowed)."""
    from .environment import Requirement

    return Requirement(("data", dataset, split, source, tuple(subjects or ())),
                       lambda dry_run: load_examples(dataset, split, 1, source=source, subjects=subjects))


def load_examples(dataset: str, split: str = "test", n: int | None = None, seed: int = 1234,
                  source: Source = "auto", subjects: list[str] | None = None) -> list[Example]:
    """Examples of one dataset split, in a stable order (the first `n` when n is given).

    source 'local' reads the original files under data_root(); 'hub' uses `datasets`; 'auto' tries
    local files first and falls back to the hub. Training questions that are also test questions are
    dropped, with a warning naming how many. `subjects` keeps those subjects only (MATH).
    """
    if spec(dataset).embedded:
        return demo_examples(split, n, seed)
    if split not in ("train", "test"):
        raise DataError(f"dataset {dataset!r} has splits 'train' and 'test', not {split!r}")
    rows = _rows(dataset, split, source)
    if split == "train":
        leaked = train_test_overlap(dataset, rows, source)
        if leaked:
            log.warning("%s: dropped %d training questions that are also test questions", dataset, len(leaked))
            rows = [e for e in rows if norm_question(e.question).lower() not in leaked]
    if subjects is not None:
        keep = set(canonical_subjects(dataset, subjects))
        rows = [e for e in rows if e.subject in keep]
    if not rows:
        raise DataError(f"dataset {dataset!r} split {split!r} is empty"
                        + (f" for subjects {subjects}" if subjects else ""))
    return rows[:n] if n else rows

"""Granularity levels, CoT formats and student templates: the paper's factors, as data in one place.

The paper's exact teacher prompts were not released; these one-shot prompts follow what the
release shows (level 1 the key idea, level 6 numbered steps with a check, every CoT ending in
"The answer is <ans>"), and are calibrated against it: each level asks for the word count in
`resources/level_targets.csv` (inside the released teachers' band for that dataset and level, rising
with the level; scripts/build_level_targets.py), and each one-shot exemplar is about that long.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

ANSWER_PREFIX = "The answer is"
ANSWER_RE = re.compile(re.escape(ANSWER_PREFIX), re.IGNORECASE)  # the paper's answer line, wherever it is looked for

LEVELS: dict[int, str] = {
    1: "Give only the key idea, with no steps shown.",
    2: "In one or two short sentences, show only the main step and its calculation.",
    3: "Explain in a few sentences, writing out each step (calculations in full).",
    4: "Explain step by step in sentences; write out every step and say what each number or fact means.",
    5: "Explain in numbered steps: name each quantity or fact, state each step and why it is needed, and write out every calculation.",
    6: "Explain in detailed numbered steps: name each quantity or fact, justify every step, write out every calculation, then verify the result with a check.",
}

FORMATS: dict[str, str] = {
    "cot": "Write the reasoning as plain natural-language sentences.",
    "rar": "First rephrase the question in your own words, then solve it (Rephrase and Respond).",
    "bsm": "Break the problem into sub-questions; answer each sub-question in turn, then merge the answers.",
    "sym": "Write the reasoning symbolically: name quantities with variables and use math or logic symbols (=, ÷, ∴).",
}


@dataclass(frozen=True)
class Exemplar:
    """The one worked example a teacher sees, written once per granularity level."""

    question: str
    cots: dict[int, str]  # level -> reasoning, without the answer line
    answer: str
    answer_hint: str  # what follows "The answer is" in the instruction; "|" separates alternatives


_BANANAS = ("There are 87 oranges and 290 bananas in Philip's collection. If the bananas are organized "
            "into 2 groups and oranges are organized into 93 groups, how big is each group of bananas?")
_BANANA_COTS: dict[int, str] = {
    1: "The question asks only about the bananas, so the oranges and their groups can be ignored. "
       "Split the bananas evenly into the groups.",
    2: "Only the bananas matter here; the oranges and their groups are a distraction. The 290 bananas "
       "are shared equally among 2 groups, so each group gets 290 / 2 = 145 bananas.",
    3: "Philip has 290 bananas and 87 oranges, but the question asks only about the bananas. The "
       "bananas are organized into 2 equal groups. To find the size of one group, divide the total by "
       "the number of groups: 290 / 2 = 145.",
    4: "The question asks only about the bananas, so the 87 oranges and their 93 groups do not matter. "
       "Philip has 290 bananas, organized into 2 groups of the same size. Sharing a total equally means "
       "dividing it by the number of groups. So one group holds 290 / 2 = 145 bananas.",
    5: "1. Total number of bananas: 290.\n"
       "2. Number of banana groups: 2.\n"
       "3. The 87 oranges in 93 groups are not needed for this question.\n"
       "4. Equal groups mean dividing the total by the number of groups, because each group gets an equal share.\n"
       "5. Compute: 290 / 2 = 145.\n"
       "6. So each group of bananas has 145 bananas.",
    6: "1. Asked: the size of one group of bananas.\n"
       "2. Total bananas: 290. Number of banana groups: 2.\n"
       "3. The 87 oranges and their 93 groups are irrelevant.\n"
       "4. Splitting a total into equal groups is division, since every group gets the same share: 290 / 2.\n"
       "5. Compute: 290 / 2 = 145 bananas per group.\n"
       "6. Verify by multiplying back: 145 x 2 = 290, which matches the total.",
}

_PLATE = ("Q: After washing a dinner plate, where would you usually put it so it is ready for the next meal? "
          "Answer choices: A: cupboard, B: table, C: restaurant, D: dishwasher, E: sink")
_PLATE_COTS: dict[int, str] = {
    1: "Clean plates are stored where dishes wait until the next meal, and that is a cupboard, not the "
       "places for dirty dishes.",
    2: "A washed plate is clean, so it is stored until it is needed again. A dishwasher and a sink hold "
       "dirty dishes, a restaurant is not at home, and a table is for eating.",
    3: "The plate is clean and must be stored until the next meal. A sink and a dishwasher hold dirty "
       "dishes. A restaurant is not at home, and a table is where plates are used. A cupboard stores "
       "clean dishes.",
    4: "The question asks where a clean plate is kept until the next meal, so we need a storage place for "
       "clean dishes. A sink holds dirty dishes, and a dishwasher washes them. A restaurant is a business, "
       "not a home. A table is where plates are used. A cupboard keeps clean dishes.",
    5: "1. The plate has been washed, so it is clean and needs storing.\n"
       "2. Sink: dirty dishes wait there, so no.\n"
       "3. Dishwasher: it washes dirty dishes, so no.\n"
       "4. Restaurant: a business, not a home, so no.\n"
       "5. Table: plates are used there, not stored, so no.\n"
       "6. Cupboard: clean dishes are stored there, so yes.",
    6: "1. Asked: where a washed, clean plate is kept until the next meal.\n"
       "2. Sink: dirty dishes wait there, so no.\n"
       "3. Dishwasher: it washes dirty dishes, so no.\n"
       "4. Restaurant: not part of a home, so no.\n"
       "5. Table: plates are used there, not stored, so no.\n"
       "6. Cupboard: clean plates are stored there, so yes.\n"
       "7. Check: in a cupboard the plate stays clean and ready for the next meal.",
}

_PEAR = "Would a pear sink in water?"
_PEAR_COTS: dict[int, str] = {
    1: "An object sinks only if it is denser than water. A pear is less dense than water, because its "
       "flesh is full of tiny air pockets, so it floats.",
    2: "Whether something sinks depends on its density compared with that of water. A pear has a density "
       "of about 0.6 grams per cubic centimetre, while water has about 1.0. Since 0.6 is less than 1.0, a "
       "pear is lighter than the same volume of water, so it floats.",
    3: "An object sinks in water only if its density is greater than the density of water. Water has a "
       "density of about 1.0 grams per cubic centimetre. A pear is about 0.6 grams per cubic centimetre, "
       "because its flesh holds many small air pockets. Since 0.6 is less than 1.0, a pear floats instead "
       "of sinking.",
    4: "An object sinks only when its density is greater than the density of water. Water has a density "
       "of about 1.0 grams per cubic centimetre. A pear has a density of about 0.6 grams per cubic "
       "centimetre, because its flesh contains many small air pockets. Since 0.6 is less than 1.0, the "
       "pear is less dense than water, so it floats.",
    5: "1. The question asks whether a pear sinks when placed in water.\n"
       "2. Rule: an object sinks only when its density is greater than the density of water.\n"
       "3. The density of water is about 1.0 grams per cubic centimetre.\n"
       "4. A pear's flesh holds many small air pockets, which lowers its density.\n"
       "5. The density of a pear is about 0.6 grams per cubic centimetre.\n"
       "6. Compare the two: 0.6 is less than 1.0, so the pear is less dense than water.\n"
       "7. A less dense object floats, so a pear does not sink.",
    6: "1. Asked: whether a pear sinks when it is placed in water.\n"
       "2. Rule: an object sinks only when its density is greater than that of the water.\n"
       "3. The density of fresh water is about 1.0 grams per cubic centimetre.\n"
       "4. A pear's flesh holds many small air pockets, which lowers its density.\n"
       "5. Measured densities of pears are about 0.6 grams per cubic centimetre.\n"
       "6. Compare: 0.6 is less than 1.0, so the pear is less dense than water.\n"
       "7. A less dense object is pushed up by the water and floats.\n"
       "8. Check: apples, which also hold air, are known to float too.",
}

EXEMPLARS: dict[str, Exemplar] = {
    "number": Exemplar(_BANANAS, _BANANA_COTS, "145", "<number>"),
    "aqua": Exemplar(_BANANAS + " Answer Choices: (A) 87 (B) 145 (C) 93 (D) 290 (E) 580", _BANANA_COTS, "B", "<letter>"),
    "math": Exemplar(_BANANAS, _BANANA_COTS, "145", "<final answer>"),
    "choice": Exemplar(_PLATE, _PLATE_COTS, "A", "<letter>"),
    "boolean": Exemplar(_PEAR, _PEAR_COTS, "False", "True|False"),
}


def answer_line(answer: str) -> str:
    return f"{ANSWER_PREFIX} {answer}"


@cache
def _targets() -> dict[tuple[str, int], int]:
    text = resources.files("cotlib").joinpath("resources/level_targets.csv").read_text()
    return {(r["dataset"], int(r["level"])): int(r["target_words"]) for r in csv.DictReader(text.splitlines())}


def target_words(dataset: str, level: int) -> int:
    """The calibrated length of a level-`level` CoT for `dataset`, in words, answer line included."""
    try:
        return _targets()[(dataset, level)]
    except KeyError:
        raise ValueError(f"no calibrated level-{level} length for dataset {dataset!r}: teachers write CoTs for "
                         "datasets with training questions only (resources/level_targets.csv)") from None


def exemplar_for(dataset: str) -> Exemplar:
    """The one-shot exemplar of a dataset's kind (its spec names the kind)."""
    from . import data

    if dataset not in data.SPECS:
        raise ValueError(f"no teacher prompt for dataset {dataset!r}; known: {', '.join(data.DATASETS)}")
    return EXEMPLARS[data.SPECS[dataset].exemplar]


def exemplar_words(dataset: str, level: int) -> int:
    ex = exemplar_for(dataset)
    return len(f"{ex.cots[level]}\n{answer_line(ex.answer)}".split())


def teacher_messages(question: str, level: int, fmt: str, dataset: str = "svamp") -> list[dict[str, str]]:
    """A one-shot chat prompt asking for a CoT at one granularity level and format, with the answer
    line `dataset`'s grader reads."""
    if level not in LEVELS:
        raise ValueError(f"granularity level must be 1..6, got {level!r}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown CoT format {fmt!r}; choose one of {sorted(FORMATS)}")
    ex = exemplar_for(dataset)
    instruction = (
        f"Solve the problem. {LEVELS[level]} Use about {target_words(dataset, level)} words. {FORMATS[fmt]} "
        "End with the line " + " or ".join(f"'{ANSWER_PREFIX} {h}'" for h in ex.answer_hint.split("|")) + "."
    )
    return [
        {"role": "system", "content": instruction},
        {"role": "user", "content": ex.question},
        {"role": "assistant", "content": f"{ex.cots[level]}\n{answer_line(ex.answer)}"},
        {"role": "user", "content": question},
    ]


@dataclass(frozen=True)
class StudentTemplate:
    """How a student sees a question and where it must stop: identical in training and evaluation."""

    name: str
    prompt: str  # with one {question} slot
    stop: str | None  # end-of-turn text the student learns to emit; None: the tokenizer's EOS

    def render(self, question: str) -> str:
        return self.prompt.format(question=question)


# Prompt strings as in the paper's Evaluation/reasoning_eval/prompt_utils.py (llama3, gemma, alpaca);
# chatml is SmolLM2's own turn format, without its default system prompt.
TEMPLATES: dict[str, StudentTemplate] = {
    "alpaca": StudentTemplate(
        "alpaca",
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\n{question}\n\n### Response: \n",
        None,
    ),
    "gemma": StudentTemplate(
        "gemma", "<start_of_turn>user\n{question}<end_of_turn>\n<start_of_turn>model\n", "<end_of_turn>"
    ),
    "llama3": StudentTemplate(
        "llama3",
        "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n{question}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "<|eot_id|>",
    ),
    "chatml": StudentTemplate(
        "chatml", "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>"
    ),
}



def template_for(student: str) -> StudentTemplate:
    """A registered student's template, the same in training and evaluation."""
    from . import models

    return TEMPLATES[models.spec(student).template]

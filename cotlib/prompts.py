"""Granularity levels, CoT formats and student templates: the paper's factors, as data in one place.

The paper's exact teacher prompts were not released; these one-shot prompts follow what the
release shows (level 1 a one-sentence sketch, level 6 numbered steps with verification, every
CoT ending in "The answer is <ans>"). Calibration against the released lengths is issue #7.
"""

from __future__ import annotations

from dataclasses import dataclass

ANSWER_PREFIX = "The answer is"

LEVELS: dict[int, str] = {
    1: "Give only the key idea in one short sentence, with no calculation shown.",
    2: "Give a brief explanation in two short sentences, showing the main calculation.",
    3: "Explain in three or four sentences, writing out each calculation.",
    4: "Explain step by step in four to six sentences; write out every calculation and say what each number means.",
    5: "Explain in detailed numbered steps: name each quantity, state each operation and why it is needed, and write out every calculation.",
    6: "Explain in very detailed numbered steps: name each quantity, justify every operation, write out every calculation, then verify the result with a reverse check.",
}

# One worked example per level (the SVAMP banana problem), written in the style the release shows.
_EXAMPLE_QUESTION = (
    "There are 87 oranges and 290 bananas in Philip's collection. If the bananas are organized "
    "into 2 groups and oranges are organized into 93 groups, how big is each group of bananas?"
)
_EXAMPLE_COT: dict[int, str] = {
    1: "Divide the bananas evenly between the groups.",
    2: "The 290 bananas are split into 2 equal groups. 290 / 2 = 145.",
    3: "There are 290 bananas in total. They are divided evenly into 2 groups. "
    "So each group holds 290 / 2 = 145 bananas.",
    4: "The question asks only about bananas, so the oranges do not matter. There are 290 bananas. "
    "They are organized into 2 equal groups. To find the size of one group we divide: 290 / 2 = 145. "
    "Each group has 145 bananas.",
    5: "1. The total number of bananas is 290.\n2. The bananas are organized into 2 groups.\n"
    "3. The oranges (87 in 93 groups) are not needed for this question.\n"
    "4. Equal groups mean we divide the total by the number of groups: 290 / 2 = 145.\n"
    "5. So each group of bananas has 145 bananas.",
    6: "1. Identify the quantity asked for: the size of one group of bananas.\n"
    "2. Total bananas: 290. Number of banana groups: 2.\n"
    "3. The 87 oranges and their 93 groups are irrelevant to the question.\n"
    "4. Splitting a total into equal groups is division: 290 / 2.\n"
    "5. Compute: 290 / 2 = 145.\n"
    "6. Verify by multiplying back: 145 x 2 = 290, which matches the total.",
}
_EXAMPLE_ANSWER = "145"

FORMATS: dict[str, str] = {
    "cot": "Write the reasoning as plain natural-language sentences.",
    "rar": "First rephrase the question in your own words, then solve it (Rephrase and Respond).",
    "bsm": "Break the problem into sub-questions; answer each sub-question in turn, then merge the answers.",
    "sym": "Write the reasoning symbolically: name quantities with variables and use math or logic symbols (=, ÷, ∴).",
}


def answer_line(answer: str) -> str:
    return f"{ANSWER_PREFIX} {answer}"


def teacher_messages(question: str, level: int, fmt: str) -> list[dict[str, str]]:
    """A one-shot chat prompt asking for a CoT at one granularity level and format."""
    if level not in LEVELS:
        raise ValueError(f"granularity level must be 1..6, got {level!r}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown CoT format {fmt!r}; choose one of {sorted(FORMATS)}")
    instruction = (
        f"Solve the problem. {LEVELS[level]} {FORMATS[fmt]} "
        f"End with the line '{ANSWER_PREFIX} <answer>'."
    )
    shot = f"{_EXAMPLE_COT[level]}\n{answer_line(_EXAMPLE_ANSWER)}"
    return [
        {"role": "system", "content": instruction},
        {"role": "user", "content": _EXAMPLE_QUESTION},
        {"role": "assistant", "content": shot},
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


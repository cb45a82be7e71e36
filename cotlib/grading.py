"""Answer extraction and equivalence per answer type.

Extraction prefers the text after the last "The answer is" (the paper's answer line) and falls
back to the last candidate in the output. `strict` counts an answer only when the answer line
was followed; `flexible` also accepts the fallback. MATH expressions go through math-verify.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from fractions import Fraction

_TRIGGER = re.compile(r"the answer is[:\s]*", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?|-?\.\d+")
_LETTER_AFTER = re.compile(r"^\W*\(?([A-J])\)?(?![A-Za-z])")
_LETTER_ANY = re.compile(r"\(([A-J])\)|\b([A-J])\)|(?:answer|option|choice)\s*(?:is\s*)?:?\s*\(?([A-J])\b", re.IGNORECASE)
_BOOL = re.compile(r"\b(true|false|yes|no)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Grade:
    extracted: str | None  # what the flexible pass found
    correct: bool  # flexible: answer line, else last candidate
    strict_correct: bool  # only when the answer line was followed
    answer_found: bool
    format_followed: bool  # an answer line with a parsable answer after it

    def as_dict(self) -> dict:
        return asdict(self)


def _tail_after_trigger(text: str) -> str | None:
    matches = list(_TRIGGER.finditer(text))
    return text[matches[-1].end():] if matches else None


def _to_number(s: str) -> float | None:
    s = s.replace(",", "").replace(" ", "")
    try:
        if "/" in s:
            return float(Fraction(s))
        return float(s)
    except (ValueError, ZeroDivisionError):
        return None


def numbers_equal(a: float, b: float, rel: float = 1e-4) -> bool:
    return abs(a - b) <= rel * max(1.0, abs(b))


def _first_number(text: str) -> str | None:
    m = _NUMBER.search(text.replace("$", ""))
    return m.group(0) if m else None


def _last_number(text: str) -> str | None:
    found = _NUMBER.findall(text.replace("$", ""))
    return found[-1] if found else None


def _grade_number(output: str, gold: str) -> tuple[str | None, str | None]:
    tail = _tail_after_trigger(output)
    strict = _first_number(tail) if tail is not None else None
    return strict, strict if strict is not None else _last_number(output)


def _choice_from(text: str, choices: list[str] | None, anchored: bool) -> str | None:
    m = _LETTER_AFTER.match(text) if anchored else None
    if m:
        return m.group(1).upper()
    if choices:  # the model wrote the choice's text instead of its letter
        low = text.lower()
        hits = [(low.rfind(c.lower()), i) for i, c in enumerate(choices) if c and c.lower() in low]
        if hits:
            return "ABCDEFGHIJ"[max(hits)[1]]
    found = _LETTER_ANY.findall(text)
    if found:
        return next(g for g in found[-1] if g).upper()
    return None


def extract_choice(text: str, choices: list[str] | None = None) -> str | None:
    """A choice letter from free text: a leading letter, 'Option C', '(C)', or the choice's own text."""
    text = re.sub(r"^\W*(?:option|answer)\s*:?\s*", "", text.strip(), flags=re.IGNORECASE)
    return _choice_from(text, choices, anchored=True)


def _grade_choice(output: str, choices: list[str] | None) -> tuple[str | None, str | None]:
    tail = _tail_after_trigger(output)
    strict = _choice_from(tail, choices, anchored=True) if tail is not None else None
    return strict, strict if strict is not None else _choice_from(output, choices, anchored=False)


def _norm_bool(word: str) -> str:
    return "True" if word.lower() in ("true", "yes") else "False"


def _grade_boolean(output: str) -> tuple[str | None, str | None]:
    tail = _tail_after_trigger(output)
    strict = None
    if tail is not None and (m := _BOOL.search(tail[:40])):
        strict = _norm_bool(m.group(1))
    if strict is not None:
        return strict, strict
    found = _BOOL.findall(output)
    return None, _norm_bool(found[-1]) if found else None


def _math_equal(pred: str, gold: str) -> bool:
    from math_verify import parse, verify

    g = parse(f"${gold}$") or parse(gold)
    p = parse(pred if "\\boxed" in pred else f"${pred}$") or parse(pred)
    return bool(g and p and verify(g, p))


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (or \\fbox{...}), braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None


def _grade_math(output: str) -> tuple[str | None, str | None]:
    tail = _tail_after_trigger(output)
    if tail and tail.strip():
        strict = last_boxed(tail) or tail.strip().splitlines()[0].strip().rstrip(".").strip()
        return strict, strict
    return None, last_boxed(output) or _last_number(output)


def grade(output: str, gold: str, answer_type: str, choices: list[str] | None = None) -> Grade:
    """Grade one model output against the gold answer of one example."""
    if answer_type == "number":
        strict, flex = _grade_number(output, gold)
        g = _to_number(gold)
        same = lambda x: x is not None and g is not None and (v := _to_number(x)) is not None and numbers_equal(v, g)  # noqa: E731
    elif answer_type == "choice":
        strict, flex = _grade_choice(output, choices)
        same = lambda x: x is not None and x == gold.strip().upper()  # noqa: E731
    elif answer_type == "boolean":
        strict, flex = _grade_boolean(output)
        same = lambda x: x is not None and x == _norm_bool(gold.strip())  # noqa: E731
    elif answer_type == "math":
        strict, flex = _grade_math(output)
        same = lambda x: x is not None and _math_equal(x, gold)  # noqa: E731
    else:
        raise ValueError(f"unknown answer type {answer_type!r}")
    return Grade(
        extracted=flex,
        correct=bool(same(flex)),
        strict_correct=bool(same(strict)),
        answer_found=flex is not None,
        format_followed=strict is not None,
    )

"""Answer extraction and equivalence per answer type.

Where the answer is
    An *answer line* is the paper's "The answer is X", or the Minerva form "Final Answer: The final
    answer is X. I hope it is correct." (also a bare "The final answer is X" or "Final Answer: ...").
    For MATH a ``\\boxed{X}`` counts as an answer line too. The answer is the clause that follows
    the trigger: a math span that opens it (``$...$``, ``\\(...\\)``, ``\\[...\\]``, ``$$...$$``) up
    to its closing delimiter, else the text up to the end of its sentence or line, braces
    balanced (so a ``\\boxed{}`` or a matrix may span lines). ``The answer is $\\frac12$. I
    apologize ...`` reads ``\\frac12``; ``The answer is 3 + 4 = 7`` reads 7.

    When several answer lines are given, the last one within the first response counts (see
    RUNON_POLICY). For MATH, a ``\\boxed{}`` written after the last answer line wins over it.

strict and flexible
    ``strict_correct`` counts only an answer taken from an answer line. ``correct`` (flexible) also
    takes a fallback when there is none: for numbers and MATH, math-verify's own extraction over
    the whole response (boxed first, then "final answer"/"answer" anchors, then the last LaTeX
    expression, relation, tuple, matrix or number, never digits inside a word); for choices a
    boxed letter, "Option C"/"answer: C", a letter that opens the output (``A. Because ...``),
    ``(C)`` or the choice's own text; for booleans a leading Yes/No, else the last yes/no/true/false.

Equivalence
    Numbers: relative tolerance 1e-4 (commas as thousands separators, ``2,74`` as a decimal
    comma, ``$``, ``%``, units, fractions, mixed numbers). Choices: the same letter. Booleans:
    yes/True, no/False. MATH: math-verify ``parse`` + ``verify``. Where the gold has several
    parts (``k=45, n=2``; ``1, -2``) and the response boxes them one by one, the set of the last
    boxed answers is compared, as math-verify does for adjacent boxes.
"""

from __future__ import annotations

import re
import threading
from dataclasses import asdict, dataclass
from fractions import Fraction
from functools import lru_cache

# --- run-on policy -------------------------------------------------------------------------------
#
# RUNON_POLICY decides which answer line counts when a response has several.
#
#   "first-response" (default): the response ends where, after its first answer, a new question or
#       turn begins ("Q:", "Question:", "Problem:", "### Instruction:", a chat-template turn marker
#       or end-of-turn token). Within that first response the LAST answer counts, so a student who
#       answers and then runs on into a made-up next question ("... The answer is 8. Q: ... The
#       answer is 35.") is graded on 8, while one that corrects itself inside its answer ("The
#       answer is 8. Wait, ... The answer is 9.") is graded on 9.
#   "first": the first answer line of the whole output.
#   "last":  the last answer line of the whole output (cotlib's rule before issue 16).
#
# Evidence for the default: lm-evaluation-harness's gsm8k-cot stops generation at "Q:" and its
# strict-match filter takes the first "The answer is" match; MAmmoTH's and the paper's own
# `answer_clean` (EIT-NLP/Distilling-CoT-Reasoning, Evaluation/reasoning_eval/utils.py) keep only
# the first "\n\n" chunk when the trigger occurs more than once, and the paper's run_reasoning.py
# stops at "Problem:"/"USER:"/"### Instruction:" and takes the first "The answer is" match: all of
# them grade a run-on on its first answer. Math-Verify takes the last answer and its tests expect
# that for self-corrections inside one response (test_all.py, "Issue #5"), while its maintainers
# mark the run-on into a new "<|im_start|>user" turn as a known miss. The first-response rule agrees
# with both. `benchmarks/grader_runon.py` measures first vs last vs this rule on real student
# records so the choice can be confirmed.
RUNON_POLICY = "first-response"
RUNON_POLICIES = ("first-response", "first", "last")

# Answer lines. Hand-written (math-verify has no notion of the paper's answer line, and strict
# grading needs to know whether one was followed); what is inside the line is read by math-verify
# for numbers' LaTeX and for MATH.
_TRIGGER = re.compile(
    r"(?:the\s+|final\s+)(?:final\s+)?answer\s+is[\s:]*"  # paper's line; Minerva's "The final answer is"
    r"|final\s+answer\s*(?:\*\*)?\s*:(?:\*\*)?[ \t]*"  # "Final Answer: The largest n is 34."
    r"|\*\*final\s+answer\*\*[\s:]*",  # "**Final Answer**\n..."
    re.IGNORECASE,
)
# A new question or turn after an answer: the student has run on (see RUNON_POLICY).
_NEW_TURN = re.compile(
    r"<\|im_start\|>|<\|start_header_id\|>|<start_of_turn>|\[INST\]"
    r"|(?:^|(?<=[.!?])|(?<=[.!?] ))[ \t]*(?:Q|Question|Problem|Human|User|USER|### Instruction)[ \t]*:",
    re.MULTILINE,
)
# End-of-turn tokens left in the text: nothing after them is the response.
_END_OF_TURN = re.compile(r"<\|im_end\|>|<\|eot_id\|>|<end_of_turn>|<\|endoftext\|>|</s>")
_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOX_SPACE = re.compile(r"\\boxed +([^\s${}]+)")
_GSM8K_HASHES = re.compile(r"####\s*")

# Numbers, modelled on math-verify's number pattern: never digits inside a word (``AZYUK2A``),
# commas as thousands separators only in groups of three, else a decimal comma (``2,74``),
# optional fraction or mixed number. Hand-written because math-verify's ExprExtractionConfig
# always returns the rightmost candidate, while the answer on an answer line is its first number
# (as in the paper's, lm-eval's and MAmmoTH's extraction).
_NUM_BODY = r"-?(?:[1-9]\d{0,2}(?:,\d{3})+(?![,\d])|[1-9]\d{0,2}(?: \d{3})+(?![\d/])|\d+(?:,\d+)(?![,\d])|\d+|(?=\.\d))(?:\.\d+)?"
_NUMBER = re.compile(
    rf"(?<![\w.\\])(?<!\d[.,])(?P<whole>{_NUM_BODY})(?:(?P<mixed>[ \t]+\d+[ \t]*/[ \t]*\d+)|(?P<frac>[ \t]*/[ \t]*\d+(?:\.\d+)?))?"
)
_ARITH = re.compile(r"^[\s\d.,+\-*/×x÷^()$]*\d[\s\d.,+\-*/×x÷^()$]*$")
_NUMBER_WITH_WORDS = re.compile(r"^\s*\$?\s*(-?[\d.,]+)\s+[A-Za-z][A-Za-z .'-]*$")

_LETTER_AFTER = re.compile(r"^\W*\(?([A-J])\)?(?![A-Za-z])")
_LETTER_ANY = re.compile(r"\(([A-J])\)|\b([A-J])\)|(?:answer|option|choice)\s*(?:is\s*)?:?\s*\(?([A-J])\b", re.IGNORECASE)
_LETTER_EXPLICIT = re.compile(r"\b(?:answer|option|choice)\s*(?:is\s*)?:?\s*\(?([A-J])\b(?![\w'])", re.IGNORECASE)
_LETTER_PAREN = re.compile(r"\(([A-J])\)|(?<![\w(])([A-J])\)")
# A letter that opens the output: "A. Because ...", "(B) bank", "**C**", "D" alone on its line.
_LETTER_LEADING = re.compile(r"^\s*(?:\*\*)?\s*(?:\(([A-J])\)|([A-J])(?:\*\*)?(?:[.:)]|(?=[ \t]*(?:\n|$))))")
_BOOL = re.compile(r"\b(true|false|yes|no)\b", re.IGNORECASE)
_BOOL_LEADING = re.compile(r"^\W*(true|false|yes|no)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Grade:
    extracted: str | None  # what the flexible pass found
    correct: bool  # flexible: answer line, else a fallback candidate
    strict_correct: bool  # only when an answer line was followed
    answer_found: bool
    format_followed: bool  # an answer line with a parsable answer after it

    def as_dict(self) -> dict:
        return asdict(self)


# --- where the answer is -------------------------------------------------------------------------

def _find_closer(text: str, i: int, closer: str, same_line: bool) -> int | None:
    """Index of the first unescaped `closer` from i (None if absent, or past a newline when same_line)."""
    while i < len(text):
        if text.startswith(closer, i) and (i == 0 or text[i - 1] != "\\"):
            return i
        if same_line and text[i] == "\n":
            return None
        i += 1
    return None


def _clause(text: str, start: int) -> tuple[int, int]:
    """The answer that starts at `start`: a leading math span, else up to the end of its sentence or line."""
    n = len(text)
    i = start
    while i < n and text[i] in " \t\r\n*:":
        i += 1
    begin = i
    for opener, closer, same_line in (("$$", "$$", False), ("\\[", "\\]", False), ("\\(", "\\)", True), ("$", "$", True)):
        if text.startswith(opener, i):
            j = _find_closer(text, i + len(opener), closer, same_line)
            if j is not None and j > i + len(opener):
                end = j + len(closer)
                if m := re.match(r"[ \t]*(?:\\?%|percent\b)", text[end:]):  # "$28$ %"
                    end += m.end()
                return begin, end
            break  # a "$" without its closer on the line is a currency sign
    depth = 0
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n:
            if text.startswith("\\[", i) and (j := _find_closer(text, i + 2, "\\]", False)) is not None:
                i = j + 2
                continue
            i += 2
            continue
        if c == "$":
            if text.startswith("$$", i) and (j := _find_closer(text, i + 2, "$$", False)) is not None:
                i = j + 2
                continue
            if (j := _find_closer(text, i + 1, "$", True)) is not None:
                i = j + 1
                continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth = max(0, depth - 1)
        elif depth == 0 and (c == "\n" or (c in ".!?" and (i + 1 == n or text[i + 1].isspace()))):
            break
        i += 1
    return begin, i


def _clean_clause(s: str) -> str:
    return s.strip().strip("*").strip().rstrip(".,;:").strip()


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """Every outermost \\boxed{...} / \\fbox{...} (braces balanced) and \\boxed X: (start, end, content)."""
    out: list[tuple[int, int, str]] = []
    for m in _BOX.finditer(text):
        if out and m.start() < out[-1][1]:
            continue  # nested inside the previous box
        depth, j = 1, m.end()
        while j < len(text) and depth:
            if text[j] == "\\":
                j += 2
                continue
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        if depth == 0:
            out.append((m.start(), j, text[m.end():j - 1]))
    for m in _BOX_SPACE.finditer(text):
        if not any(s <= m.start() < e for s, e, _ in out):
            out.append((m.start(), m.end(), m.group(1)))
    return sorted(out)


def _first_answer_end(text: str, answer_type: str) -> int | None:
    ends = []
    if m := _TRIGGER.search(text):
        ends.append(_clause(text, m.end())[1])
    if answer_type == "math" and (b := _boxes(text)):
        ends.append(b[0][1])
    if answer_type == "number" and (m := _GSM8K_HASHES.search(text)):
        ends.append(m.end())
    return min(ends) if ends else None


def _response(text: str, answer_type: str, policy: str) -> str:
    """The part of the output that is the student's response to this question (RUNON_POLICY)."""
    if policy not in RUNON_POLICIES:
        raise ValueError(f"unknown run-on policy {policy!r}; one of {RUNON_POLICIES}")
    text = text.replace("\r\n", "\n")
    if policy != "first-response":
        return text
    lead = len(text) - len(text.lstrip())
    if (m := _END_OF_TURN.search(text, lead + 1)) is not None:
        text = text[:m.start()]
    end = _first_answer_end(text, answer_type)
    if end is not None and (m := _NEW_TURN.search(text, end)) is not None:
        text = text[:m.start()]
    return text


def _answer_line(text: str, policy: str) -> tuple[int, int] | None:
    """Span of the answer on the answer line that counts, or None when there is no answer line."""
    hits = list(_TRIGGER.finditer(text))
    if not hits:
        return None
    m = hits[0] if policy == "first" else hits[-1]
    return _clause(text, m.end())


# --- numbers -------------------------------------------------------------------------------------

def _to_number(s: str) -> float | None:
    s = s.strip().replace("−", "-")
    m = _NUMBER.fullmatch(s) if s else None
    if m is None:
        s2 = s.replace(",", "").replace(" ", "")
        try:
            return float(Fraction(s2)) if "/" in s2 else float(s2)
        except (ValueError, ZeroDivisionError):
            return None
    return _number_value(m)


def _number_value(m: re.Match) -> float | None:
    whole = m.group("whole")
    if re.fullmatch(r"-?[1-9]\d{0,2}(?:[, ]\d{3})+(?:\.\d+)?", whole):
        whole = whole.replace(",", "").replace(" ", "")
    else:
        whole = whole.replace(",", ".")
    try:
        value = Fraction(whole)
        if m.group("mixed"):
            num, den = (int(x) for x in m.group("mixed").split("/"))
            value = value + (Fraction(num, den) if value >= 0 else -Fraction(num, den))
        elif m.group("frac"):
            value = value / Fraction(m.group("frac").replace("/", "").strip())
        return float(value)
    except (ValueError, ZeroDivisionError):
        return None


def numbers_equal(a: float, b: float, rel: float = 1e-4) -> bool:
    return abs(a - b) <= rel * max(1.0, abs(b))


def _strip_percent(s: str) -> str:
    # The number type's golds are plain numbers; "25%" answers "what percentage" with 25.
    return re.sub(r"\s*(?:\\%|%|\bpercent(?:age)?\b)", "", s)


def _first_number(s: str) -> tuple[str, float] | None:
    for m in _NUMBER.finditer(s.replace("$", " ").replace("−", "-")):
        v = _number_value(m)
        if v is not None:
            return m.group(0).strip(), v
    return None


def _number_from_clause(clause: str) -> tuple[str, float] | None:
    """The number an answer clause states: its first number, or the result of a leading `a + b = c`."""
    clause = _strip_percent(clause)
    if boxes := _boxes(clause):
        clause = boxes[-1][2]
    if "\\" in clause:  # LaTeX on the line: \frac{7}{2}, 10,\!000, \$12
        plain = clause.replace("\\!", "").replace("{,}", ",").replace("\\$", "$").replace("\\,", "")
        if "\\" in plain:
            v = _math_number(plain)
            if v is not None:
                return v
        clause = plain
    parts = clause.split("=")
    if len(parts) > 1 and _ARITH.match(parts[0]):  # "3 + 4 = 7" states 7 (issue 16, group 9)
        k = 1
        while k < len(parts) - 1 and _ARITH.match(parts[k]):
            k += 1
        clause = parts[k]
    return _first_number(clause)


def _first_numeric(values: list) -> tuple[str, float] | None:
    """The first of math-verify's parsed values that is a number (an equation counts by its right side)."""
    import sympy

    for v in values:
        if isinstance(v, sympy.Eq):
            v = v.rhs
        if isinstance(v, sympy.Basic) and v.is_number:
            try:
                return str(v), float(v)
            except (TypeError, ValueError):
                continue
    return None


def _math_number(latex: str) -> tuple[str, float] | None:
    return _first_numeric(_mv_parse(latex if _has_math_delims(latex) else f"${latex}$"))


def _number_fallback(text: str) -> tuple[str, float] | None:
    """Math-verify's extraction over the whole response: boxed, anchored answer, else the last number."""
    text = _strip_percent(text)
    if hashes := list(_GSM8K_HASHES.finditer(text)):  # GSM8K's "#### 18"
        if found := _first_number(text[hashes[-1].end():][:40]):
            return found
    return _first_numeric(_mv_parse(_mv_prepare(text)))


def _grade_number(text: str, policy: str) -> tuple[tuple[str, float] | None, tuple[str, float] | None]:
    span = _answer_line(text, policy)
    strict = _number_from_clause(_clean_clause(text[span[0]:span[1]])) if span else None
    return strict, strict if strict is not None else _number_fallback(text)


# --- choices -------------------------------------------------------------------------------------

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


def _choice_in_clause(clause: str, choices: list[str] | None) -> str | None:
    if boxes := _boxes(clause):
        clause = re.sub(r"\\text\{([^}]*)\}", r"\1", boxes[-1][2])
    if choices:  # the clause is exactly one choice's text
        low = clause.strip().rstrip(".").strip().lower()
        exact = [i for i, c in enumerate(choices) if c and c.strip().lower() == low]
        if len(exact) == 1:
            return "ABCDEFGHIJ"[exact[0]]
    return extract_choice(clause, choices)


def _choice_fallback(text: str, choices: list[str] | None) -> str | None:
    if boxes := _boxes(text):
        if found := _choice_in_clause(boxes[-1][2], choices):
            return found
    if found := _LETTER_EXPLICIT.findall(text):
        return found[-1].upper()
    if m := _LETTER_LEADING.match(text):  # "A. Because ..." (issue 16, group 7)
        return (m.group(1) or m.group(2)).upper()
    cands = [(m.start(), (m.group(1) or m.group(2)).upper()) for m in _LETTER_PAREN.finditer(text)]
    if choices:
        low = text.lower()
        cands += [(low.rfind(c.lower()), "ABCDEFGHIJ"[i]) for i, c in enumerate(choices) if c and c.lower() in low]
    return max(cands)[1] if cands else None


def _grade_choice(text: str, choices: list[str] | None, policy: str) -> tuple[str | None, str | None]:
    span = _answer_line(text, policy)
    strict = None
    if span:
        # The whole line after the trigger, as before: AQuA lines such as "1324 (or) 2648 ANSWER:B"
        # name the letter after the first sentence; a following sentence rarely names another one.
        line_end = text.find("\n", span[0])
        line = text[span[0]:line_end if line_end >= 0 else len(text)]
        clause = _clean_clause(text[span[0]:span[1]])
        strict = _choice_in_clause(clause, choices) if clause else None
        if strict is None and line.strip():
            strict = _choice_in_clause(line, choices)
    return strict, strict if strict is not None else _choice_fallback(text, choices)


# --- booleans ------------------------------------------------------------------------------------

def _norm_bool(word: str) -> str:
    return "True" if word.lower() in ("true", "yes") else "False"


def _grade_boolean(text: str, policy: str) -> tuple[str | None, str | None]:
    span = _answer_line(text, policy)
    strict = None
    if span and (m := _BOOL.search(text[span[0]:span[0] + 40])):
        strict = _norm_bool(m.group(1))
    if strict is not None:
        return strict, strict
    if (boxes := _boxes(text)) and (m := _BOOL.search(boxes[-1][2])):
        return None, _norm_bool(m.group(1))
    if m := _BOOL_LEADING.match(text):  # "No. Hamsters are prey animals ..."
        return None, _norm_bool(m.group(1))
    found = _BOOL.findall(text)
    return None, _norm_bool(found[-1]) if found else None


# --- MATH ----------------------------------------------------------------------------------------

def _timeout() -> int | None:
    # math-verify's timeouts use signal.alarm, which only works in the main thread.
    return 5 if threading.current_thread() is threading.main_thread() else None


def _mv_configs():
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())


def _mv_parse(text: str) -> list:
    from math_verify import parse

    return parse(text, _mv_configs(), parsing_timeout=_timeout())


def _has_math_delims(s: str) -> bool:
    return "$" in s.replace("\\$", "") or "\\(" in s or "\\[" in s or "\\boxed" in s or "\\fbox" in s


# Sentence punctuation written inside the math delimiters ("$\frac{1}{3}.$"), which the installed
# math-verify reads as an unparsable string; an ellipsis stays.
_TRAILING_PUNCT = re.compile(r"(?<![.\\])[.,;]\s*(\$\$|\$|\\\)|\\\])")
# Small repairs before math-verify reads a string (each seen to defeat math-verify 0.9 /
# latex2sympy2_extended 1.11): "\mathrm{e}" is dropped as if it were a unit; a JSON-doubled
# backslash before a command ("\\dfrac") is read as a line break; "\$10" is a currency sign.
_MV_REPAIRS = (
    (re.compile(r"\\mathrm\{([A-Za-z])\}"), r"\1"),
    (re.compile(r"\\\\(?=[A-Za-z])"), r"\\"),
    (re.compile(r"\\\$"), ""),
)


def _fix_trailing_punct(s: str) -> str:
    return _TRAILING_PUNCT.sub(r"\1", s)


def _mv_prepare(s: str) -> str:
    for pattern, repl in _MV_REPAIRS:
        s = pattern.sub(repl, s)
    return _fix_trailing_punct(s)


# Words that may stand in a bare answer without making it prose.
_MATH_WORDS = {"and", "or", "sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "mod", "pmod", "pi", "inf"}
_MIXED = re.compile(r"^\s*(-?)(\d+)\s+(?:(\d+)\s*/\s*(\d+)|\\[dt]?frac\{(\d+)\}\{(\d+)\})\s*$")


def _is_prose(s: str) -> bool:
    """Whether a snippet without math delimiters reads as words rather than as a bare expression."""
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox|textnormal|operatorname|begin|end)\s*\{[^{}]*\}", " ", s)
    words = re.findall(r"(?<![\\A-Za-z])[A-Za-z]{3,}", s)
    return any(w.lower() not in _MATH_WORDS for w in words)


@dataclass(frozen=True)
class _MathAnswer:
    latex: str  # what math-verify parses
    shown: str  # what Grade.extracted reports
    boxes: tuple[str, ...]  # every box of the response, for golds with several parts


def _math_text(snippet: str) -> str:
    """A snippet of the answer as math-verify should read it."""
    snippet = _mv_prepare(snippet.strip())
    if _has_math_delims(snippet):
        return snippet
    if m := _NUMBER_WITH_WORDS.match(snippet):  # "5 dollars", "12 ways"
        return f"${m.group(1).rstrip('.,')}$"
    if m := _MIXED.match(snippet):  # "4 4/9" is 40/9, not 44/9 (math-verify reads it so from 0.10 on)
        sign, whole, num, den = m.group(1), m.group(2), m.group(3) or m.group(5), m.group(4) or m.group(6)
        return f"${sign}({whole} + \\frac{{{num}}}{{{den}}})$"
    if _is_prose(snippet):
        # An answer in words ("Jane started growing Sphere 3 hours ago"): math-verify's own anchored
        # extraction reads the expression after "answer:".
        return "Final answer: " + snippet
    # Inline math cannot span lines in math-verify; the answer may (issue 16, group 4).
    return "$" + " ".join(snippet.split()) + "$"


def _grade_math(text: str, policy: str) -> tuple[_MathAnswer | None, _MathAnswer | None]:
    boxes = _boxes(text)
    contents = tuple(b[2] for b in boxes)
    span = _answer_line(text, policy)
    later = [b for b in boxes if span is None or b[0] >= span[1]]
    inside = [b for b in boxes if span is not None and span[0] <= b[0] < span[1]]
    strict = None
    if policy == "first" and boxes and (span is None or boxes[0][1] <= span[0]):
        later, inside = [], [boxes[0]]  # the first answer of the output is a box
    considered = later or inside
    if considered:
        # The boxes are handed to math-verify together, so that its own multiple-answer handling
        # decides whether the last boxes form one answer ("\\boxed{-2} and \\boxed{1}") or the last
        # one stands alone.
        first = considered[max(0, len(considered) - 8)]
        strict = _MathAnswer(text[first[0]:considered[-1][1]], "", contents)
    if strict is None and span is not None:
        clause = _clean_clause(text[span[0]:span[1]])
        if clause:
            strict = _MathAnswer(_math_text(clause), clause, contents)
    if strict is not None:
        return strict, strict
    if not text.strip():
        return None, None
    if "\n" not in text.strip() and len(text) < 200 and not _is_prose(text) and not _has_math_delims(text):
        return None, _MathAnswer(_math_text(text), text.strip(), contents)  # a bare answer: "(x-2)(x+2)"
    return None, _MathAnswer(_mv_prepare(text), "", contents)


@lru_cache(maxsize=8192)
def _parse_gold(gold: str) -> tuple:
    gold = gold.strip()
    if not gold:
        return ()
    if _has_math_delims(gold):
        return tuple(_mv_parse(_mv_prepare(gold)))
    return tuple(_mv_parse(_math_text(gold)) or _mv_parse(gold))


def _gold_parts(parsed: tuple) -> int:
    import sympy

    return len(parsed[0].args) if parsed and isinstance(parsed[0], sympy.FiniteSet) else 1


def _plain(s: str) -> str:
    """A string as hendrycks' is_equiv would compare it, for answers in words."""
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox|textnormal)\s*\{([^{}]*)\}", r"\1", s)
    return re.sub(r"[\s$.]", "", s).lower()


def _top_level_parts(s: str) -> list[str]:
    """A comma list split at its top-level commas ("10, 4, -2"); one part for tuples, sets, intervals."""
    parts, depth, cur = [], 0, ""
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            cur += s[i:i + 2]
            i += 2
            continue
        depth += 1 if c in "([{" else -1 if c in ")]}" else 0
        if c == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    return [x.strip() for x in parts + [cur] if x.strip()]


def _bare_list(s: str) -> list[str] | None:
    s = s.strip().strip("$").strip()
    if m := re.fullmatch(r"\\boxed\{(.*)\}", s, re.DOTALL):
        s = m.group(1)
    if re.fullmatch(r"-?\d{1,3}(?:,(?:\\!)?\s?\d{3})+(?:\.\d+)?", s):  # 14,\!641 is one number
        return None
    parts = _top_level_parts(s)
    return parts if len(parts) >= 2 else None


def _same_order(gold: str, pred_latex: str, pred_parsed: list) -> bool:
    """A gold written as a bare list ("10, 4, -2") is ordered when the answer is one written list too.

    MATH's own grader (hendrycks is_equiv) compares such lists in order, and some questions ask for
    one ("List the scores from the greatest to the least, separated by commas"); math-verify compares
    them as sets. An answer boxed part by part ("\\boxed{-2} and \\boxed{1}") stays a set, as in
    math-verify's tests.
    """
    from math_verify import verify

    gparts = _bare_list(gold)
    if gparts is None or len(_boxes(pred_latex)) > 1:
        return True
    shown = next((x for x in reversed(pred_parsed) if isinstance(x, str)), None)
    pparts = _bare_list(shown) if shown else None
    if pparts is None or len(pparts) != len(gparts):
        return True
    return all(verify(list(_parse_gold(a)), _mv_parse(_math_text(b)), timeout_seconds=_timeout())
               for a, b in zip(gparts, pparts))


def _math_same(ans: _MathAnswer | None, gold: str) -> tuple[bool, str | None]:
    """Whether the answer equals the gold, and what was read."""
    from math_verify import verify

    if ans is None:
        return False, None
    if ans.shown and _plain(ans.shown) == _plain(gold) != "":  # "Monday" for "\\text{Monday}"
        return True, ans.shown
    g = _parse_gold(gold)
    p = _mv_parse(ans.latex)
    shown = ans.shown or (str(p[-1]) if p and isinstance(p[-1], str) else (str(p[0]) if p else None))
    if not g or not p:
        return False, shown or None
    if verify(list(g), p, timeout_seconds=_timeout()):
        return _same_order(gold, ans.latex, p), shown
    k = _gold_parts(g)
    if k >= 2 and len(ans.boxes) >= k:  # "\boxed{k=45} ... \boxed{n=2}" against "k=45, n=2"
        joined = "\\boxed{" + ", ".join(" ".join(b.split("\n")) for b in ans.boxes[-k:]) + "}"
        if verify(list(g), _mv_parse(joined), timeout_seconds=_timeout()):
            return True, ", ".join(b.strip() for b in ans.boxes[-k:])
    return False, shown


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


# --- grade ---------------------------------------------------------------------------------------

def grade(output: str, gold: str, answer_type: str, choices: list[str] | None = None, *,
          policy: str = RUNON_POLICY) -> Grade:
    """Grade one model output against the gold answer of one example.

    `policy` picks the answer line when there are several (RUNON_POLICY, documented above); only
    benchmarks/grader_runon.py passes another one.
    """
    text = _response(output or "", answer_type, policy)
    if answer_type == "number":
        strict_n, flex_n = _grade_number(text, policy)
        g = _to_number(gold)
        same_n = lambda x: x is not None and g is not None and numbers_equal(x[1], g)  # noqa: E731
        return _result(flex_n[0] if flex_n else None, same_n(flex_n), same_n(strict_n),
                       flex_n is not None, strict_n is not None)
    if answer_type == "choice":
        strict, flex = _grade_choice(text, choices, policy)
        same = lambda x: x is not None and x == gold.strip().upper()  # noqa: E731
    elif answer_type == "boolean":
        strict, flex = _grade_boolean(text, policy)
        same = lambda x: x is not None and x == _norm_bool(gold.strip())  # noqa: E731
    elif answer_type == "math":
        strict_m, flex_m = _grade_math(text, policy)
        ok_flex, shown = _math_same(flex_m, gold)
        ok_strict = ok_flex if strict_m is flex_m else _math_same(strict_m, gold)[0]
        return _result(shown, ok_flex, ok_strict and strict_m is not None,
                       shown is not None, strict_m is not None)
    else:
        raise ValueError(f"unknown answer type {answer_type!r}")
    return _result(flex, same(flex), same(strict), flex is not None, strict is not None)


def _result(extracted, correct, strict_correct, found, followed) -> Grade:
    return Grade(extracted=extracted, correct=bool(correct), strict_correct=bool(strict_correct),
                 answer_found=bool(found), format_followed=bool(followed))

from __future__ import annotations

import pytest

from cotlib.grading import grade


@pytest.mark.parametrize("output,gold,strict,flexible", [
    ("3 + 4 = 7. The answer is 7", "7", True, True),
    ("The answer is 1,250.", "1250", True, True),
    ("The answer is $12.50 per hour", "12.5", True, True),
    ("The answer is 145.0", "145", True, True),
    ("half of it: The answer is 3/4", "0.75", True, True),
    ("so we get 7 apples in total", "7", False, True),  # no answer line: flexible only
    ("The answer is 8. Check: 3 + 4 = 7", "7", False, False),  # the answer line wins over later numbers
    ("The answer is -5", "-5", True, True),
])
def test_numbers(output, gold, strict, flexible):
    g = grade(output, gold, "number")
    assert (g.strict_correct, g.correct) == (strict, flexible)


@pytest.mark.parametrize("output,gold,ok", [
    ("The answer is B", "B", True),
    ("The answer is (C).", "C", True),
    ("The answer is bank", "A", True),  # the choice's text instead of its letter
    ("I think the option is (D)", "D", True),
    ("The answer is E", "A", False),
])
def test_choices(output, gold, ok):
    assert grade(output, gold, "choice", ["bank", "library", "store", "mall", "park"]).correct is ok


@pytest.mark.parametrize("output,gold,ok", [
    ("The answer is True", "True", True),
    ("The answer is yes.", "True", True),
    ("No, they could not. The answer is False", "False", True),
    ("The answer is False", "True", False),
])
def test_booleans(output, gold, ok):
    assert grade(output, gold, "boolean").correct is ok


@pytest.mark.parametrize("output,gold,ok", [
    ("The answer is \\frac{1}{2}", "0.5", True),
    ("so $x = \\boxed{\\sqrt{2}/2}$", "\\frac{\\sqrt{2}}{2}", True),
    ("The answer is 2\\pi", "2\\pi", True),
    ("The answer is 3", "4", False),
])
def test_math(output, gold, ok):
    assert grade(output, gold, "math").correct is ok


def test_missing_answer_is_reported():
    g = grade("I do not know.", "7", "number")
    assert not g.answer_found and not g.format_followed and not g.correct

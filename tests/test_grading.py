from __future__ import annotations

import pytest

from cotlib.grading import RUNON_POLICY, extract_choice, grade, last_boxed, numbers_equal

CSQA = ["bank", "library", "cupboard", "mall", "park"]
AQUA = ["12 km/hr", "15 km/hr", "18 km/hr", "20 km/hr", "24 km/hr"]


@pytest.mark.parametrize("output,gold,strict,flexible", [
    ("3 + 4 = 7. The answer is 7", "7", True, True),
    ("The answer is 1,250.", "1250", True, True),
    ("The answer is $12.50 per hour", "12.5", True, True),
    ("The answer is 145.0", "145", True, True),
    ("half of it: The answer is 3/4", "0.75", True, True),
    ("so we get 7 apples in total", "7", False, True),  # no answer line: flexible only
    ("The answer is 8. Check: 3 + 4 = 7", "7", False, False),  # the answer line wins over later numbers
    ("The answer is -5", "-5", True, True),
    ("Together 382 + 374 = 756The answer is 756", "756", True, True),  # the release's unspaced lines
    ("The answer is 2,74 euros", "2.74", True, True),  # a decimal comma
    ("Half of 9 is 4.5 so the answer is 4 1/2.", "4.5", True, True),  # a mixed number
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
    assert grade(output, gold, "choice", CSQA).correct is ok


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
    ("The answer is 441", "441\\text{ pounds}", True),
    ("The answer is Friday", "\\text{Friday}", True),
])
def test_math(output, gold, ok):
    assert grade(output, gold, "math").correct is ok


def test_missing_answer_is_reported():
    g = grade("I do not know.", "7", "number")
    assert not g.answer_found and not g.format_followed and not g.correct


# --- issue 16, one test per group of misses ------------------------------------------------------

@pytest.mark.parametrize("output,gold,ok", [
    ("Substituting $x = 7$ into $y = 8.8 - 0.4x$ gives $y = 6$. So the ordered pair $(x, y)$ that "
     "solves the system is $(7, 6)$.", "(7,6)", True),
    ("So (3/4) P(A) = 1/2 and P(A) = 2/3. Therefore, the probability that Alice wins the game is 2/3.",
     "\\frac{2}{3}", True),
    ("Subtracting 3 from both sides gives $2x \\ge 10$, so the solution is $x \\geq 5$.", "x \\ge 5", True),
    ("Each entry doubles, so the matrix is \\[\\begin{pmatrix} 2 & 0 \\\\ 0 & 2 \\end{pmatrix}.\\]",
     "\\begin{pmatrix} 2 & 0 \\\\ 0 & 2 \\end{pmatrix}", True),
    ("Solving the system we get x = 7 and y = 5, so the point is $(7, 5)$.", "(7,6)", False),
])
def test_group1_final_expression_without_answer_line(output, gold, ok):
    g = grade(output, gold, "math")
    assert g.correct is ok and not g.format_followed  # a fallback: flexible only


def test_group2_minerva_answer_line_is_an_answer_line():
    out = ("The expressions inside each square root must be non-negative, so $x \\ge 2$ and $x < 5$.\n"
           "Final Answer: The final answer is $[2,5)$. I hope it is correct.")
    g = grade(out, "[2,5)", "math")
    assert g.strict_correct and g.format_followed
    assert grade("Two weights 12 times is 2 * 20 * 12 = 480 pounds.\nFinal Answer: The final answer is 480. "
                 "I hope it is correct.", "480", "number").strict_correct
    assert grade("It is 15 km/hr.\nFinal Answer: The final answer is (B). I hope it is correct.", "B", "choice",
                 AQUA).strict_correct
    assert not grade("So $n=480/30=15$.\nFinal Answer: The final answer is $15$. I hope it is correct.", "16",
                     "math").correct


def test_group3_several_boxes_for_a_gold_with_several_parts():
    out = ("From the first condition we get $\\boxed{k=45}$. Substituting this into the second equation and "
           "simplifying the resulting quadratic, whose other root is negative and therefore excluded, we obtain "
           "$\\boxed{n=2}$.")
    assert grade(out, "k=45, n=2", "math").strict_correct
    assert not grade(out, "k=45, n=3", "math").correct
    # a one-part gold: the last box counts when the boxes are far apart...
    assert grade("At first I got $\\boxed{3}$, but that ignores the case where both dice show the same number, "
                 "which has to be counted once more; correcting for it the count is $\\boxed{4}$.", "4", "math").correct
    # ...and two boxes given together are one answer (math-verify's reading), not a pick of the last
    assert not grade("The two roots are \\boxed{-2} and \\boxed{2}.", "2", "math").correct
    assert grade("The integers are \\boxed{-2} and \\boxed{1}.", "1,-2", "math").correct


def test_group4_box_spanning_lines_equal_to_gold():
    gold = "\\begin{pmatrix} 0 & 3 \\\\ 0 & -1 \\end{pmatrix}"
    out = "Multiplying out, the product is\n\\[\n\\boxed{\n\\begin{pmatrix} 0 & 3 \\\\\n0 & -1 \\end{pmatrix}\n}\n\\]"
    assert grade(out, gold, "math").strict_correct
    assert grade("Therefore the probability is\n$\\boxed{\n\\frac{1}{2}\n}$", "\\frac{1}{2}", "math").strict_correct
    assert not grade(out.replace("-1", "1"), gold, "math").correct


@pytest.mark.parametrize("output,gold,kind,ok", [
    ("The answer is $\\frac{1}{2}$. I apologize for the confusion in my 3 earlier attempts.", "\\frac{1}{2}", "math", True),
    ("Hence the answer is \\frac{1}{2}. So we are done.", "\\frac{1}{2}", "math", True),
    ("The answer is $16,\\!386.20$. I apologize for the repetition in my previous 2 responses.", "16386.20", "math", True),
    ("The answer is 12 apples. Tom ate 3 of them later.", "12", "number", True),
    ("The answer is $\\frac{1}{3}$. Note that 1/2 would be wrong.", "\\frac{1}{2}", "math", False),
])
def test_group5_answer_ends_at_closing_dollar_or_sentence_end(output, gold, kind, ok):
    g = grade(output, gold, kind)
    assert g.strict_correct is ok and g.format_followed


def test_group6_no_digits_inside_words():
    for kind in ("number", "math"):
        g = grade("AZYUK2A", "2", kind)
        assert not g.correct and g.extracted != "2"
    assert not grade("The code name was R2D2 and the model is B3X.", "3", "number").correct
    assert grade("After selling some he has 5 apples left (see item A3B).", "5", "number").correct


@pytest.mark.parametrize("output,gold,ok", [
    ("A. Because a bank is where people keep their money safe, the answer must be the bank.", "A", True),
    ("C\nPlates are kept in a cupboard so they are ready for the next meal.", "C", True),
    ("(B) library. Books are borrowed from a library, not bought at a mall.", "B", True),
    ("A mall is a big place, but plates are kept in a cupboard.", "D", False),  # "A" here is an article
])
def test_group7_choice_letter_opening_the_output(output, gold, ok):
    g = grade(output, gold, "choice", CSQA)
    assert g.correct is ok and not g.strict_correct


def test_group8_run_on_is_graded_on_its_first_response():
    out = ("Jason started with 20 lollipops and now has 12, so he gave 20 - 12 = 8. The answer is 8. Q: Olivia has "
           "$23. She bought five bagels for $3 each. How much money does she have left? A: 5 x 3 = 15 and 23 - 15 = 8."
           " The answer is 35.")
    assert RUNON_POLICY == "first-response"
    assert grade(out, "8", "number").strict_correct
    assert not grade(out, "35", "number").correct
    assert grade(out, "35", "number", policy="last").strict_correct  # the rule before issue 16
    chat = "5 + 4 = 9. The answer is 9.<|im_end|>\n<|im_start|>user\nQ: Michael had 58 golf balls. The answer is 33."
    assert grade(chat, "9", "number").strict_correct
    # a self-correction inside one response keeps the last answer
    fixed = "58 - 23 = 35, so the answer is 35. Wait, he lost 2 more on wednesday: 35 - 2 = 33. The answer is 33."
    assert grade(fixed, "33", "number").strict_correct
    assert not grade(fixed, "33", "number", policy="first").correct


@pytest.mark.parametrize("output,gold,ok", [
    ("Shawn has 3 toys and gets 4 more. The answer is 3 + 4 = 7.", "7", True),
    ("She drank 9 bottles a day. The answer is 360 / 9 = 40 days.", "40", True),
    ("Shawn has 3 toys and gets 4 more. The answer is 3 + 4 = 7.", "3", False),
    ("The answer is 12 apples because 3 * 4 = 12 and 12 - 2 = 10 are eaten later.", "12", True),
])
def test_group9_answer_line_stating_an_equation(output, gold, ok):
    assert grade(output, gold, "number").strict_correct is ok


# --- helpers data.py builds gold answers with ----------------------------------------------------

def test_gold_helpers_keep_their_behaviour():
    assert last_boxed("so $\\boxed{\\frac{1}{2}}$ and later \\boxed{3}") == "3"
    assert last_boxed("no box") is None
    assert extract_choice("(C) 15 km/hr") == "C"
    assert extract_choice("Option B", AQUA) == "B"
    assert extract_choice("15 km/hr", AQUA) == "B"
    assert numbers_equal(0.33333, 1 / 3) and not numbers_equal(0.3, 1 / 3)


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError):
        grade("The answer is 3", "3", "number", policy="middle")

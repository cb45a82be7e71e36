"""Paired statistics for cells scored on the same questions: the paper reports none.

Two cells of one student evaluated on the same test questions differ on some questions only; the exact
McNemar test asks whether the questions one gets right and the other wrong are split more unevenly than
a fair coin would split them. Many such comparisons are made per student, so p-values are adjusted
with Holm's step-down method, which controls the family-wise error rate without assuming independence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations

import pandas as pd


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs: P(|X - n/2| >= |b - n/2|), X ~ Bin(b + c, 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order (monotone, capped at 1)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    m, running, out = len(p_values), 0.0, [0.0] * len(p_values)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


def paired(a: dict[str, bool], b: dict[str, bool]) -> tuple[int, int, int]:
    """On the questions both cells answered: (n, a right and b wrong, a wrong and b right)."""
    shared = a.keys() & b.keys()
    return len(shared), sum(a[q] and not b[q] for q in shared), sum(b[q] and not a[q] for q in shared)


def compare(correct: dict[str, dict[str, bool]], groups: dict[str, list[str]], alpha: float = 0.05) -> pd.DataFrame:
    """Every pair of cells within each group (e.g. one student's levels): accuracies, discordant counts,
    exact McNemar p, and Holm-adjusted p within the group. `correct` maps cell -> question id -> right."""
    rows = []
    for group, members in groups.items():
        pairs = list(combinations(members, 2))
        ps, found = [], []
        for x, y in pairs:
            n, b, c = paired(correct[x], correct[y])
            ps.append(mcnemar_exact(b, c))
            found.append((x, y, n, b, c))
        for (x, y, n, b, c), p, ph in zip(found, ps, holm(ps)):
            rows.append({"group": group, "a": x, "b": y, "n": n,
                         "accuracy_a": sum(correct[x].values()) / len(correct[x]),
                         "accuracy_b": sum(correct[y].values()) / len(correct[y]),
                         "a_only_right": b, "b_only_right": c, "p": p, "p_holm": ph, "significant": ph < alpha})
    return pd.DataFrame(rows, columns=["group", "a", "b", "n", "accuracy_a", "accuracy_b", "a_only_right",
                                       "b_only_right", "p", "p_holm", "significant"])

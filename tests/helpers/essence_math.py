"""The TargetCLIP losses written out by hand with plain loops, so expectations never come from the code under test."""

from __future__ import annotations

import math

import torch


def dot(a, b) -> float:
    return sum(float(x) * float(y) for x, y in zip(a.tolist(), b.tolist()))


def unit(v):
    n = math.sqrt(dot(v, v))
    return [float(x) / n for x in v.tolist()] if n > 0 else [0.0] * len(v)


def hand_similarity(t, f) -> float:
    """mean_i (1 - <t, f_i>); t [D], f [N, D] (already normalised)."""
    return sum(1.0 - dot(t, f[i]) for i in range(f.shape[0])) / f.shape[0]


def hand_consistency(f, e) -> float:
    """mean over ordered pairs i != j of 1 - cos(f_i - e_i, f_j - e_j)."""
    n = f.shape[0]
    d = [unit(f[i] - e[i]) for i in range(n)]
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                total += 1.0 - sum(x * y for x, y in zip(d[i], d[j]))
    return total / (n * n - n)


def hand_l2(b) -> float:
    return math.sqrt(sum(float(x) ** 2 for x in b.flatten().tolist()))


def hand_total(t, f, e, b, lambdas=(1.0, 0.5, 0.003)) -> dict:
    sim, cons, l2 = hand_similarity(t, f), hand_consistency(f, e), hand_l2(b)
    return {"similarity": sim, "consistency": cons, "l2": l2,
            "total": lambdas[0] * sim + lambdas[1] * cons + lambdas[2] * l2}


def normalised(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)

"""Intervals and power over ensemble members (torch-free).

Every comparison is paired: member m of a condition is the retrained twin of base member
m, so the unit of evidence is the per-member difference d_m. With M members:

- interval: Student's t on the differences, mean +- t_{(1+c)/2, M-1} * sd / sqrt(M).
  Exact coverage for normal differences at any M (a percentile bootstrap over 3 members
  under-covers badly: it can only return values among 3 resampled means);
- minimal detectable effect (MDE): the smallest true mean difference a two-sided test at
  level 1 - c detects with probability ``POWER``, (t_{(1+c)/2, M-1} + t_{POWER, M-1}) *
  sd / sqrt(M). A constant difference has MDE 0; with one member nothing is detectable.

Integer measures (probing sparsity k, the location's layer index) tie: when every member
shifts by the same integer, the spread is 0 and a t-interval collapses to a point that
calls any shift "changed", random removals included. ``paired_integer`` floors the spread
at the rounding resolution, sqrt(1/6) (the sd of the difference of two values each rounded
to an integer, a uniform error of +-0.5), and calls a change only when an exact sign-flip
test agrees (p over all 2^M sign patterns of the differences; valid for any symmetric null,
ties included: 3 members can never reach p < 0.05 there, whatever they show).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats as _st

POWER = 0.8


def t_interval(values, confidence: float = 0.95) -> dict:
    """{"point", "lo", "hi", "sd", "n", "mde", "changed"} for the mean of ``values`` (one per member)."""
    v = np.asarray(values, float)
    n, point = len(v), float(np.mean(v)) if len(v) else float("nan")
    if n < 2:
        return {"point": point, "lo": -math.inf, "hi": math.inf, "sd": math.nan, "n": n, "mde": math.inf,
                "changed": False}
    sd = float(np.std(v, ddof=1))
    if sd <= 1e-12 * max(1.0, float(np.max(np.abs(v)))):   # a constant up to float rounding
        sd = 0.0
    se = sd / math.sqrt(n)
    t_c = float(_st.t.ppf((1 + confidence) / 2, n - 1))
    lo, hi = (point, point) if se == 0 else (point - t_c * se, point + t_c * se)
    mde = (t_c + float(_st.t.ppf(POWER, n - 1))) * se
    return {"point": point, "lo": lo, "hi": hi, "sd": sd, "n": n, "mde": mde, "changed": bool(lo > 0 or hi < 0)}


def paired(cond, base, confidence: float = 0.95) -> dict:
    """The t-interval and MDE of the per-member differences ``cond - base``."""
    return t_interval(np.asarray(cond, float) - np.asarray(base, float), confidence)


def fmt(ci: dict, digits: int = 3, sign: bool = False) -> str:
    s = "+" if sign else ""
    return f"{ci['point']:{s}.{digits}f} [{ci['lo']:{s}.{digits}f}, {ci['hi']:{s}.{digits}f}]"


RESOLUTION_SD = math.sqrt(1 / 6)


def sign_flip_p(diffs) -> float:
    """Two-sided exact sign-flip p-value of the mean of ``diffs`` (all 2^M patterns up to M = 20;
    beyond, 2^20 seeded random patterns)."""
    d = np.asarray(diffs, float)
    m = len(d)
    if m == 0 or np.all(d == 0):
        return 1.0
    if m <= 20:
        signs = 1 - 2 * ((np.arange(2 ** m)[:, None] >> np.arange(m)) & 1)
    else:
        signs = np.random.default_rng(0).choice([-1, 1], size=(2 ** 20, m))
    means = np.abs(signs @ d) / m
    return float(np.mean(means >= abs(d.mean()) - 1e-12))


def paired_quantized(cond, base, step: float, confidence: float = 0.95, exact: bool = False) -> dict:
    """``paired`` for a measure that moves in steps of ``step`` (an integer count: 1; a balanced
    accuracy over held-out classes of n_0 and n_1 images: 0.5 / max(n_0, n_1)). Members can then
    tie exactly, the spread is 0 and the t-interval collapses to a point; the spread is floored
    at the rounding error of a difference of two quantized values, ``step * RESOLUTION_SD``.
    ``exact``: "changed" also needs the exact sign-flip p-value at most 1 - confidence."""
    d = np.asarray(cond, float) - np.asarray(base, float)
    ci = t_interval(d, confidence)
    floor = float(step) * RESOLUTION_SD
    p = sign_flip_p(d)
    if ci["n"] < 2:
        return {**ci, "p_sign_flip": p, "sd_floor": floor}
    sd = max(ci["sd"], floor)
    se = sd / math.sqrt(ci["n"])
    t_c = float(_st.t.ppf((1 + confidence) / 2, ci["n"] - 1))
    lo, hi = ci["point"] - t_c * se, ci["point"] + t_c * se
    changed = (lo > 0 or hi < 0) and (not exact or p <= 1 - confidence)
    return {**ci, "lo": lo, "hi": hi, "mde": (t_c + float(_st.t.ppf(POWER, ci["n"] - 1))) * se,
            "changed": bool(changed), "p_sign_flip": p, "sd_floor": floor}


def paired_integer(cond, base, confidence: float = 0.95) -> dict:
    """``paired_quantized`` for integer measures (step 1), with the exact sign-flip test."""
    return paired_quantized(cond, base, 1.0, confidence, exact=True)


def balanced_accuracy_step(n_per_class) -> float:
    """The smallest change of a balanced accuracy over classes of these sizes (one image of the
    largest class flipping)."""
    return 0.5 / max(int(n) for n in n_per_class) if len(n_per_class) else 0.0

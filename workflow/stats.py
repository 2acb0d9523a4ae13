"""Intervals and power over ensemble members (torch-free).

Every comparison is paired: member m of a condition is the retrained twin of base member
m, so the unit of evidence is the per-member difference d_m. With M members:

- interval: Student's t on the differences, mean +- t_{(1+c)/2, M-1} * sd / sqrt(M).
  Exact coverage for normal differences at any M (a percentile bootstrap over 3 members
  under-covers badly: it can only return values among 3 resampled means);
- minimal detectable effect (MDE): the smallest true mean difference a two-sided test at
  level 1 - c detects with probability ``POWER``, (t_{(1+c)/2, M-1} + t_{POWER, M-1}) *
  sd / sqrt(M). A constant difference has MDE 0; with one member nothing is detectable.
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

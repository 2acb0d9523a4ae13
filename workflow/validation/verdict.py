"""Three-way verdicts: supported, no effect (within a stated margin), or inconclusive.

A contrast is the paired difference, over members, of a readout's change between the
top-k and a control of the same size (random images, or the matched control: as many of
the concept's own images, at random, as the top-k holds). With its interval [lo, hi]:

- *supported*: the top-k lowers the readout more than the control, by more than the
  interval admits (hi < 0);
- *no effect*: the whole interval lies within +-delta, an equivalence margin;
- *inconclusive*: neither; the minimal detectable effect says what the design could see.

The margin delta is stated in units a reader can judge. Where the concept's training
images are known (class and planted concepts): ``fraction`` (default 25%) of the positive
control's effect (oracle minus random), scaled to the top-k's dose of concept images,
``|oracle effect| * |c_top - c_random| / (c_oracle - c_random)``, where c_x counts the
concept images set x removes. Elsewhere an absolute margin in the readout's units, or none
(then "no effect" cannot be claimed). No verdict reads an estimator's predicted magnitude:
those are uncalibrated. Torch-free.
"""
from __future__ import annotations

import math

SUPPORTED, NO_EFFECT, INCONCLUSIVE = "supported", "no effect", "inconclusive"


def margin(oracle: dict | None, doses: dict, fraction: float, absolute: float | None = None) -> dict:
    """delta = {"value": float or None, "basis": words}. ``oracle``: the positive control's
    interval (oracle minus random); ``doses``: concept images removed by "top", "random" and
    "oracle" (None where unknown)."""
    c_top, c_rnd, c_orc = (doses.get(k) for k in ("top", "random", "oracle"))
    if oracle is not None and None not in (c_top, c_rnd, c_orc) and c_orc != c_rnd:
        scale = abs(c_top - c_rnd) / abs(c_orc - c_rnd)
        value = fraction * abs(oracle["point"]) * scale
        return {"value": value, "fraction": fraction, "scale": scale, "oracle_effect": oracle["point"],
                "basis": (f"{fraction:.0%} of the positive control's effect ({oracle['point']:+.3f}) scaled to the "
                          f"top-k's dose of concept images (({c_top} - {c_rnd}) / ({c_orc} - {c_rnd}) = {scale:.3f})")}
    if absolute is not None:
        return {"value": float(absolute), "fraction": None, "scale": None, "oracle_effect": None,
                "basis": f"absolute margin {absolute:g} in the readout's units (compare.margin_absolute)"}
    return {"value": None, "fraction": None, "scale": None, "oracle_effect": None,
            "basis": "no margin: the concept's training images are unknown and compare.margin_absolute is unset"}


def classify(ci: dict, delta: float | None) -> str:
    """One contrast's outcome: equivalence first (the whole interval within +-delta, even if
    it excludes 0: the effect is then shown to be negligible), then a lowering beyond the
    interval, else inconclusive."""
    if delta is not None and delta > 0 and -delta < ci["lo"] and ci["hi"] < delta:
        return NO_EFFECT
    if ci["hi"] < 0:
        return SUPPORTED
    return INCONCLUSIVE


def overall(contrasts: dict, positive_control: dict | None) -> dict:
    """The concept's verdict from its contrasts {"random": outcome, "matched": outcome or
    absent}: supported when the top-k beats every control; no effect when it is equivalent to
    one of them (the matched control first: the diffuse-concept answer); else inconclusive.
    A positive control that was run but not detected leaves nothing to measure a margin by:
    "no effect" becomes inconclusive."""
    outcomes = {k: v for k, v in contrasts.items() if v is not None}
    detected = None if positive_control is None else bool(positive_control["hi"] < 0)
    if outcomes and all(v == SUPPORTED for v in outcomes.values()):
        return {"outcome": SUPPORTED, "by": list(outcomes), "positive_control_detected": detected}
    for control in ("matched", "random"):
        if outcomes.get(control) == NO_EFFECT:
            if detected is False:
                return {"outcome": INCONCLUSIVE, "by": [control], "positive_control_detected": detected,
                        "note": "equivalent within the margin, but the positive control was not detected"}
            return {"outcome": NO_EFFECT, "by": [control], "positive_control_detected": detected}
    return {"outcome": INCONCLUSIVE, "by": list(outcomes), "positive_control_detected": detected}


def words(concept: str, result: dict, contrasts: dict, delta: dict, what: str) -> str:
    """The verdict in one plain sentence, with the decisive figures."""
    def fmt(ci):
        return f"{ci['point']:+.3f} [{ci['lo']:+.3f}, {ci['hi']:+.3f}]"

    d = delta["value"]
    band = f"+-{d:.3f}" if d is not None else "none"
    parts = [f"{name} {fmt(ci)} (detectable >= {ci['mde']:.3f})" for name, ci in contrasts.items()]
    out, detail = result["outcome"], "; ".join(parts)
    if out == SUPPORTED:
        head = f"{concept}: SUPPORTED: removing the top-k lowers the {what} more than every control"
    elif out == NO_EFFECT:
        control = result["by"][0]
        gloss = (" (the attribution's exemplars matter no more than other exemplars of the concept: diffuse)"
                 if control == "matched" else "")
        head = f"{concept}: NO EFFECT beyond {control} within the margin {band}{gloss}"
    else:
        mde = min((ci["mde"] for ci in contrasts.values()), default=math.inf)
        head = (f"{concept}: INCONCLUSIVE: no control separated and no equivalence within {band}; "
                f"detectable >= {mde:.3f}" + (f" ({result['note']})" if result.get("note") else ""))
    pc = result.get("positive_control_detected")
    tail = "" if pc is None else ("; positive control detected" if pc else "; positive control NOT detected")
    opposite = [name.split(" - ", 1)[1] for name, ci in contrasts.items() if ci["lo"] > 0]
    if opposite:   # a separation the wrong way is a finding too: say it, whatever the outcome
        tail += (f"; NOTE: the top-k lowered the {what} significantly LESS than " + " and ".join(opposite)
                 + " did")
    return f"{head}: {detail}; margin: {delta['basis']}{tail}"

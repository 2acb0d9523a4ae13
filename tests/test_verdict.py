"""Three-way verdicts on hand-built intervals, with the margin's dose scaling by hand."""
import math

import pytest

from workflow.validation import verdict as v


def ci(point, lo, hi, mde=0.3):
    return {"point": point, "lo": lo, "hi": hi, "mde": mde}


ORACLE = ci(-2.0, -2.3, -1.7)
DOSES = {"top": 158, "random": 65, "oracle": 600}


def test_margin_is_a_quarter_of_the_positive_control_scaled_to_the_dose():
    m = v.margin(ORACLE, DOSES, 0.25)
    by_hand = 0.25 * 2.0 * (158 - 65) / (600 - 65)          # = 0.0869...
    assert m["value"] == pytest.approx(by_hand) and m["scale"] == pytest.approx(93 / 535)
    assert "25%" in m["basis"] and "(158 - 65) / (600 - 65)" in m["basis"]
    assert v.margin(None, DOSES, 0.25, absolute=0.05)["value"] == 0.05      # folder concepts: stated absolute
    assert v.margin(None, {"top": None, "random": None, "oracle": None}, 0.25)["value"] is None


def test_each_contrast_classifies_three_ways():
    d = 0.0869
    assert v.classify(ci(-0.5, -0.8, -0.2), d) == v.SUPPORTED            # lowers beyond the interval
    assert v.classify(ci(0.01, -0.05, 0.07), d) == v.NO_EFFECT           # whole interval inside +-d
    assert v.classify(ci(-0.05, -0.08, -0.01), d) == v.NO_EFFECT         # significant but negligible: equivalence
    assert v.classify(ci(0.15, -0.17, 0.48), d) == v.INCONCLUSIVE        # wide: neither
    assert v.classify(ci(0.3, 0.1, 0.5), d) == v.INCONCLUSIVE            # raises the readout: not a lowering
    assert v.classify(ci(0.01, -0.05, 0.07), None) == v.INCONCLUSIVE     # no margin: no equivalence claim


def test_overall_verdict_combines_the_controls():
    s, n, i = v.SUPPORTED, v.NO_EFFECT, v.INCONCLUSIVE
    assert v.overall({"random": s, "matched": s}, ORACLE)["outcome"] == s
    assert v.overall({"random": s}, ORACLE)["outcome"] == s
    diffuse = v.overall({"random": s, "matched": n}, ORACLE)            # beyond random, equivalent to matched
    assert diffuse["outcome"] == n and diffuse["by"] == ["matched"]
    assert v.overall({"random": n, "matched": i}, ORACLE)["outcome"] == n
    assert v.overall({"random": i, "matched": i}, ORACLE)["outcome"] == i
    undetected = v.overall({"random": n}, ci(-0.5, -1.2, 0.2))           # positive control not detected
    assert undetected["outcome"] == i and not undetected["positive_control_detected"]


def test_words_state_the_outcome_the_figures_and_the_margin():
    m = v.margin(ORACLE, DOSES, 0.25)
    result = v.overall({"random": v.SUPPORTED, "matched": v.NO_EFFECT}, ORACLE)
    text = v.words("curved", result, {"top - random": ci(-0.3, -0.5, -0.1), "top - matched": ci(0.0, -0.05, 0.05)},
                   m, "selectivity")
    assert text.startswith("curved: NO EFFECT beyond matched within the margin +-0.087")
    assert "diffuse" in text and "top - matched +0.000 [-0.050, +0.050]" in text and "positive control detected" in text
    inc = v.words("hilo", v.overall({"random": v.INCONCLUSIVE}, None), {"top - random": ci(0.1, -1, 1.2, mde=2.5)},
                  v.margin(None, {}, 0.25), "selectivity")
    assert inc.startswith("hilo: INCONCLUSIVE") and "detectable >= 2.500" in inc and math.isfinite(2.5)


def test_a_separation_the_wrong_way_is_said_in_words():
    """On the demo, TRAK's top curved images lowered the selectivity less than as many random
    curved images: top - matched +0.298 [+0.048, +0.547]. Not a lowering, so not supported; the
    text says so instead of leaving it inside 'inconclusive'."""
    contrasts = {"top - random": ci(0.045, -0.193, 0.282), "top - matched": ci(0.298, 0.048, 0.547)}
    m = v.margin(ORACLE, DOSES, 0.25)
    outcomes = {k.split(" - ")[1]: v.classify(c, m["value"]) for k, c in contrasts.items()}
    result = v.overall(outcomes, ORACLE)
    assert result["outcome"] == v.INCONCLUSIVE
    text = v.words("curved", result, contrasts, m, "selectivity")
    assert text.endswith("NOTE: the top-k lowered the selectivity significantly LESS than matched did")

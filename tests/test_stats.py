"""Intervals hold their coverage at the ensemble size used, and every null states its power."""
import math

import numpy as np
import pytest

from workflow import stats


def test_a_constant_difference_is_a_point_with_nothing_left_to_detect():
    ci = stats.paired([0.8, 0.7, 0.9], [0.6, 0.5, 0.7])        # every member moved by +0.2
    assert ci["point"] == pytest.approx(0.2) and ci["lo"] == ci["hi"] == ci["point"]
    assert ci["mde"] == 0 and ci["changed"]
    zero = stats.paired([1, 2, 3], [1, 2, 3])
    assert zero["mde"] == 0 and not zero["changed"]


def test_a_noisy_difference_has_a_positive_detectable_effect_that_shrinks_with_members():
    r = np.random.default_rng(0)
    d3, d12 = r.normal(0, 1, 3), r.normal(0, 1, 12)
    m3, m12 = stats.t_interval(d3), stats.t_interval(d12)
    assert m3["mde"] > 0 and m12["mde"] > 0
    # with sd fixed, the MDE is (t_.975 + t_.8) * sd / sqrt(M): 3 members cost far more than 12
    assert m3["mde"] / m3["sd"] > 3 * m12["mde"] / m12["sd"]
    assert m3["mde"] / m3["sd"] == pytest.approx((4.303 + 1.061) / math.sqrt(3), rel=1e-3)
    assert m3["lo"] < m3["point"] < m3["hi"]


def test_one_member_detects_nothing():
    ci = stats.t_interval([0.3])
    assert ci["mde"] == math.inf and not ci["changed"]


@pytest.mark.parametrize("members", [3, 5])
def test_under_no_effect_about_5_percent_are_called_changed(members):
    """Simulated null: paired differences of members that are noisy but unaffected.

    The percentile bootstrap this replaced called 3-member nulls "changed" far more often
    (it is checked below as the counterexample)."""
    r = np.random.default_rng(members)
    n_sim = 4000
    called = np.mean([stats.paired(r.normal(0.8, 0.05, members) + r.normal(0, 0.03, members),
                                   r.normal(0.8, 0.05, members))["changed"] for _ in range(n_sim)])
    assert 0.035 <= called <= 0.065, called            # 5% +- 3.5 standard errors

    def percentile_bootstrap_calls(d, n_boot=400):
        means = np.array([d[r.integers(0, len(d), len(d))].mean() for _ in range(n_boot)])
        lo, hi = np.quantile(means, [0.025, 0.975])
        return lo > 0 or hi < 0

    if members == 3:
        boot = np.mean([percentile_bootstrap_calls(r.normal(0, 1, 3)) for _ in range(400)])
        assert boot > 0.15, boot                       # what made a random removal look "changed"


def test_under_a_real_effect_the_mde_is_the_80_percent_power_point():
    r = np.random.default_rng(7)
    sd, members = 1.0, 5
    mde = (stats._st.t.ppf(0.975, members - 1) + stats._st.t.ppf(0.8, members - 1)) * sd / math.sqrt(members)
    called = np.mean([stats.t_interval(r.normal(mde, sd, members))["changed"] for _ in range(4000)])
    assert 0.72 <= called <= 0.86, called              # about 80% power at the MDE (t approximation)

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


def test_sign_flip_p_is_exact():
    assert stats.sign_flip_p([-1, -1, -1]) == pytest.approx(2 / 8)      # the smallest p 3 members can reach
    assert stats.sign_flip_p([0, 0]) == 1.0
    assert stats.sign_flip_p([-1] * 6) == pytest.approx(2 / 64)
    assert stats.sign_flip_p([2, -1, 1]) == pytest.approx(6 / 8)         # 6 of 8 sign patterns reach |sum| >= 2


def test_integer_ties_are_not_called_changed_by_a_collapsed_interval():
    """On the tiny config with 2 members the old interval said 'sparsity changed: 3 -> 2
    (diff -1.0 [-1.0, -1.0])': a tie collapsed the t-interval to a point."""
    old = stats.paired([2, 2], [3, 3])
    assert old["lo"] == old["hi"] == -1 and old["changed"]               # what the plain t-interval does
    new = stats.paired_integer([2, 2], [3, 3])
    assert not new["changed"] and new["lo"] < -1 < 0 < new["hi"] and new["mde"] > 1
    big = stats.paired_integer([10] * 8, [3] * 8)                        # 8 members all +7: a real shift
    assert big["changed"] and big["p_sign_flip"] == pytest.approx(2 / 256)


@pytest.mark.parametrize("members", [2, 3, 5, 8])
def test_under_no_effect_with_tied_integer_differences_at_most_5_percent_are_called_changed(members):
    """Simulated null for an integer measure: each member's value is a noisy continuous quantity
    rounded to an integer, paired base/twin, no effect. Many differences tie (mostly 0 or +-1)."""
    r = np.random.default_rng(100 + members)
    n_sim = 3000
    calls_new, ties = [], 0
    for _ in range(n_sim):
        latent = r.normal(5, 2, members)
        base = np.round(latent + r.normal(0, 0.3, members))
        cond = np.round(latent + r.normal(0, 0.3, members))
        calls_new.append(stats.paired_integer(cond, base)["changed"])
        ties += len(np.unique(cond - base)) == 1
    rate = np.mean(calls_new)
    assert rate <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / n_sim), rate
    assert ties / n_sim > (0.1 if members <= 3 else 0.02)   # the simulation does produce all-tied members

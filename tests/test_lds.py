"""The LDS measure: Spearman over subsets of predicted and actual readouts."""
import numpy as np

from workflow.validation import lds


def test_lds_is_1_for_a_monotone_readout_and_near_0_for_a_shuffled_pairing():
    r = np.random.default_rng(0)
    pred = r.normal(size=(40, 64))                         # 40 targets x 64 subsets
    assert np.allclose(lds.spearman(pred, np.exp(3 * pred) - 7), 1.0)          # any increasing function
    assert np.allclose(lds.spearman(pred, -pred ** 3), -1.0)
    shuffled = np.stack([r.permutation(row) for row in pred])
    null = lds.spearman(pred, shuffled)
    assert abs(null.mean()) < 0.05 and null.std() < 0.2        # sd of a null Spearman over 64 is 1/sqrt(63)


def test_ties_share_their_mean_rank_and_constant_sides_are_undefined():
    assert np.allclose(lds.ranks(np.array([3.0, 1.0, 3.0, 2.0])), [2.5, 0.0, 2.5, 1.0])
    assert np.isnan(lds.spearman(np.array([1.0, 1.0, 1.0]), np.array([1.0, 2.0, 3.0])))


def test_predicted_is_minus_the_sum_of_removed_scores_per_target():
    scores = np.arange(12, dtype=float).reshape(2, 6)
    out = lds.predicted(scores, [np.array([0, 5]), np.array([1])])
    assert out.tolist() == [[-5.0, -17.0], [-1.0, -7.0]]


def test_bootstrap_interval_brackets_the_point():
    r = np.random.default_rng(1)
    a = r.normal(size=32)
    b = a + r.normal(scale=0.5, size=32)
    ci = lds.bootstrap_spearman(a, b, seed=0, confidence=0.95)
    assert ci["lo"] <= ci["point"] <= ci["hi"] and ci["point"] > 0.6


def test_the_mean_lds_interval_resamples_subsets_and_covers_0_for_uninformative_scores():
    """Targets share their subsets, and an estimator's predictions for different targets are
    alike (TRAK's are: one concept): its per-target LDS values move together, so an interval
    over targets is far too narrow. Scores unrelated to the readout must not look significant."""
    from workflow import stats

    r = np.random.default_rng(2)
    actual = r.normal(size=(1, 16, 1)) + 0.3 * r.normal(size=(1, 16, 50))     # [M, S, T]: shared drift
    hits = naive_hits = 0
    for seed in range(20):
        g = np.random.default_rng(100 + seed)
        pred = g.normal(size=(16, 1)) + 0.3 * g.normal(size=(16, 50))        # [S, T], unrelated to actual
        ci = lds.bootstrap_mean_lds(pred, actual, seed=seed, confidence=0.95, n_boot=300)
        hits += ci["lo"] <= 0 <= ci["hi"]
        per_target = lds.spearman(np.broadcast_to(pred.T, (1, 50, 16)), actual.transpose(0, 2, 1)).ravel()
        naive = stats.t_interval(per_target)
        naive_hits += naive["lo"] <= 0 <= naive["hi"]
    assert hits >= 17                                          # about 95% coverage of the true 0
    assert naive_hits <= 10                                    # what the interval over targets did
    good = lds.bootstrap_mean_lds(actual[0] + 0.1 * r.normal(size=(16, 50)), actual, seed=0, confidence=0.95)
    assert good["lo"] > 0.5


def test_margin_is_the_correct_logit_minus_the_logsumexp_of_the_others():
    import torch

    from workflow.attribution.features import margin

    r = np.random.default_rng(3)
    z, y = r.normal(size=(7, 5)) * 4, r.integers(0, 5, 7)
    by_hand = [z[i, y[i]] - np.log(sum(np.exp(z[i, j]) for j in range(5) if j != y[i])) for i in range(7)]
    np.testing.assert_allclose(lds.margin_of(z, y), by_hand, rtol=1e-12)
    # the readout the LDS stage measures is the output function TRAK's margin scores differentiate
    np.testing.assert_allclose(margin(torch.tensor(z), torch.tensor(y)).numpy(), by_hand, rtol=1e-12)

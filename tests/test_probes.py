import numpy as np

from workflow.probing import probes


def planted(n=600, d=40, channels=(0,), noise=1.0, seed=0):
    """Features where the concept shifts ``channels``; the signal is spread evenly over them."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(0, noise, (n, d)) + rng.normal(3, 1, d)  # nonzero means: standardisation matters
    shift = 2.5 / np.sqrt(len(channels))
    for c in channels:
        x[:, c] += shift * (2 * y - 1)
    return x, y


def fit_and_score(x, y):
    tr = np.arange(len(y)) < int(0.7 * len(y))
    dense = probes.fit_dense(x[tr], y[tr], [0.1, 1.0], seed=0)
    acc = probes.balanced_accuracy(dense, x[~tr], y[~tr])
    return dense, acc, tr


def test_probe_finds_planted_linear_concept():
    x, y = planted()
    dense, acc, _ = fit_and_score(x, y)
    assert acc > 0.9
    assert np.argmax(np.abs(dense["coef"])) == 0
    assert dense["C"] in (0.1, 1.0)


def test_probe_is_at_chance_on_noise():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(600, 40)), rng.integers(0, 2, 600)
    _, acc, _ = fit_and_score(x, y)
    assert abs(acc - 0.5) < 0.1


def test_decision_function_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    x, y = planted(seed=3)
    dense, _, tr = fit_and_score(x, y)
    clf = LogisticRegression(C=dense["C"], max_iter=2000).fit((x[tr] - dense["mean"]) / dense["scale"], y[tr])
    np.testing.assert_allclose(probes.decision_function(dense, x),
                               clf.decision_function((x - dense["mean"]) / dense["scale"]), rtol=1e-4, atol=1e-4)


def sparsity_k(channels):
    x, y = planted(n=1000, d=60, channels=channels, noise=0.5, seed=4)
    dense, acc, tr = fit_and_score(x, y)
    sp = probes.sparsity(x[tr], y[tr], x[~tr], y[~tr], dense["mean"], dense["scale"], acc, 0.95, n_points=25)
    assert sp["reached"]
    return sp["k"]


def test_sparsity_one_channel_vs_twenty():
    k1, k20 = sparsity_k((0,)), sparsity_k(tuple(range(20)))
    assert k1 <= 2
    assert k20 >= 8
    assert k1 < k20


def test_sparsity_not_reached_reports_all_channels():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(200, 10)), rng.integers(0, 2, 200)
    sp = probes.sparsity(x[:150], y[:150], x[150:], y[150:], x.mean(0), x.std(0), dense_acc=1.0, threshold=0.99,
                         n_points=5)
    assert not sp["reached"] and sp["k"] == 10

"""Stage 7: ablated training sets and their controls."""
import h5py
import numpy as np
import pytest

from workflow import artifacts
from workflow.ablation import sets as ablation

N = 500
SIZE = {"fraction": 0.08, "top_k": None}
CFG = {**SIZE, "seed": 3}


def scores(seed=0):
    return np.random.default_rng(seed).normal(size=N)


@pytest.mark.parametrize("kind", ["top", "bottom", "random"])
@pytest.mark.parametrize("cfg, k", [(CFG, 40), ({**CFG, "top_k": 17}, 17), ({**CFG, "fraction": 0.5}, 250)])
def test_sets_have_the_requested_size_and_partition_the_train_set(kind, cfg, k):
    design = {"kind": kind, "concept": "c", "layer": "layer2", "fraction": cfg["fraction"], "top_k": cfg["top_k"]}
    removed, _, reason = ablation.build(design, N, cfg, scores=scores())
    keep = np.setdiff1d(np.arange(N), removed)
    assert len(removed) == k and len(np.unique(removed)) == k
    assert len(keep) == N - k
    assert not np.isin(keep, removed).any()              # no removed index is kept
    assert np.array_equal(np.sort(np.concatenate([keep, removed])), np.arange(N))
    assert str(k) in reason


def test_top_k_takes_the_highest_scores():
    s = scores()
    removed, removed_scores, _ = ablation.build({"kind": "top", "concept": "c", "layer": "layer3", **SIZE}, N, CFG,
                                                scores=s)
    assert removed_scores.min() >= np.delete(s, removed).max()
    np.testing.assert_array_equal(removed_scores, s[removed])
    low, low_scores, reason = ablation.build({"kind": "bottom", "concept": "c", "layer": "layer3", **SIZE}, N, CFG,
                                             scores=s)
    assert low_scores.max() <= np.delete(s, low).min() and "lowest" in reason
    assert not np.intersect1d(removed, low).size
    # ties are broken by the lower index, so the set is a function of the scores alone
    assert np.array_equal(ablation.top_k(np.zeros(10), 3), [0, 1, 2])


def test_random_control_is_reproducible_from_the_seed_and_differs_from_top_k():
    design = {"kind": "random", "concept": None, "layer": None, **SIZE}
    a, _, _ = ablation.build(design, N, CFG)
    b, _, _ = ablation.build(design, N, CFG)
    c, _, _ = ablation.build(design, N, {**CFG, "seed": 4})
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    top, _, _ = ablation.build({"kind": "top", "concept": "c", "layer": "stem", **SIZE}, N, CFG, scores=scores())
    assert len(top) == len(a) and not np.array_equal(top, a)
    assert len(np.intersect1d(top, a)) < len(a) // 2
    # random sets of different sizes are nested: a removal curve adds images, never swaps them
    big, _, _ = ablation.build({**design, "fraction": 0.16}, N, CFG)
    assert np.isin(a, big).all() and len(big) == 80


def test_oracle_removes_exactly_the_ground_truth_images():
    truth = np.random.default_rng(1).random(N) < 0.2
    removed, _, reason = ablation.build({"kind": "oracle", "concept": "hilo", "layer": None}, N, CFG, truth=truth)
    assert np.array_equal(removed, np.flatnonzero(truth))
    assert "positive control" in reason and str(truth.sum()) in reason


@pytest.mark.parametrize("cfg", [{**SIZE, "top_k": N}, {**SIZE, "fraction": 0.0001}])
def test_impossible_sizes_are_clear_errors(cfg):
    with pytest.raises(ValueError, match="ablation.top_k / ablation.fractions"):
        ablation.size(N, cfg)


def test_condition_names_from_config():
    config = {"concepts": [{"name": "snakes", "kind": "classes"}, {"name": "hilo", "kind": "planted"},
                           {"name": "fold", "kind": "folders"}],
              "ablation": {"layers": ["location", "layer3"], "controls": ["random", "oracle"], "concepts": None,
                           "fractions": [0.08], "top_k": None}}
    conds = ablation.conditions(config)
    assert list(conds) == ["top-snakes", "top-snakes-layer3", "top-hilo", "top-hilo-layer3", "top-fold",
                           "top-fold-layer3", "random", "oracle-snakes", "oracle-hilo"]  # no truth for folders
    assert conds["top-hilo-layer3"] == {"kind": "top", "concept": "hilo", "layer": "layer3", **SIZE}
    config["ablation"].update(controls=["bottom"], concepts=["hilo"], layers=["location"], fractions=[0.08, 0.02])
    assert list(ablation.conditions(config)) == ["top-hilo", "bottom-hilo", "top-hilo@0.02", "bottom-hilo@0.02"]
    config["ablation"].update(controls=["random"], top_k=50)
    assert list(ablation.conditions(config)) == ["top-hilo", "random"]
    assert ablation.conditions(config)["random"]["top_k"] == 50


def _files(tmp_path, truth):
    """Stage inputs written by their owners in ``artifacts``: layer2 is the location."""
    base = tmp_path / "base.h5"
    img = np.zeros((N, 2, 2, 3), np.uint8)
    artifacts.write_base(base, {}, {"train": (img, np.zeros(N, np.int64)), "test": (img[:4], np.zeros(4, np.int64))},
                         ["a"], [0.5] * 3, [0.25] * 3)
    probe_set = tmp_path / "probe.h5"
    artifacts.write_probe_set(probe_set, {}, "c", img[:4], [0, 1, 0, 1], [0, 0, 1, 1], train_truth=truth)
    probes = tmp_path / "probes.h5"
    acc = {(0, "stem"): 0.6, (0, "layer2"): 0.9, (1, "stem"): 0.7, (1, "layer2"): 0.8}
    probe = {"coef": np.ones(2), "mean": np.zeros(2), "scale": np.ones(2), "intercept": 0.0, "C": 1.0}
    path = {"path_C": np.ones(2), "path_nnz": np.ones(2), "path_acc": np.ones(2)}
    artifacts.write_probes(probes, {}, ["stem", "layer2"], [0, 1], {
        key: {"probe": probe, "path": path, "heldout_bal_acc": a, "train_bal_acc": a, "sparsity_k": 3,
              "sparsity_reached": True, "n_channels": 2} for key, a in acc.items()})
    paths = {}
    for i, layer in enumerate(["stem", "layer2"]):
        paths[layer] = tmp_path / f"{layer}.h5"
        artifacts.write_scores(paths[layer], {}, "c", layer, scores(i)[None, :], [0], 1)
    return base, probe_set, probes, paths


def test_make_writes_every_kind_and_top_uses_the_location_layer(tmp_path):
    truth = np.arange(N) % 7 == 0
    base, probe_set, probes, score_paths = _files(tmp_path, truth)
    out = tmp_path / "top.h5"
    ablation.make("top-c", {"design": {"kind": "top", "concept": "c", "layer": "location", **SIZE}, **CFG,
                            "layers": ["stem", "layer2"]}, base, out, probes_path=probes, score_paths=score_paths)
    a = artifacts.ablation(out)
    assert a["layer"] == "layer2" and a["kind"] == "top" and "layer2 (its location" in a["reason"]
    assert np.array_equal(a["removed"], ablation.top_k(scores(1).astype(np.float32), 40))
    with h5py.File(out) as f:
        assert "removed_scores" in f and "config" in f.attrs and "versions" in f.attrs
    ablation.make("oracle-c", {"design": {"kind": "oracle", "concept": "c", "layer": None}}, base,
                  tmp_path / "oracle.h5", probe_set_path=probe_set)
    assert np.array_equal(artifacts.ablation(tmp_path / "oracle.h5")["removed"], np.flatnonzero(truth))
    ablation.make("random", {"design": {"kind": "random", "concept": None, "layer": None, **SIZE}, **CFG}, base,
                  tmp_path / "random.h5")
    r = artifacts.ablation(tmp_path / "random.h5")
    assert len(r["removed"]) == 40 and len(r["keep"]) == N - 40
    assert not list(tmp_path.glob(".*tmp*"))


def test_matched_control_draws_only_concept_images_as_many_as_the_top_k_holds_with_a_seed():
    truth = np.random.default_rng(1).random(N) < 0.3
    top = ablation.top_k(scores(), 40)
    design = {"kind": "matched", "concept": "c", "layer": "location", **SIZE, "top": "top-c"}
    removed, removed_scores, reason = ablation.build(design, N, CFG, truth=truth, top_removed=top)
    k_prime = int(truth[top].sum())
    assert 0 < k_prime < 40 and len(removed) == k_prime == len(np.unique(removed))
    assert truth[removed].all() and removed_scores is None and "matched control" in reason
    again, _, _ = ablation.build(design, N, CFG, truth=truth, top_removed=top)
    other, _, _ = ablation.build(design, N, {**CFG, "seed": 4}, truth=truth, top_removed=top)
    assert np.array_equal(removed, again) and not np.array_equal(removed, other)
    # nested across sizes: a larger top-k's matched set contains the smaller one's
    bigger, _, _ = ablation.build(design, N, CFG, truth=truth, top_removed=ablation.top_k(scores(), 120))
    assert np.isin(removed, bigger).all()
    with pytest.raises(ValueError, match="ground truth"):
        ablation.build(design, N, CFG, truth=None, top_removed=top)


def test_matched_conditions_exist_only_for_concepts_with_ground_truth():
    config = {"ablation": {"top_k": None, "fractions": [0.08, 0.02], "concepts": None, "layers": ["location"],
                           "controls": ["random", "matched"]},
              "concepts": [{"name": "a", "kind": "classes"}, {"name": "f", "kind": "folders"}]}
    conds = ablation.conditions(config)
    assert conds["matched-a"] == {"kind": "matched", "concept": "a", "layer": "location", "fraction": 0.08,
                                  "top_k": None, "top": "top-a"}
    assert conds["matched-a@0.02"]["top"] == "top-a@0.02"
    assert not any(n.startswith("matched-f") for n in conds)

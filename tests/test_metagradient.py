"""The metagradient (workflow/attribution/metagradient.py) against retraining itself.

A tiny model over a few steps, on the CPU, in float64: the exact derivative of a readout
with respect to an image's loss weight must match central finite differences of actually
retraining with w_i = 1 +- eps, and removing one image (w_i = 0) must change the readout by
about the predicted amount (the linearisation error is printed). The replay that retrains
is checked against the training stage's own twin first.
"""
import numpy as np
import pytest
import torch

from conftest import completed

from workflow import artifacts
from workflow.attribution import metagradient as mg
from workflow.model import checkpoints, train

N = 48


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A base member (3 epochs of 3 batches, a state saved after every epoch) and its recipe."""
    from workflow.data import build as data

    tmp = tmp_path_factory.mktemp("metagradient")
    data.build_base(completed({"seed": 0, "dataset": {"name": "synthetic", "image_size": 32, "synthetic": {
        "n_train": N, "n_test": 16, "planted_fraction": 0.3}}}), tmp / "base.h5")
    cfg = completed({"seed": 0, "model": {"width": 2}, "train": {
        "epochs": 3, "batch_size": 16, "lr": 0.05, "device": "cpu", "checkpoint_every": 1}})
    train.train_member(tmp / "base.h5", tmp / "m0.h5", 0, cfg)
    return tmp, cfg


def readouts(dtype):
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
    return {"layer3": lambda m: m.pooled(x, ["layer3"])["layer3"][:, 1].mean(),
            "logit": lambda m: m(x)[:, 0].mean()}


@pytest.mark.parametrize("start", [1, 0])
def test_the_replay_is_the_training_stage_masked_twin(run, start):
    """Replaying with weights 1 ends on the base weights, and with two weights 0 on the masked
    twin the training stage trains: bit for bit, running statistics included (the replay
    makes torch.optim.SGD's operations in its order), from a saved state and from scratch."""
    tmp, cfg = run
    w = np.ones(N)
    w[[3, 30]] = 0
    spawn = (tmp / "m0.h5", start) if start else None
    train.train_member(tmp / "base.h5", tmp / f"mask{start}.h5", 0, cfg, spawn=spawn, example_weights=w)
    net = mg.Network(checkpoints.load(tmp / "m0.h5"))
    recipe = mg.Recipe(tmp / "base.h5", cfg, 0, start)
    state = mg.start_state(net, tmp / "m0.h5", start, tmp / "base.h5", cfg, 0)
    for weights, path in ((np.ones(N), tmp / "m0.h5"), (w, tmp / f"mask{start}.h5")):
        final = mg.run_epochs(net, recipe, state, weights)
        _, ref = artifacts.model_state(path)
        for k, v in {**final.params, **final.running}.items():
            assert np.array_equal(v.numpy(), ref[k]), k
    _, base = artifacts.model_state(tmp / "m0.h5")
    _, masked = artifacts.model_state(tmp / f"mask{start}.h5")
    assert not np.array_equal(base["fc.weight"], masked["fc.weight"])


def test_masked_twin_with_nothing_removed_is_the_base_run_bit_for_bit(run):
    tmp, cfg = run
    train.train_member(tmp / "base.h5", tmp / "ones.h5", 0, cfg, spawn=(tmp / "m0.h5", 1), example_weights=np.ones(N))
    _, base = artifacts.model_state(tmp / "m0.h5")
    _, ones = artifacts.model_state(tmp / "ones.h5")
    assert all(np.array_equal(base[k], ones[k]) for k in base)
    with pytest.raises(ValueError, match="not both"):
        train.train_member(tmp / "base.h5", tmp / "bad.h5", 0, cfg, train_indices=np.arange(N),
                           example_weights=np.ones(N))


def test_metagradient_matches_central_finite_differences_of_retraining(run):
    """dR/dw_i against (R(w_i = 1 + eps) - R(w_i = 1 - eps)) / 2 eps, retrained in float64 from
    the state after epoch 1 (2 epochs, 6 steps), for images in different batches."""
    tmp, cfg = run
    net = mg.Network(checkpoints.load(tmp / "m0.h5"), dtype=torch.float64)
    recipe = mg.Recipe(tmp / "base.h5", cfg, 0, 1)
    state = mg.start_state(net, tmp / "m0.h5", 1)
    reads = readouts(torch.float64)
    grads, values = mg.metagradients(net, recipe, state, reads)
    assert values == pytest.approx(mg.replay(net, recipe, state, np.ones(N), reads), rel=1e-12)
    eps, worst = 1e-6, 0.0
    for i in (0, 7, 20, 41):
        up, down = np.ones(N), np.ones(N)
        up[i], down[i] = 1 + eps, 1 - eps
        r_up, r_down = mg.replay(net, recipe, state, up, reads), mg.replay(net, recipe, state, down, reads)
        for key in reads:
            fd = (r_up[key] - r_down[key]) / (2 * eps)
            rel = abs(grads[key][i] - fd) / abs(fd)
            worst = max(worst, rel)
            assert rel < 1e-3, (i, key, grads[key][i], fd)
    print(f"worst relative error against central differences: {worst:.2e}")


def test_removing_one_image_changes_the_readout_by_the_predicted_amount(tmp_path, run):
    """w_i = 0 is a step of 1, not eps: the actual change is the linear prediction -dR/dw_i
    plus the linearisation error, which the test reports for every single-image removal
    (width 4, the recipe's learning rate, 6 steps). The logit readout must follow the
    prediction (Pearson at least 0.9); the pooled layer3 readout of 6 images is less linear
    (docs/method.md, "Metagradients"), so its agreement and error are printed, not asked."""
    tmp, cfg = run
    wide = {**cfg, "model": {**cfg["model"], "width": 4}}
    train.train_member(tmp / "base.h5", tmp_path / "m0.h5", 0, wide)
    net = mg.Network(checkpoints.load(tmp_path / "m0.h5"), dtype=torch.float64)
    recipe = mg.Recipe(tmp / "base.h5", wide, 0, 1)
    state = mg.start_state(net, tmp_path / "m0.h5", 1)
    reads = readouts(torch.float64)
    grads, values = mg.metagradients(net, recipe, state, reads)
    actual = {key: [] for key in reads}
    for i in range(N):
        w = np.ones(N)
        w[i] = 0
        after = mg.replay(net, recipe, state, w, reads)
        for key in reads:
            actual[key].append(after[key] - values[key])
    pearson = {}
    for key in reads:
        a, p = np.array(actual[key]), -grads[key]
        pearson[key] = float(np.corrcoef(a, p)[0, 1])
        print(f"{key}: removing one image, predicted vs actual change over {N} images: Pearson {pearson[key]:.3f}, "
              f"median linearisation error {np.median(np.abs(a - p) / np.abs(a)):.0%} of the change")
    assert pearson["logit"] >= 0.9

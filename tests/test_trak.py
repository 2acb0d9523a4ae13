"""TRAK: closed form on a linear model, sharding, shard checks, projector properties."""
import h5py
import numpy as np
import pytest
import torch
from trak.projectors import AbstractProjector

from workflow.atomic import CorruptFileError
from workflow.attribution import features as trak_features
from workflow.attribution import scores as trak_scores
from workflow.attribution.projection import factory
from workflow.attribution.projection.sparse import SparseJLProjector
from workflow.data import build as data
from workflow.model import checkpoints
from workflow.model.resnet import ScalableResNet18, to_input


# ---------------------------------------------------------------- closed form (no projection)
def margin_grad_by_hand(W, b, x, y):
    """d/d(W,b) of z_y - logsumexp_{j != y} z_j for z = W x + b, flattened like traker."""
    z = W @ x + b
    others = np.delete(np.arange(len(z)), y)
    q = np.zeros_like(z)
    q[others] = np.exp(z[others] - z[others].max()) / np.exp(z[others] - z[others].max()).sum()
    dz = -q
    dz[y] += 1.0
    return np.concatenate([np.outer(dz, x).ravel(), dz])


LAMBDA = 1e-3


def test_scores_with_projection_off_equal_the_closed_form():
    rng = np.random.default_rng(0)
    n, t, C = 80, 5, 3
    train_imgs = rng.integers(0, 256, (n, 2, 2, 3), dtype=np.uint8)
    train_y = rng.integers(0, C, n)
    target_imgs = rng.integers(0, 256, (t, 2, 2, 3), dtype=np.uint8)
    w_target = np.array([0.5, -1.0, 2.0])
    parts, hand_parts = [], []
    for m in range(2):  # two "models" of an ensemble
        torch.manual_seed(m)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, C))
        grads = factory.make("noop", model, 0, 0, "cpu")
        x, y = to_input(train_imgs), torch.as_tensor(train_y)
        feats, otl = trak_features.train_features(model, grads, x, y, model_id=m)
        wt = torch.tensor(w_target, dtype=torch.float32)
        g = trak_scores.target_gradients(model, grads, lambda net, img: net(img) @ wt, target_imgs, m, batch_size=2)
        # softmax margin gradients sum to zero over classes, so X^T X is singular: use a ridge
        parts.append((trak_features.x_xtx_inv(feats, LAMBDA)[0], g, otl))

        W = model[1].weight.detach().double().numpy()
        b = model[1].bias.detach().double().numpy()
        xs = x.reshape(n, -1).double().numpy()
        phi = np.stack([margin_grad_by_hand(W, b, xs[i], train_y[i]) for i in range(n)])
        probs = np.exp(xs @ W.T + b) / np.exp(xs @ W.T + b).sum(1, keepdims=True)
        otl_hand = 1 - probs[np.arange(n), train_y]
        xt = to_input(target_imgs).reshape(t, -1).double().numpy()
        g_hand = np.stack([np.concatenate([np.outer(w_target, xt[i]).ravel(), w_target]) for i in range(t)])
        np.testing.assert_allclose(feats, phi, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(otl, otl_hand, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(g, g_hand, rtol=1e-4, atol=1e-5)
        # the classification-margin targets (the LDS stage's literature readout), batched with their classes
        target_y = np.arange(t) % C
        gm = trak_scores.margin_gradients(model, grads, target_imgs, target_y, m, batch_size=2)
        np.testing.assert_allclose(gm, np.stack([margin_grad_by_hand(W, b, xt[i], target_y[i]) for i in range(t)]),
                                   rtol=1e-4, atol=1e-5)
        hand_parts.append((phi, g_hand, otl_hand))
    # TRAK by hand: tau(t, i) = mean_m [g_m(t)^T (Phi_m^T Phi_m)^-1 phi_m(i)] * mean_m out_to_loss_m(i)
    def ridge_inv(p):
        xtx = p.T @ p
        return np.linalg.inv(xtx + LAMBDA * np.diag(xtx).mean() * np.eye(len(xtx)))

    kernel = sum(g @ ridge_inv(p) @ p.T for p, g, _ in hand_parts) / 2
    expected = kernel * (sum(o for _, _, o in hand_parts) / 2)[None, :]
    got = trak_scores.combine(parts)
    assert got.shape == (t, n)
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())


# ---------------------------------------------------------------- sharding and gather checks
TCFG = {"proj_dim": 16, "proj_seed": 0, "projector": "sparse", "layer_dim": None, "device": "cpu", "precision": "float32",
        "batch_size": 8, "checkpoints": ["final"], "lambda_reg": 0.0}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("trak")
    cfg = {"seed": 0, "dataset": {"name": "synthetic", "image_size": 32,
                                  "synthetic": {"n_train": 30, "n_test": 5, "planted_fraction": 0.3}}}
    data.build_base(cfg, d / "base.h5")
    torch.manual_seed(0)
    model = ScalableResNet18(10, width=2, image_size=32).eval()
    checkpoints.save(d / "m0.h5", model, {}, {"test_acc": 0.0}, {})
    return d


def featurize_all(d, n_shards, tag, proj_seed_of_shard=None):
    paths = []
    for s in range(n_shards):
        seed = (proj_seed_of_shard or {}).get(s, 0)
        cfg = {"seed": 0, "trak": {**TCFG, "shards": n_shards, "proj_seed": seed}}
        p = d / f"{tag}_shard{s}.h5"
        trak_features.featurize(d / "m0.h5", d / "base.h5", {"final": p}, 0, s, cfg)
        paths.append(p)
    return paths


def test_sharded_features_equal_unsharded(tiny_model):
    d = tiny_model
    cfg = {"seed": 0, "trak": {**TCFG, "shards": 1}}
    trak_features.gather(featurize_all(d, 1, "one"), d / "one.h5", cfg)
    trak_features.gather(featurize_all(d, 3, "three"), d / "three.h5", {"seed": 0, "trak": {**TCFG, "shards": 3}})
    with h5py.File(d / "one.h5") as a, h5py.File(d / "three.h5") as b:
        assert a["grads"].shape == (30, 16)
        np.testing.assert_allclose(a["grads"][()], b["grads"][()], rtol=1e-4, atol=1e-5)  # batch-order rounding
        np.testing.assert_allclose(a["out_to_loss"][()], b["out_to_loss"][()], rtol=1e-6)
        np.testing.assert_allclose(a["x_xtx_inv"][()], b["x_xtx_inv"][()], rtol=1e-3, atol=1e-5)
        assert a.attrs["projector"] == "SparseJLProjector" and a.attrs["device_type"] == "cpu"


def test_gather_refuses_mismatched_shard(tiny_model):
    d = tiny_model
    paths = featurize_all(d, 3, "mixed", proj_seed_of_shard={1: 7})
    with pytest.raises(ValueError, match=r"mixed_shard1\.h5: shard does not match .*proj_seed = 7 vs 0"):
        trak_features.gather(paths, d / "mixed.h5", {"seed": 0, "trak": {**TCFG, "shards": 3}})


def test_gather_refuses_corrupted_or_missing_shard(tiny_model):
    d = tiny_model
    paths = featurize_all(d, 3, "bad")
    cfg = {"seed": 0, "trak": {**TCFG, "shards": 3}}
    with pytest.raises(ValueError, match="do not form 0..2"):
        trak_features.gather(paths[:2], d / "bad.h5", cfg)
    raw = paths[2].read_bytes()
    paths[2].write_bytes(raw[: len(raw) // 3])
    with pytest.raises(CorruptFileError, match=r"bad_shard2\.h5: corrupt or truncated HDF5 file, not used .*--forcerun "):
        trak_features.gather(paths, d / "bad.h5", cfg)
    assert not (d / "bad.h5").exists()


# ---------------------------------------------------------------- the sparse JL projector
def make_proj(grad_dim=5000, proj_dim=2048, seed=0):
    return SparseJLProjector(grad_dim, proj_dim, seed)


def test_sparse_projector_is_a_traker_projector_and_linear():
    p = make_proj()
    assert isinstance(p, AbstractProjector)
    g = torch.randn(4, 5000)
    h = torch.randn(4, 5000)
    torch.testing.assert_close(p.project(g + 2 * h, 0), p.project(g, 0) + 2 * p.project(h, 0), rtol=1e-4, atol=1e-4)
    as_dict = {"a": g[:, :1000].reshape(4, 10, 100), "b": g[:, 1000:]}
    torch.testing.assert_close(p.project(as_dict, 0), p.project(g, 0))


def test_sparse_projector_is_seeded_per_model_id():
    g = torch.randn(3, 5000)
    torch.testing.assert_close(make_proj().project(g, 1), make_proj().project(g, 1))
    assert not torch.allclose(make_proj().project(g, 1), make_proj().project(g, 2))
    assert not torch.allclose(make_proj(seed=0).project(g, 1), make_proj(seed=1).project(g, 1))


def test_sparse_projector_preserves_squared_norms_in_expectation():
    g = torch.randn(200, 20000)
    ratios = make_proj(20000, 2048).project(g, 0).pow(2).sum(1) / g.pow(2).sum(1)
    assert abs(ratios.mean().item() - 1) < 0.01
    assert ratios.std().item() < 0.06  # about sqrt(2 / proj_dim)


def test_sparse_projector_csr_product_equals_the_scatter_adds():
    """The GPU's default way (the map as per-part CSR matrices) applies exactly the map the
    CPU's scatter-adds apply, including coordinates hashed twice to one bucket."""
    parts = [torch.randn(6, 3000), torch.randn(6, 17), torch.randn(6, 40000)]
    csr = SparseJLProjector(43017, 64, 2, method="csr")
    scatter = SparseJLProjector(43017, 64, 2, method="scatter")
    assert SparseJLProjector(10, 4, 0).method == "scatter"          # auto on the CPU
    a, b = scatter.project_parts(parts, 3), csr.project_parts(parts, 3)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * a.abs().max().item())
    torch.testing.assert_close(csr.project(torch.cat(parts, 1), 3), a, rtol=1e-5, atol=1e-5 * a.abs().max().item())
    assert not torch.allclose(csr.project_parts(parts, 4), b)       # a new model id: a new map
    with pytest.raises(ValueError, match="method"):
        SparseJLProjector(10, 4, 0, method="dense")


def test_scoring_every_target_set_in_one_pass_equals_one_set_at_a_time():
    """``Ensemble`` with several target sets gives each set the bytes ``combine`` gives it alone."""
    r = np.random.default_rng(1)
    models = [(r.normal(size=(50, 8)).astype(np.float32), {k: r.normal(size=(3 + k, 8)).astype(np.float32)
                                                           for k in range(3)}, r.random(50).astype(np.float32))
              for _ in range(3)]
    ens = trak_scores.Ensemble()
    for x, g, o in models:
        ens.add(x, g, o)
    for k in range(3):
        alone = trak_scores.combine((x, g[k], o) for x, g, o in models)
        assert np.array_equal(ens.scores(k), alone) and alone.shape == (3 + k, 50)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_scores_on_cuda_match_the_cpu():
    r = np.random.default_rng(2)
    models = [(r.normal(size=(200, 16)), {0: r.normal(size=(5, 16))}, r.random(200)) for _ in range(2)]
    cpu, gpu = trak_scores.Ensemble(), trak_scores.Ensemble("cuda")
    for x, g, o in models:
        cpu.add(x, g, o)
        gpu.add(x, g, o)
    np.testing.assert_allclose(gpu.scores(0), cpu.scores(0), rtol=1e-10, atol=1e-12)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_sparse_projector_cpu_and_gpu_agree():
    g = torch.randn(8, 50000)
    cpu = SparseJLProjector(50000, 512, 3, device="cpu").project(g, 5)
    gpu = SparseJLProjector(50000, 512, 3, device="cuda").project(g.cuda(), 5).cpu()
    torch.testing.assert_close(cpu, gpu, rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("projector", ["factored", "sparse"])
def test_featurize_on_cuda_matches_cpu(tiny_model, projector):
    d = tiny_model
    out = {}
    for device in ("cpu", "cuda"):
        cfg = {"seed": 0, "trak": {**TCFG, "projector": projector, "device": device, "shards": 1}}
        trak_features.featurize(d / "m0.h5", d / "base.h5", {"final": d / f"gpu_{projector}_{device}.h5"}, 0, 0,
                                cfg)
        with h5py.File(d / f"gpu_{projector}_{device}.h5") as f:
            out[device] = (f["grads"][()], f["out_to_loss"][()], f.attrs["device_type"])
    assert out["cuda"][2] == "cuda"
    np.testing.assert_allclose(out["cuda"][0], out["cpu"][0], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(out["cuda"][1], out["cpu"][1], rtol=1e-4, atol=1e-5)


def test_x_xtx_inv_in_n_by_n_form_when_features_outnumber_images():
    from workflow.attribution.features import x_xtx_inv

    r = np.random.default_rng(0)
    wide = r.normal(size=(30, 80))            # k > n: computed as (X X^T + lam I)^-1 X
    got, lam = x_xtx_inv(wide, 0.1)
    assert lam == pytest.approx(0.1 * (wide ** 2).sum() / 80)
    np.testing.assert_allclose(got, wide @ np.linalg.inv(wide.T @ wide + lam * np.eye(80)), atol=1e-10)
    tall = r.normal(size=(80, 30))            # k <= n: the k x k form, as traker
    got, lam = x_xtx_inv(tall, 0.0)
    assert lam == 0
    np.testing.assert_allclose(got, tall @ np.linalg.inv(tall.T @ tall), atol=1e-10)
    got, _ = x_xtx_inv(wide, 0.0)             # no ridge and k > n: the pseudo-inverse
    np.testing.assert_allclose(got, wide @ np.linalg.pinv(wide.T @ wide), atol=1e-8)

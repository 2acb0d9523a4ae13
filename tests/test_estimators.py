"""The estimator registry: each estimator against its formula computed by hand."""
import numpy as np
import pytest
import torch

from workflow.attribution import estimators
from workflow.attribution import features as trak_features
from workflow.attribution import scores as trak_scores
from workflow.attribution.projection import factory
from workflow.model.resnet import to_input

N, T, TN, C = 12, 3, 2, 3


class TinyNet(torch.nn.Module):
    """A convolution, a ReLU and a linear head: small enough for per-example autograd."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 2, 3)
        self.fc = torch.nn.Linear(8, C)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def exact_gradient(model, fn) -> np.ndarray:
    """The exact gradient of a scalar, parameters flattened in ``named_parameters`` order."""
    model.zero_grad()
    fn().backward()
    return np.concatenate([p.grad.detach().double().numpy().ravel() for _, p in model.named_parameters()])


@pytest.fixture(scope="module")
def two_models():
    """Per model (two checkpoints of one member, then a second member): the stored features
    through the workflow's own path (noop projector: exact per-example gradients), the
    target gradients of a fixed linear readout, and the same computed by hand."""
    r = np.random.default_rng(0)
    train = r.integers(0, 256, (N, 4, 4, 3), dtype=np.uint8)
    y = r.integers(0, C, N)
    both = r.integers(0, 256, (T + TN, 4, 4, 3), dtype=np.uint8)      # targets, then negatives
    w = torch.tensor([0.5, -1.0, 2.0])
    out = []
    for m, (member, ckpt) in enumerate([(0, "epoch_0001"), (0, "final"), (1, "final")]):
        model = TinyNet(m).double()
        grads = factory.make("noop", model, 0, 0, "cpu", dtype=torch.float64)
        x = to_input(train).double()
        phi, otl = trak_features.train_features(model, grads, x, torch.as_tensor(y), model_id=m)
        g = trak_scores.target_gradients(model, grads, lambda net, img: net(img.double()) @ w.double(), both, m, 2)
        xb = to_input(both).double()
        phi_hand = np.stack([exact_gradient(model, lambda i=i: trak_features.margin(model(x[i:i + 1]),
                                                                                  torch.as_tensor(y[i:i + 1]))[0])
                             for i in range(N)])
        g_hand = np.stack([exact_gradient(model, lambda i=i: (model(xb[i:i + 1]) @ w.double())[0])
                           for i in range(T + TN)])
        # the stored features and target gradients are the exact per-example gradients (stored as float32)
        np.testing.assert_allclose(phi, phi_hand, rtol=1e-5, atol=1e-7 * np.abs(phi_hand).max())
        np.testing.assert_allclose(g, g_hand, rtol=1e-5, atol=1e-7 * np.abs(g_hand).max())
        x_inv, _ = trak_features.x_xtx_inv(phi, 0.1)
        out.append({"ck": estimators.Checkpoint(member, ckpt, phi, x_inv, otl, {"k": g},
                                                lr_weight=[0.3, 0.05, 0.05][m]),
                    "phi": np.asarray(phi, np.float64), "g": np.asarray(g, np.float64),
                    "otl": np.asarray(otl, np.float64)})
    return out


def run(name, models, seed=0):
    est = estimators.make(name, seed)
    for m in models:
        est.add(m["ck"])
    return est.scores("k", T, N)


def test_grad_dot_is_the_mean_over_models_of_exact_gradient_dot_products(two_models):
    per_target, per_negative = run("grad_dot", two_models)
    by_hand = np.mean([m["g"] @ m["phi"].T for m in two_models], axis=0)
    np.testing.assert_allclose(per_target, by_hand[:T], rtol=1e-9)
    np.testing.assert_allclose(per_negative, by_hand[T:], rtol=1e-9)


def test_grad_cos_is_the_mean_cosine(two_models):
    per_target, _ = run("grad_cos", two_models)
    by_hand = np.zeros((T, N))
    for m in two_models:
        for t in range(T):
            for i in range(N):
                a, b = m["g"][t], m["phi"][i]
                by_hand[t, i] += a @ b / np.linalg.norm(a) / np.linalg.norm(b) / len(two_models)
    np.testing.assert_allclose(per_target, by_hand, rtol=1e-9)


def test_tracin_is_the_lr_weighted_sum_over_checkpoints_of_loss_gradient_products(two_models):
    """TracIn-CP: sum over checkpoints of eta * grad loss(i) . grad f(t), averaged over the
    members; the loss gradient is -(1 - p) times the margin's, and removing i undoes a step
    down its loss, so the score carries +(1 - p) phi . g."""
    per_target, _ = run("tracin", two_models)
    by_hand = np.zeros((T, N))
    for m in two_models:
        eta = m["ck"].lr_weight
        for t in range(T):
            for i in range(N):
                by_hand[t, i] += eta * m["otl"][i] * (m["phi"][i] @ m["g"][t])
    by_hand /= 2                                                       # two members
    np.testing.assert_allclose(per_target, by_hand, rtol=1e-9)


def test_trak_in_the_registry_is_the_ensemble_rule(two_models):
    per_target, _ = run("trak", two_models)
    expected = trak_scores.combine((m["ck"].x_inv, m["g"], m["otl"]) for m in two_models)
    np.testing.assert_allclose(per_target, expected[:T], rtol=1e-7)


def test_baselines_hardest_random_and_similarity(two_models):
    hardest, neg = run("hardest", two_models)
    assert neg is None and np.allclose(hardest, np.mean([m["otl"] for m in two_models], 0)[None, :])
    a, _ = run("random", two_models, seed=3)
    b, _ = run("random", two_models, seed=3)
    c, _ = run("random", two_models, seed=4)
    assert a.shape == (T, N) and np.array_equal(a, b) and not np.array_equal(a, c)

    r = np.random.default_rng(1)
    sim = estimators.make("similarity")
    acts = [r.normal(size=(N, 5)) for _ in range(2)]
    tacts = [r.normal(size=(T + TN, 5)) for _ in range(2)]
    for m in range(2):
        sim.add(estimators.Checkpoint(m, "final", None, None, np.zeros(N), {}, acts={"layerX": acts[m]},
                                      target_acts={"keys": {"k": ("layerX", T)}, "k": tacts[m]}))
    per_target, per_negative = sim.scores("k", T, N)

    def cos(a, b):
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    by_hand = np.mean([[cos(acts[m][i], tacts[m][:T].mean(0)) for i in range(N)] for m in range(2)], 0)
    neg_hand = np.mean([[cos(acts[m][i], tacts[m][T:].mean(0)) for i in range(N)] for m in range(2)], 0)
    np.testing.assert_allclose(per_target, np.broadcast_to(by_hand, (T, N)), rtol=1e-12)
    np.testing.assert_allclose(per_negative, np.broadcast_to(neg_hand, (TN, N)), rtol=1e-12)
    assert sim.scores("margin", T, N) == (None, None)           # no activations of a margin


def test_tracin_step_weights_replay_the_one_cycle_schedule():
    """4 epochs of 10 steps: a linear warm-up from lr/25 to lr over steps 0..9, then a linear
    anneal to lr/25/1e4 at step 39 (OneCycleLR's defaults, written out by hand)."""
    lr, total, up = 0.1, 40, 9
    initial, final = lr / 25, lr / 25 / 1e4
    rates = [initial + (lr - initial) * s / up if s <= up else lr + (final - lr) * (s - up) / (total - 1 - up)
             for s in range(total)]
    w = estimators.lr_weights(["epoch_0002", "final"], 4, 10, {"lr": lr})
    np.testing.assert_allclose(w["epoch_0002"], sum(rates[:20]), rtol=1e-6)
    np.testing.assert_allclose(w["final"], sum(rates[20:]), rtol=1e-6)


def test_tracin_step_weights_follow_the_cosine_schedule():
    """train.schedule cosine: linear warm-up over 4 of 40 steps, then cosine decay to 0."""
    lr, total, warm = 0.1, 40, 4
    rates = [lr * (s + 1) / warm if s < warm else lr * 0.5 * (1 + np.cos(np.pi * (s - warm) / (total - warm)))
             for s in range(total)]
    w = estimators.lr_weights(["epoch_0002", "final"], 4, 10, {"lr": lr, "optimizer": "adamw", "schedule": "cosine",
                                                               "warmup": 0.1})
    np.testing.assert_allclose(w["epoch_0002"], sum(rates[:20]), rtol=1e-6)
    np.testing.assert_allclose(w["final"], sum(rates[20:]), rtol=1e-6)


def test_the_config_schema_names_exactly_the_registry():
    from workflow.config import schema as config_schema

    schema = config_schema()["properties"]
    for block in ("attribution", "ablation", "lds"):
        assert tuple(schema[block]["properties"]["estimators"]["items"]["enum"]) == estimators.NAMES
    with pytest.raises(ValueError, match="unknown estimator 'magic'"):
        estimators.make("magic")


# -- EK-FAC (kronfluence) ---------------------------------------------------------------------

def _ekfac_setup():
    """Two members of the tiny net (float32, as the workflow trains), a training set and a
    fixed linear readout of the logits."""
    r = np.random.default_rng(1)
    x = to_input(r.integers(0, 256, (N, 4, 4, 3), dtype=np.uint8))
    y = torch.as_tensor(r.integers(0, C, N))
    train = torch.utils.data.TensorDataset(x, y)
    queries = r.integers(0, 256, (T + TN, 4, 4, 3), dtype=np.uint8)
    w = torch.tensor([0.5, -1.0, 2.0])
    return [TinyNet(10 + m) for m in range(2)], train, queries, w


def _ekfac_checkpoint(member, model, train, queries, w):
    readouts = {"k": (lambda net, img: net(img) @ w, queries, None)}
    return estimators.Checkpoint(member, "final", None, None, np.zeros(N), {}, rows={"k": len(queries)},
                                 final={"model": model, "readouts": readouts, "train": train, "size": None,
                                        "batch_size": 5, "device": torch.device("cpu")})


def test_ekfac_is_the_librarys_own_influence_in_trak_sign_averaged_over_members():
    """The registry's ekfac against kronfluence called directly (its documented Analyzer API,
    a task written here): -mean over members of the library's pairwise scores, the same
    bytes on a second run (the Fisher's sampled labels are seeded)."""
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    models, train, queries, w = _ekfac_setup()
    est = estimators.make("ekfac", seed=3)
    again = estimators.make("ekfac", seed=3)
    for m, model in enumerate(models):
        est.add(_ekfac_checkpoint(m, model, train, queries, w))
        again.add(_ekfac_checkpoint(m, model, train, queries, w))
    per_target, per_negative = est.scores("k", T, N)
    assert np.array_equal(per_target, again.scores("k", T, N)[0])

    class Direct(Task):
        def __init__(self):
            self.gen = torch.Generator().manual_seed(3)

        def compute_train_loss(self, batch, model, sample=False):
            xb, yb = batch
            logits = model(xb)
            if sample:
                yb = torch.multinomial(torch.softmax(logits.detach().double(), -1), 1, generator=self.gen)[:, 0]
            return torch.nn.functional.cross_entropy(logits, yb, reduction="sum")

        def compute_measurement(self, batch, model):
            return (model(batch[0]) @ w).sum()

    import copy
    import tempfile

    library = []
    for model in models:
        torch.manual_seed(3)
        task = Direct()
        net = prepare_model(copy.deepcopy(model).eval(), task)
        with tempfile.TemporaryDirectory() as tmp:
            an = Analyzer("direct", net, task, cpu=True, disable_tqdm=True, output_dir=tmp)
            an.fit_all_factors("f", train, per_device_batch_size=5, factor_args=FactorArguments(strategy="ekfac"))
            q = torch.utils.data.TensorDataset(to_input(queries), torch.zeros(len(queries)))
            an.compute_pairwise_scores("s", "f", q, train, per_device_query_batch_size=len(queries),
                                       per_device_train_batch_size=5, score_args=ScoreArguments(damping_factor=None))
            library.append(an.load_pairwise_scores("s")["all_modules"].double().numpy())
    expected = -np.mean(library, axis=0)
    assert np.abs(expected).max() > 0 and not np.allclose(library[0], library[1])   # two different members
    np.testing.assert_allclose(per_target, expected[:T], rtol=1e-6, atol=1e-9 * np.abs(expected).max())
    np.testing.assert_allclose(per_negative, expected[T:], rtol=1e-6, atol=1e-9 * np.abs(expected).max())


def test_ekfac_with_a_huge_damping_is_the_exact_gradient_product():
    """As the damping lam grows, (G + lam I)^-1 -> I / lam, so lam x ekfac -> -grad f(q) . grad
    L(i) = grad f(q) . grad log p(y_i | x_i), by exact autograd: the sign (TRAK's: a positive
    score supports the readout) and the plumbing, independently of the library's curvature."""
    from workflow.attribution import ekfac

    models, train, queries, w = _ekfac_setup()
    model, lam = models[0], 1e7
    got = ekfac.influence(model, train, {"k": (lambda net, img: net(img) @ w, queries, None)}, seed=0,
                          batch_size=5, damping=lam)["k"] * lam
    xq = to_input(queries)
    g_q = np.stack([exact_gradient(model, lambda t=t: (model(xq[t:t + 1]) @ w)[0]) for t in range(len(queries))])
    g_i = np.stack([exact_gradient(model, lambda i=i: torch.log_softmax(model(train[i][0][None]), -1)[0, train[i][1]])
                    for i in range(N)])
    by_hand = g_q @ g_i.T
    np.testing.assert_allclose(got, by_hand, rtol=2e-3, atol=2e-4 * np.abs(by_hand).max())

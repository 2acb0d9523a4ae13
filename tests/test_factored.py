"""The factored projector: a linear, seeded map; its hook path equals projecting exact gradients."""
import numpy as np
import pytest
import torch
from trak.gradient_computers import FunctionalGradientComputer
from trak.modelout_functions import ImageClassificationModelOutput
from trak.projectors import AbstractProjector
from trak.utils import vectorize

from workflow.attribution import scores
from workflow.attribution.features import margin, train_features
from workflow.attribution.projection import factory
from workflow.attribution.projection.factored import FactoredProjector
from workflow.attribution.projection.gradients import HookGradients, PerExampleGradients
from workflow.attribution.projection.sparse import SparseJLProjector
from workflow.model.resnet import ScalableResNet18
from workflow.probing.probe_function import ProbeOutput


@pytest.fixture(scope="module")
def net():
    """Width-4 ResNet-18 in eval mode with non-trivial BatchNorm statistics and affine terms."""
    torch.manual_seed(0)
    model = ScalableResNet18(10, width=4, image_size=32).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.3)
                m.bias.normal_(0, 0.3)
    return model


def grad_dim(model):
    return sum(p.numel() for p in model.parameters())


def exact_margin_grads(model, x, y):
    gc = FunctionalGradientComputer(model, ImageClassificationModelOutput(), grad_dim(model), torch.float32, "cpu")
    return vectorize(gc.compute_per_sample_grad((x, y)), device="cpu"), gc


def batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_is_a_traker_projector_and_a_linear_map(net):
    p = FactoredProjector(net, 512, 0, layer_dim=256)
    assert isinstance(p, AbstractProjector)
    assert p.inner_dim < grad_dim(net) / 5         # the per-layer stage already compresses
    g, h = torch.randn(4, grad_dim(net)), torch.randn(4, grad_dim(net))
    torch.testing.assert_close(p.project(g + 2 * h, 0), p.project(g, 0) + 2 * p.project(h, 0), rtol=1e-4, atol=1e-4)


def test_hook_path_equals_projecting_the_exact_per_example_gradients(net):
    x, y = batch()
    full, _ = exact_margin_grads(net, x, y)
    for layer_dim in (64, None):   # both sides projected at most weights / every weight exact
        p = FactoredProjector(net, 256, 3, layer_dim=layer_dim)
        fast, margins = p.featurize(net, lambda m, xb: margin(m(xb), y), x, model_id=7)
        torch.testing.assert_close(fast, p.project(full, 7), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(margins, margin(net(x), y).detach())


def test_hook_path_for_a_probe_output_leaves_later_layers_at_zero(net):
    probe = {"coef": np.linspace(-1, 1, 8), "mean": np.full(8, 0.1), "scale": np.full(8, 2.0), "intercept": 0.5}
    fn = ProbeOutput(probe, "layer2")
    images = (np.random.default_rng(0).random((5, 32, 32, 3)) * 255).astype(np.uint8)
    p = FactoredProjector(net, 128, 0, layer_dim=64)
    noop = factory.make("noop", net, 0, 0, "cpu")
    exact = torch.as_tensor(scores.target_gradients(net, noop, fn, images, 2, batch_size=5))
    later = [n.startswith(("layer3", "layer4", "fc")) for n, q in net.named_parameters() for _ in range(q.numel())]
    assert exact[:, torch.tensor(later)].abs().max() == 0 and exact.abs().max() > 0
    fast = scores.target_gradients(net, HookGradients(p), fn, images, 2, batch_size=3)
    torch.testing.assert_close(torch.as_tensor(fast), p.project(exact, 2), rtol=1e-4, atol=1e-5)


def test_with_exact_layers_it_is_the_sparse_projector(net):
    """layer_dim None: the same map as SparseJLProjector on the full gradient, without vmap."""
    x, y = batch(5, seed=3)
    full, _ = exact_margin_grads(net, x, y)
    fast, _ = FactoredProjector(net, 512, 4).featurize(net, lambda m, xb: margin(m(xb), y), x, model_id=9)
    sparse = SparseJLProjector(grad_dim(net), 512, 4).project(full, 9)
    torch.testing.assert_close(fast, sparse, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(fast, SparseJLProjector(grad_dim(net), 512, 4).project(full, 8))


def test_train_features_match_traker_out_to_loss(net):
    x, y = batch(5, seed=1)
    _, gc = exact_margin_grads(net, x, y)
    p = FactoredProjector(net, 64, 0)
    feats, otl = train_features(net, HookGradients(p), x, y, 0)
    assert feats.shape == (5, 64)
    np.testing.assert_allclose(otl, gc.compute_loss_grad((x, y)).numpy().ravel(), rtol=1e-5, atol=1e-6)


def test_seeded_per_seed_and_model_id(net):
    g = torch.randn(3, grad_dim(net))

    def proj(seed, mid):
        return FactoredProjector(net, 256, seed, layer_dim=64).project(g, mid)

    torch.testing.assert_close(proj(0, 1), proj(0, 1))
    assert not torch.allclose(proj(0, 1), proj(0, 2))
    assert not torch.allclose(proj(0, 1), proj(1, 1))


def test_preserves_squared_norms_in_expectation(net):
    """Over maps (model ids), E ||P g||^2 = ||g||^2 for real per-example gradients."""
    x, y = batch(4, seed=2)
    full, _ = exact_margin_grads(net, x, y)
    p = FactoredProjector(net, 2048, 0, layer_dim=256)
    ratios = torch.stack([p.project(full, mid).pow(2).sum(1) / full.pow(2).sum(1) for mid in range(60)])
    assert abs(ratios.mean().item() - 1) < 0.03
    assert ratios.std().item() < 0.25


def test_refuses_training_mode(net):
    x, y = batch(2)
    net.train()
    try:
        with pytest.raises(ValueError, match="eval mode"):
            FactoredProjector(net, 16, 0).featurize(net, lambda m, xb: margin(m(xb), y), x, 0)
    finally:
        net.eval()


SMALL_NETS = {
    # GroupNorm has no hook formula: its parameters take vmap's exact per-example gradients
    "groupnorm": (lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.Flatten(),
                                              torch.nn.Linear(4 * 30 * 30, 5)), 3, ["1.weight", "1.bias"]),
    # grouped and depthwise convolutions: hooked, per group
    "grouped": (lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1, groups=3),
                                            torch.nn.Conv2d(6, 6, 3, groups=6, bias=False), torch.nn.Flatten(),
                                            torch.nn.Linear(6 * 30 * 30, 5)), 3, []),
}


@pytest.mark.parametrize("name", SMALL_NETS)
def test_hooks_and_the_exact_per_example_path_together_are_the_linear_map(name):
    """Whatever takes which path, the features equal the exact per-example gradients
    projected by the same map."""
    torch.manual_seed(0)
    build, channels, per_example = SMALL_NETS[name]
    net = build().eval()
    p = FactoredProjector(net, 64, 0)
    assert p.per_example == per_example
    x = torch.rand(3, channels, 32, 32)
    fast, _ = p.featurize(net, lambda m, xb: m(xb)[:, 2], x, 0)
    params = {k: v.detach() for k, v in net.named_parameters()}
    exact = torch.func.vmap(torch.func.grad(lambda ps, xi: torch.func.functional_call(net, ps, (xi[None],))[0, 2]),
                            in_dims=(None, 0))(params, x)
    torch.testing.assert_close(fast, p.project(vectorize(exact, device="cpu"), 0), rtol=1e-4, atol=1e-5)


def test_auto_picks_the_factored_projector(net):
    auto = factory.make("auto", net, 64, 0, "cpu")
    assert isinstance(auto, HookGradients) and isinstance(auto.projector, FactoredProjector)
    assert auto.projector.per_example == []                    # every ResNet-18 module has hooks
    sparse = factory.make("sparse", net, 64, 0, "cpu")
    assert isinstance(sparse, PerExampleGradients) and isinstance(sparse.projector, SparseJLProjector)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cpu_and_gpu_agree(net):
    x, y = batch(8)
    cpu = FactoredProjector(net, 512, 3, layer_dim=64).featurize(net, lambda m, xb: margin(m(xb), y), x, 5)[0]
    gnet = ScalableResNet18(10, width=4, image_size=32).eval().cuda()
    gnet.load_state_dict(net.state_dict())
    yc = y.cuda()
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):   # as runtime.configure on cuda
        gpu = FactoredProjector(gnet, 512, 3, device="cuda", layer_dim=64).featurize(
            gnet, lambda m, xb: margin(m(xb), yc), x.cuda(), 5)[0].cpu()
    torch.testing.assert_close(cpu, gpu, rtol=1e-3, atol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_probe_target_gradients_on_cpu_and_gpu_agree(net):
    probe = {"coef": np.linspace(-1, 1, 16), "mean": np.full(16, 0.1), "scale": np.full(16, 2.0), "intercept": 0.5}
    images = (np.random.default_rng(1).random((6, 32, 32, 3)) * 255).astype(np.uint8)
    cpu = scores.target_gradients(net, HookGradients(FactoredProjector(net, 256, 1)), ProbeOutput(probe, "layer3"),
                                  images, 4, 3)
    gnet = ScalableResNet18(10, width=4, image_size=32).eval().cuda()
    gnet.load_state_dict(net.state_dict())
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        gpu = scores.target_gradients(gnet, HookGradients(FactoredProjector(gnet, 256, 1, device="cuda")),
                                      ProbeOutput(probe, "layer3", device="cuda"), images, 4, 3)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-4)

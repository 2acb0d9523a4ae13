import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from workflow.attribution.projection.gradients import per_example_output
from workflow.model.resnet import ScalableResNet18, to_input
from workflow.probing import probes
from workflow.probing.probe_function import ProbeOutput


def test_probe_as_torch_function_equals_sklearn_decision_function():
    torch.manual_seed(0)
    model = ScalableResNet18(10, width=4, image_size=32).eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (80, 32, 32, 3), dtype=np.uint8)
    model = model.double()
    with torch.no_grad():
        feats = model.pooled(to_input(images).double(), ["layer2"])["layer2"].numpy()
    y = (feats[:, 0] > np.median(feats[:, 0])).astype(int)
    probe = probes.fit_dense(feats, y, [1.0], seed=0)

    scaler = StandardScaler().fit(feats)
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(scaler.transform(feats), y)
    np.testing.assert_allclose(probe["mean"], scaler.mean_, rtol=1e-10)
    expected = clf.decision_function(scaler.transform(feats))

    f = ProbeOutput(probe, "layer2", dtype=torch.float64)
    with torch.no_grad():
        got = f(model, to_input(images).double()).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got, probes.decision_function(probe, feats), atol=1e-8)


def test_per_example_gradients_under_vmap_match_single_example_gradients():
    torch.manual_seed(1)
    model = ScalableResNet18(10, width=4, image_size=32).eval()
    probe = {"coef": np.linspace(-1, 1, 8), "mean": np.full(8, 0.1), "scale": np.full(8, 2.0), "intercept": 0.5}
    fn = ProbeOutput(probe, "layer2")
    f = per_example_output(model, fn)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        values = torch.func.vmap(f, in_dims=(None, None, 0))(params, buffers, x)
        torch.testing.assert_close(values, fn(model, x))
    grads = torch.func.vmap(torch.func.grad(f), in_dims=(None, None, 0))(params, buffers, x)
    x1 = x[1:2].clone()
    model.zero_grad()
    fn(model, x1).sum().backward()
    for k, p in model.named_parameters():
        expected = p.grad if p.grad is not None else torch.zeros_like(p)  # layers after layer2
        torch.testing.assert_close(grads[k][1], expected, rtol=1e-4, atol=1e-6)
    assert set(grads) == set(params)  # the probe adds no parameters

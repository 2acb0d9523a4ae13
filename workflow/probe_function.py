"""A fitted concept probe as a differentiable function of the network (TRAK's target).

For concept c, layer l and model m the target output is
    probe_{c,l,m}(standardise(pool(h_l(x))))
a scalar per image whose value equals the scikit-learn probe's decision function. The
probe's weights are plain tensors, not parameters, so they add nothing to the gradient
dimension (see SPEC.md, traker notes); the function uses arithmetic only, so it runs
per example under ``torch.func.vmap``.
"""
from __future__ import annotations

import numpy as np
import torch


class ProbeOutput:
    """Callable ``(model, x) -> [B]`` decision values of a standardised linear probe."""

    def __init__(self, probe: dict, layer: str, dtype=torch.float32, device="cpu"):
        coef = np.asarray(probe["coef"], dtype=np.float64)
        scale = np.asarray(probe["scale"], dtype=np.float64)
        # fold the standardisation into the weights: (p - mean) / scale . w + b = p . w' + b'
        self.weight = torch.as_tensor(coef / scale, dtype=dtype, device=device)
        self.bias = torch.as_tensor(float(probe["intercept"]) - float(np.dot(probe["mean"], coef / scale)),
                                    dtype=dtype, device=device)
        self.layer = layer

    def pooled(self, model, x: torch.Tensor) -> torch.Tensor:
        return model.pooled(x, [self.layer])[self.layer]

    def __call__(self, model, x: torch.Tensor) -> torch.Tensor:
        return self.pooled(model, x) @ self.weight + self.bias


class _Output(torch.nn.Module):
    """Wraps a model so ``forward(x)`` returns ``fn(model, x)``."""

    def __init__(self, model, fn):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, x):
        return self.fn(self.model, x)


def per_example_output(model, fn):
    """``f(params, buffers, x) -> scalar`` for one image ``x`` [3,H,W], for torch.func,
    from a batched ``fn(model, x) -> [B]`` such as a ``ProbeOutput``.

    ``params``/``buffers`` are dicts keyed like ``model.named_parameters()``;
    ``torch.func.vmap(torch.func.grad(f), in_dims=(None, None, 0))`` gives per-example
    gradients of the output with respect to the network's parameters.
    """
    wrapped = _Output(model, fn)

    def f(params, buffers, x):
        state = {f"model.{k}": v for k, v in {**params, **buffers}.items()}
        return torch.func.functional_call(wrapped, state, (x.unsqueeze(0),))[0]

    return f

"""A fitted concept probe as a differentiable function of the network (TRAK's target).

For concept c, layer l and model m the target output is
    probe_{c,l,m}(standardise(pool(h_l(x))))
a scalar per image whose value equals the scikit-learn probe's decision function. The
probe's weights are plain tensors, not parameters, so they add nothing to the gradient
dimension and its normalisation; the function uses arithmetic only, so it runs
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

    def through_logits(self, model, x: torch.Tensor) -> torch.Tensor:
        """The same values from one full forward pass, with the logits' zero contribution kept
        in the graph: every layer then gets a gradient (zero past the probed layer), as
        per-layer curvature hooks (EK-FAC's) need."""
        out = model.pooled(x, [self.layer, "logits"])
        return out[self.layer] @ self.weight + self.bias + 0.0 * out["logits"].sum(-1)

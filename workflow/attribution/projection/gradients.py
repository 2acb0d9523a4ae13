"""One interface for projected per-example gradients of a batched output.

``output_fn(model, x, *aux) -> [B]`` is any per-example scalar (the classification
margin of the train side, a probe's decision value on the target side); ``aux`` are
per-example tensors it needs (labels). Examples must not interact (the model is in eval
mode). Both implementations return (projected gradients [B, k], outputs [B]) and apply
the same random map for the same (seed, model_id).
"""
from __future__ import annotations

import torch
from trak.utils import vectorize


class ProjectedGradients:
    """``grads(model, output_fn, x, *aux, model_id=...) -> ([B, k], [B])``."""

    name = "abstract"

    def __init__(self, projector):
        self.projector = projector

    @property
    def proj_dim(self) -> int:
        return int(self.projector.proj_dim)

    def __call__(self, model, output_fn, x: torch.Tensor, *aux, model_id: int):
        raise NotImplementedError


class HookGradients(ProjectedGradients):
    """The factored projector: layer factors from forward/backward hooks of one batched pass."""

    def __call__(self, model, output_fn, x, *aux, model_id: int):
        return self.projector.featurize(model, output_fn, x, model_id, aux)


class _Output(torch.nn.Module):
    """Wraps a model so ``forward(x, *aux)`` returns ``fn(model, x, *aux)``: under
    ``torch.func.functional_call`` every method ``fn`` calls sees the swapped weights."""

    def __init__(self, model, fn):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, x, *aux):
        return self.fn(self.model, x, *aux)


def per_example_output(model, fn):
    """``f(params, buffers, x, *aux) -> scalar`` for one image ``x`` [3,H,W] (and its aux
    values), for torch.func, from a batched ``fn(model, x, *aux) -> [B]``.

    ``params``/``buffers`` are dicts keyed like ``model.named_parameters()``;
    ``torch.func.vmap(torch.func.grad(f), in_dims=(None, None, 0))`` gives per-example
    gradients of the output with respect to the network's parameters.
    """
    wrapped = _Output(model, fn)

    def f(params, buffers, x, *aux):
        state = {f"model.{k}": v for k, v in {**params, **buffers}.items()}
        return torch.func.functional_call(wrapped, state, (x.unsqueeze(0), *[a.unsqueeze(0) for a in aux]))[0]

    return f


class PerExampleGradients(ProjectedGradients):
    """Per-example gradients under ``torch.func.vmap``, flattened and projected (any
    traker ``AbstractProjector``). ``dtype`` is the precision the gradients are projected in."""

    def __init__(self, projector, dtype=torch.float32):
        super().__init__(projector)
        self.dtype = dtype

    def __call__(self, model, output_fn, x, *aux, model_id: int):
        params = {k: v.detach() for k, v in model.named_parameters()}
        buffers = {k: v.detach() for k, v in model.named_buffers()}
        f = torch.func.grad_and_value(per_example_output(model, output_fn))
        grads, outputs = torch.func.vmap(f, in_dims=(None, None, 0) + (0,) * len(aux))(params, buffers, x, *aux)
        flat = vectorize(grads, device=x.device).to(self.dtype)
        return self.projector.project(flat, model_id), outputs.detach()

"""Per-example gradients layer by layer from forward/backward hooks, projected without
ever forming a per-example full gradient (the ``factored`` projector).

For a weight W [C_out, C_in, kh, kw] (or [C_out, C_in]) the per-example gradient of a
scalar output is the product of two factors the batched backward pass already has,
G = sum_p g_p a_p^T over output positions p (g_p: gradient at the layer's output, a_p:
the input patch). One batched forward and backward with hooks gives both factors for
every layer; G is formed one layer at a time (a batched matmul with the FLOPs of the
ordinary weight gradient) and hashed straight into the output by the sparse JL transform
of ``sparse.SparseJLProjector``. With ``layer_dim`` unset this is exactly the
``sparse`` projector's map, computed without ``torch.func.vmap``.

With ``layer_dim`` set, a weight with more than ``layer_dim`` entries is first reduced
to Z = R_out^T G R_in = sum_p (R_out^T g_p)(R_in^T a_p)^T [d_out x d_in], d_out * d_in
<= layer_dim (``split_budget``): R_in^T a_p is a convolution of the input with d_in
filters (same stride and padding), R_out^T g_p a 1x1 map, so G is never formed. Faster
for wide layers, but a Kronecker-structured map distorts more than an i.i.d. one
(docs/method.md: fidelity table). BatchNorm scale/shift and biases keep their exact per-example
gradients. The whole map is linear in the full gradient, so ``project`` also takes flat
(or traker's dict) per-example gradients and gives the same result as the hook path;
the tests check one against the other. All random maps are drawn on the CPU from
(seed, model_id): CPU and GPU apply the same map.

Which modules take the hook path (``hooked``): Conv2d (grouped and depthwise included; a
grouped convolution's gradient is kept exact, never Kronecker-reduced), Linear (on
[B, D] or on token sequences [B, ..., D]: the per-example gradient sums over the tokens),
BatchNorm2d and LayerNorm, each of its exact class and run exactly once by a forward pass
of the model (checked at construction on a blank batch when the model states its
``arch``). Every other parameter (class tokens, position embeddings, attention weights
used outside a module's forward, unknown module types, a module run twice) gets its exact
per-example gradient from ``torch.func.vmap`` over the same output, and its coordinates
join the hooked ones, in ``named_parameters()`` order, before the same hash: no
parameter is ever dropped.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from trak.projectors import AbstractProjector, ProjectionType
from trak.utils import vectorize

from .gradients import per_example_output
from .sparse import SparseJLProjector

HOOKED = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.LayerNorm)
# subclasses whose forward is their base class's arithmetic (timm's LayerNorm: F.layer_norm)
SAME_AS_BASE = ("timm.layers.norm.LayerNorm",)


def hookable(module: nn.Module) -> bool:
    """Whether ``module``'s per-example gradients follow from its input and output gradient:
    one of ``HOOKED`` exactly (a subclass may compute something else), with what the hook
    formulas assume (zero padding given as numbers, affine normalisation)."""
    kind = type(module)
    if kind not in HOOKED and f"{kind.__module__}.{kind.__name__}" not in SAME_AS_BASE:
        return False
    if isinstance(module, nn.Conv2d):
        return module.padding_mode == "zeros" and not isinstance(module.padding, str)
    return True


def calls(model: nn.Module, names) -> dict:
    """{module name: times it runs in one forward pass of a blank 2-image batch} (eval mode,
    no gradients); {} when the model does not state its image size (``arch``)."""
    arch = getattr(model, "arch", None)
    size = arch.get("image_size") if isinstance(arch, dict) else None
    if size is None:
        return {}
    modules = dict(model.named_modules())
    count = dict.fromkeys(names, 0)
    handles = [modules[n].register_forward_hook(lambda m, a, o, n=n: count.__setitem__(n, count[n] + 1))
               for n in names]
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(2, 3, size, size, device=next(model.parameters()).device))
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return count


def owners(model: nn.Module) -> list:
    """[(name, module, hooked)] for every module that owns parameters, in ``named_modules()``
    order: hooked when ``hookable`` and run exactly once by a forward pass (``calls``)."""
    found = [(name, module) for name, module in model.named_modules() if list(module.parameters(recurse=False))]
    runs = calls(model, [name for name, module in found if hookable(module)])
    return [(name, module, hookable(module) and runs.get(name, 1) == 1) for name, module in found]


def needs_per_example(model: nn.Module) -> bool:
    """Whether some parameter of ``model`` is beyond the hooks (``FactoredProjector.per_example``)."""
    return not all(hooked for _, _, hooked in owners(model))


def _rademacher(gen, rows: int, cols: int) -> torch.Tensor:
    return torch.randint(0, 2, (rows, cols), generator=gen).mul_(2).sub_(1).float() / math.sqrt(cols)


def split_budget(c_out: int, c_in: int, layer_dim):
    """(d_out, d_in) with d_out * d_in <= layer_dim: a weight that fits (or any weight when
    layer_dim is None) stays exact; else the narrower side is kept (or cut to
    sqrt(layer_dim)) and the other side gets the rest."""
    if layer_dim is None or c_out * c_in <= layer_dim:
        return c_out, c_in
    side = max(1, math.isqrt(layer_dim))
    if c_out <= c_in:
        d_out = min(c_out, side)
        return d_out, min(c_in, layer_dim // d_out)
    d_in = min(c_in, side)
    return min(c_out, layer_dim // d_in), d_in


class _Layer:
    """One module with parameters: its share of the projector's input and how to compute
    it from the module's input and output gradient (batch first)."""

    def __init__(self, name: str, module: nn.Module, layer_dim, hooked: bool = True):
        self.name, self.module, self.hooked = name, module, hooked
        self.has_bias = getattr(module, "bias", None) is not None
        self.r_out = self.r_in = None
        self.groups = getattr(module, "groups", 1)
        if not hooked or isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
            # the per-example path, and the norms' affine terms: exact gradients, as they are
            self.d_out = None
            self.params = [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)]
            self.sizes = self.full_sizes = [p.numel() for p in module.parameters(recurse=False)]
            return
        w = module.weight
        self.c_out, self.c_in = w.shape[0], w[0].numel()
        # a grouped convolution is kept exact (its weight is small: c_in is one group's)
        self.d_out, self.d_in = split_budget(self.c_out, self.c_in, layer_dim if self.groups == 1 else None)
        bias = [self.c_out] if self.has_bias else []
        self.sizes = [self.d_out * self.d_in] + bias
        self.full_sizes = [w.numel()] + bias

    def draw(self, gen, device):
        """R_out [c_out, d_out] and R_in [c_in, d_in]; None where a side is kept exact."""
        if self.d_out is None:
            return
        self.r_out = _rademacher(gen, self.c_out, self.d_out).to(device) if self.d_out < self.c_out else None
        self.r_in = _rademacher(gen, self.c_in, self.d_in).to(device) if self.d_in < self.c_in else None
        if isinstance(self.module, nn.Conv2d) and self.r_in is not None:
            m = self.module
            self.conv_in = self.r_in.T.reshape(self.d_in, m.in_channels, *m.kernel_size).contiguous()

    def from_full(self, grads: list) -> list:
        """The same terms from per-example full gradients (the linear-map view)."""
        if self.d_out is None or (self.r_out is None and self.r_in is None):
            return grads
        g = grads[0].reshape(grads[0].shape[0], self.c_out, self.c_in)
        if self.r_out is not None:
            g = torch.einsum("boi,od->bdi", g, self.r_out)
        if self.r_in is not None:
            g = g @ self.r_in
        return [g.flatten(1)] + grads[1:]

    def from_hooks(self, a: torch.Tensor, g: torch.Tensor) -> list:
        m = self.module
        if isinstance(m, nn.BatchNorm2d):
            if not m.affine:
                return []
            xhat = (a - m.running_mean[:, None, None]) * torch.rsqrt(m.running_var[:, None, None] + m.eps)
            return [(g * xhat).sum((2, 3)), g.sum((2, 3))]
        if isinstance(m, nn.LayerNorm):
            if not self.sizes:
                return []
            xhat = F.layer_norm(a, m.normalized_shape, None, None, m.eps)
            tokens = tuple(range(1, a.ndim - len(m.normalized_shape)))   # summed over tokens, if any
            out = [(g * xhat).sum(tokens).flatten(1) if tokens else (g * xhat).flatten(1)]
            return out + ([g.sum(tokens).flatten(1) if tokens else g.flatten(1)] if m.bias is not None else [])
        if isinstance(m, nn.Linear):
            if a.ndim > 2:   # a sequence: sum_t g_t a_t^T over its tokens
                a, g = a.reshape(len(a), -1, a.shape[-1]), g.reshape(len(g), -1, g.shape[-1])
                ai = a if self.r_in is None else a @ self.r_in
                go = g if self.r_out is None else g @ self.r_out
                return [torch.bmm(go.transpose(1, 2), ai).flatten(1)] + ([g.sum(1)] if self.has_bias else [])
            ai = a if self.r_in is None else a @ self.r_in
            go = g if self.r_out is None else g @ self.r_out
            return [(go[:, :, None] * ai[:, None, :]).flatten(1)] + ([g] if self.has_bias else [])
        if self.groups > 1:   # per group: sum_p g_p a_p^T over the group's channels
            b, k = len(a), self.groups
            ai = F.unfold(a, m.kernel_size, m.dilation, m.padding, m.stride)
            ai = ai.reshape(b, k, ai.shape[1] // k, ai.shape[2])                            # [B, k, c_in, P]
            gp = g.flatten(2)
            go = gp.reshape(b, k, gp.shape[1] // k, gp.shape[2])                             # [B, k, c_out/k, P]
            z = torch.einsum("bkop,bkip->bkoi", go, ai)
            return [z.flatten(1)] + ([gp.sum(2)] if self.has_bias else [])
        if self.r_in is None:
            ai = F.unfold(a, m.kernel_size, m.dilation, m.padding, m.stride)                 # [B, c_in, P]
        else:
            ai = F.conv2d(a, self.conv_in, None, m.stride, m.padding, m.dilation).flatten(2)  # [B, d_in, P]
        gp = g.flatten(2)                                                                     # [B, c_out, P]
        go = gp if self.r_out is None else torch.einsum("bop,od->bdp", gp, self.r_out)
        z = torch.bmm(go, ai.transpose(1, 2))                                                 # [B, d_out, d_in]
        return [z.flatten(1)] + ([gp.sum(2)] if self.has_bias else [])


class FactoredProjector(AbstractProjector):
    """traker ``AbstractProjector`` for any model in eval mode: hooks where they apply, vmap
    for the rest (the module's docstring). ``featurize(model, output_fn, x, model_id)`` is the fast path, used
    through ``gradients.HookGradients``."""

    def __init__(self, model: nn.Module, proj_dim: int, seed: int, proj_type=ProjectionType.rademacher,
                 device="cpu", layer_dim=None, nnz_per_column: int = 4):
        self.proj_dim, self.seed, self.proj_type = int(proj_dim), int(seed), proj_type
        self.device = torch.device(device)
        self.layer_dim = None if layer_dim is None else int(layer_dim)
        self.layers, names = [], []
        for name, module, hooked in owners(model):
            self.layers.append(_Layer(name, module, self.layer_dim, hooked))
            names += [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)]
        if names != [n for n, _ in model.named_parameters()]:
            raise ValueError("factored projector: parameters are not grouped by module in named_parameters() order")
        # the parameters whose per-example gradients come from vmap (features' attrs name them)
        self.per_example = [p for layer in self.layers if not layer.hooked for p in layer.params]
        self.grad_dim = sum(p.numel() for p in model.parameters())
        self.inner_dim = sum(sum(layer.sizes) for layer in self.layers)
        self.hash = SparseJLProjector(self.inner_dim, self.proj_dim, seed, device=device, nnz_per_column=nnz_per_column)
        self.model_id = None

    def _maps(self, model_id: int):
        if model_id != self.model_id:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(model_id) + 7)
            for layer in self.layers:
                layer.draw(gen, self.device)
            self.model_id = model_id

    def project(self, grads, model_id: int) -> torch.Tensor:
        """Project per-example full gradients (flat [B, grad_dim] or traker's dict)."""
        if isinstance(grads, dict):
            grads = vectorize(grads, device=self.device)
        grads = grads.to(device=self.device, dtype=torch.float32)
        if grads.shape[1] != self.grad_dim:
            raise ValueError(f"gradient has {grads.shape[1]} coordinates, projector expects {self.grad_dim}")
        self._maps(model_id)
        parts, start = [], 0
        for layer in self.layers:
            n = sum(layer.full_sizes)
            parts += layer.from_full(list(torch.split(grads[:, start:start + n], layer.full_sizes, dim=1)))
            start += n
        return self.hash.project_parts(parts, model_id)

    def featurize(self, model: nn.Module, output_fn, x: torch.Tensor, model_id: int, aux=()):
        """(projected per-example gradients [B, proj_dim], outputs [B]) of ``output_fn(model, x,
        *aux)`` -> [B]; ``aux``: per-example tensors it needs (labels).

        One batched forward and backward (and a vmap pass for the parameters the hooks cannot
        see); examples must not interact (BatchNorm in eval mode).
        """
        if model.training:
            raise ValueError("factored projector: the model must be in eval mode (per-example gradients)")
        self._maps(model_id)
        inputs, grads, handles = {}, {}, []

        def forward_hook(layer):
            def hook(module, args, out):
                if layer.name in inputs:
                    raise ValueError(f"factored projector: module {layer.name!r} ran twice in one forward")
                inputs[layer.name] = (args[0].detach(), args[0]._version)
                # a tensor hook sees the gradient of the value before any later in-place op (ReLU)
                out.register_hook(lambda g: grads.__setitem__(layer.name, g.detach()))
            return hook

        for layer in self.layers:
            if layer.hooked:
                handles.append(layer.module.register_forward_hook(forward_hook(layer)))
        try:
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                out = output_fn(model, xg, *aux)
                torch.autograd.grad(out.sum(), xg)
        finally:
            for h in handles:
                h.remove()
        exact = self.per_example_grads(model, output_fn, x, aux) if self.per_example else {}
        parts = []
        for layer in self.layers:
            if not layer.hooked:
                parts += [exact[p].flatten(1).float() for p in layer.params]
            elif layer.name in grads:
                a, version = inputs[layer.name]
                if a._version != version:
                    raise ValueError(f"factored projector: the input of {layer.name!r} was modified in place")
                parts += layer.from_hooks(a.float(), grads[layer.name].float())
            else:  # the output does not depend on this layer (e.g. after the probed layer)
                parts += [x.new_zeros(len(x), s, dtype=torch.float32) for s in layer.sizes]
        return self.hash.project_parts(parts, model_id), out.detach()

    def per_example_grads(self, model: nn.Module, output_fn, x: torch.Tensor, aux=()) -> dict:
        """{parameter: [B, *shape]}: exact per-example gradients of ``output_fn`` for the
        parameters the hooks cannot see, by ``torch.func.vmap`` (the other weights fixed)."""
        params = {k: v.detach() for k, v in model.named_parameters()}
        buffers = {k: v.detach() for k, v in model.named_buffers()}
        f = per_example_output(model, output_fn)

        def output(own, xi, *ai):
            return f({**params, **own}, buffers, xi, *ai)

        with warnings.catch_warnings():   # attention kernels without a batching rule run per example
            warnings.filterwarnings("ignore", message=".*batching rule.*")
            return torch.func.vmap(torch.func.grad(output), in_dims=(None, 0) + (0,) * len(aux))(
                {k: params[k] for k in self.per_example}, x.detach(), *aux)

    def free_memory(self):
        self.hash.free_memory()
        self.model_id = None

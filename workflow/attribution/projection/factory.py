"""Choose the projected-gradient implementation by config name (``trak.projector``)."""
from __future__ import annotations

import torch
from trak.projectors import BasicProjector, NoOpProjector, ProjectionType

from .factored import FactoredProjector, needs_per_example
from .gradients import HookGradients, PerExampleGradients
from .sparse import SparseJLProjector


def cuda_projector_available() -> bool:
    try:
        import fast_jl  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


def resolve(kind: str, model, device: str) -> str:
    """``auto`` = the fastest exact path for this model: traker's CUDA projector on a GPU
    with fast_jl installed; else ``factored`` where hooks see every parameter (every
    ResNet, MobileNet, ShuffleNet); else ``sparse``, one vmap pass for all parameters,
    since the parameters beyond the hooks (a ViT's class token and position embedding)
    need a full per-example pass anyway (on a 6-block ViT the hook pass plus that pass took
    1.43x the single pass; bench/zoo_projectors.py, docs/performance.md). No path drops a
    parameter."""
    if kind != "auto":
        return kind
    if device == "cuda" and cuda_projector_available():
        return "cuda"
    return "sparse" if needs_per_example(model) else "factored"


def make(kind: str, model, proj_dim: int, seed: int, device: str, layer_dim=None, dtype=torch.float32):
    """A ``ProjectedGradients`` for ``model``; ``device`` is "cpu" or "cuda"."""
    kind = resolve(kind, model, device)
    grad_dim = sum(p.numel() for p in model.parameters())
    if kind == "factored":
        return HookGradients(FactoredProjector(model, proj_dim, seed, device=device, layer_dim=layer_dim))
    if kind == "sparse":
        proj = SparseJLProjector(grad_dim, proj_dim, seed, device=device)
    elif kind == "basic":
        proj = BasicProjector(grad_dim, proj_dim, seed, ProjectionType.rademacher, device, block_size=100,
                              dtype=torch.float32)
    elif kind == "cuda":
        from trak.projectors import CudaProjector

        proj = CudaProjector(grad_dim, proj_dim, seed, ProjectionType.rademacher, device, max_batch_size=32)
    elif kind == "noop":
        proj = NoOpProjector(grad_dim, grad_dim, seed, ProjectionType.rademacher, device)
    else:
        raise ValueError(f"trak.projector: unknown projector {kind!r}")
    return PerExampleGradients(proj, dtype)

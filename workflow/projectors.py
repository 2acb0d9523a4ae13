"""Gradient projectors for TRAK, all traker ``AbstractProjector``s.

``sparse`` (default on CPU): a sparse Johnson-Lindenstrauss transform. Every gradient
coordinate is hashed to ``s`` output buckets with random signs (scaled 1/sqrt(s)), so
projecting costs O(s * grad_dim) per example and no grad_dim x proj_dim matrix is ever
formed. The hash is drawn on the CPU from (seed, model_id), so CPU and GPU apply the
same map. ``basic``: traker's dense Gaussian BasicProjector (slow on CPU). ``cuda``:
traker's CudaProjector (needs the fast_jl kernel). ``noop``: no projection (tests).
"""
from __future__ import annotations

import math

import torch
from trak.projectors import AbstractProjector, BasicProjector, NoOpProjector, ProjectionType
from trak.utils import vectorize


class SparseJLProjector(AbstractProjector):
    def __init__(self, grad_dim: int, proj_dim: int, seed: int, proj_type=ProjectionType.rademacher,
                 device="cpu", nnz_per_column: int = 4, dtype=torch.float32):
        self.grad_dim, self.proj_dim, self.seed = int(grad_dim), int(proj_dim), int(seed)
        self.proj_type, self.device, self.dtype = proj_type, torch.device(device), dtype
        self.s = int(nnz_per_column)
        self.model_id = None
        self._buckets = self._signs = None

    def _hash(self, model_id: int):
        if model_id != self.model_id:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(model_id))
            buckets = torch.randint(0, self.proj_dim, (self.s, self.grad_dim), generator=gen)
            signs = torch.randint(0, 2, (self.s, self.grad_dim), generator=gen).mul_(2).sub_(1)
            self._buckets = buckets.to(self.device)
            self._signs = (signs.to(self.dtype) / math.sqrt(self.s)).to(self.device)
            self.model_id = model_id
        return self._buckets, self._signs

    def project(self, grads, model_id: int) -> torch.Tensor:
        if isinstance(grads, dict):
            grads = vectorize(grads, device=self.device)
        buckets, signs = self._hash(model_id)
        grads = grads.to(device=self.device, dtype=self.dtype)
        if grads.shape[1] != self.grad_dim:
            raise ValueError(f"gradient has {grads.shape[1]} coordinates, projector expects {self.grad_dim}")
        out = torch.zeros(grads.shape[0], self.proj_dim, device=self.device, dtype=self.dtype)
        for j in range(self.s):
            out.index_add_(1, buckets[j], grads * signs[j])
        return out

    def free_memory(self):
        self._buckets = self._signs = None
        self.model_id = None


def cuda_projector_available() -> bool:
    try:
        import fast_jl  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


def make(kind: str, grad_dim: int, proj_dim: int, seed: int, device: str):
    """A projector by config name; ``auto`` = traker's CUDA projector on a GPU with
    fast_jl installed, else the sparse JL projector. ``device`` is "cpu" or "cuda"."""
    if kind == "auto":
        kind = "cuda" if device == "cuda" and cuda_projector_available() else "sparse"
    if kind == "sparse":
        return SparseJLProjector(grad_dim, proj_dim, seed, device=device)
    if kind == "basic":
        return BasicProjector(grad_dim, proj_dim, seed, ProjectionType.rademacher, device, block_size=100,
                              dtype=torch.float32)
    if kind == "cuda":
        from trak.projectors import CudaProjector

        return CudaProjector(grad_dim, proj_dim, seed, ProjectionType.rademacher, device, max_batch_size=32)
    if kind == "noop":
        return NoOpProjector(grad_dim, grad_dim, seed, ProjectionType.rademacher, device)
    raise ValueError(f"trak.projector: unknown projector {kind!r}")

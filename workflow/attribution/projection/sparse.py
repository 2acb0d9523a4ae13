"""The sparse Johnson-Lindenstrauss projector (a traker ``AbstractProjector``).

Every gradient coordinate is hashed to ``s`` output buckets with random signs (scaled
1/sqrt(s)), so projecting costs O(s * grad_dim) per example and no grad_dim x proj_dim
matrix is ever formed. The hash is drawn on the CPU from (seed, model_id), so CPU and GPU
apply the same map. ``factored.FactoredProjector`` applies the same map to per-layer
gradients taken from hooks.

Two ways to apply it, same map: ``scatter`` adds each coordinate's column into its
buckets (``index_add_``, in cache-sized column blocks: the CPU default), and ``csr``
multiplies by the map stored as a sparse CSR matrix [proj_dim, n_part] per gradient part
(cuSPARSE's SpMM on a GPU: each output row is a sum over its own coordinates, no atomic
adds; the GPU default). ``method="auto"`` picks by device.
"""
from __future__ import annotations

import math
import warnings

import torch
from trak.projectors import AbstractProjector, ProjectionType
from trak.utils import vectorize


CHUNK = 16384


class SparseJLProjector(AbstractProjector):
    def __init__(self, grad_dim: int, proj_dim: int, seed: int, proj_type=ProjectionType.rademacher,
                 device="cpu", nnz_per_column: int = 4, dtype=torch.float32, method: str = "auto"):
        self.grad_dim, self.proj_dim, self.seed = int(grad_dim), int(proj_dim), int(seed)
        self.proj_type, self.device, self.dtype = proj_type, torch.device(device), dtype
        self.s = int(nnz_per_column)
        if method not in ("auto", "scatter", "csr"):
            raise ValueError(f"method must be auto, scatter or csr, not {method!r}")
        self.method = ("csr" if self.device.type == "cuda" else "scatter") if method == "auto" else method
        self.model_id = None
        self._buckets = self._signs = None
        self._csr = {}   # (start, width) -> the map's columns start..start+width as CSR [proj_dim, width]

    def _hash(self, model_id: int):
        if model_id != self.model_id:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(model_id))
            buckets = torch.randint(0, self.proj_dim, (self.s, self.grad_dim), generator=gen)
            signs = torch.randint(0, 2, (self.s, self.grad_dim), generator=gen).mul_(2).sub_(1)
            self._buckets = buckets.to(self.device)
            self._signs = (signs.to(self.dtype) / math.sqrt(self.s)).to(self.device)
            self._csr = {}
            self.model_id = model_id
        return self._buckets, self._signs

    def _csr_block(self, start: int, width: int) -> torch.Tensor:
        """Columns start..start+width of the map as a CSR matrix [proj_dim, width] (cached
        per model id; built once from the same buckets and signs as ``scatter``)."""
        key = (start, width)
        if key not in self._csr:
            buckets, signs = self._buckets[:, start:start + width], self._signs[:, start:start + width]
            cols = torch.arange(width, device=self.device).expand(self.s, width)
            coo = torch.sparse_coo_tensor(torch.stack([buckets.reshape(-1), cols.reshape(-1)]), signs.reshape(-1),
                                          (self.proj_dim, width), device=self.device, check_invariants=False)
            with warnings.catch_warnings():   # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                self._csr[key] = coo.coalesce().to_sparse_csr()   # duplicate (bucket, column) pairs are summed
        return self._csr[key]

    def project(self, grads, model_id: int) -> torch.Tensor:
        if isinstance(grads, dict):
            grads = vectorize(grads, device=self.device)
        return self.project_parts([grads], model_id)

    def project_parts(self, parts, model_id: int) -> torch.Tensor:
        """Project [B, n_1], [B, n_2], ... as if concatenated (n_1 + n_2 + ... = grad_dim),
        without forming the concatenation. On the CPU it works in column blocks of CHUNK
        coordinates, transposed so each scatter adds contiguous rows of B values: about 5x
        faster than one pass over the whole gradient (cache-sized temporaries)."""
        n = sum(part.shape[1] for part in parts)
        if n != self.grad_dim:
            raise ValueError(f"gradient has {n} coordinates, projector expects {self.grad_dim}")
        buckets, signs = self._hash(model_id)
        out = torch.zeros(self.proj_dim, parts[0].shape[0], device=self.device, dtype=self.dtype)
        start = 0
        if self.method == "csr":
            for part in parts:
                part = part.to(device=self.device, dtype=self.dtype)
                out += torch.sparse.mm(self._csr_block(start, part.shape[1]), part.T)
                start += part.shape[1]
            return out.T.contiguous()
        for part in parts:
            part = part.to(device=self.device, dtype=self.dtype)
            chunk = CHUNK if self.device.type == "cpu" else max(1, part.shape[1])  # one launch per part on a GPU
            for a in range(0, part.shape[1], chunk):
                block = part[:, a:a + chunk].T.contiguous()
                cols = slice(start + a, start + a + block.shape[0])
                for j in range(self.s):
                    out.index_add_(0, buckets[j, cols], block * signs[j, cols, None])
            start += part.shape[1]
        return out.T.contiguous()

    def free_memory(self):
        self._buckets = self._signs = None
        self._csr = {}
        self.model_id = None


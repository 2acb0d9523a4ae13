"""Process-wide settings, applied once by the command line before a stage is imported:
thread counts, HDF5 file locking, the plotting backend and float32 exactness on GPUs."""
from __future__ import annotations

import os


def configure(threads: int = 1, uses_torch: bool = False) -> None:
    threads = max(1, int(threads))
    # BLAS/OpenMP pools size themselves when their library loads: set before numpy/torch
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    # HDF5 file locking breaks on many cluster filesystems (NFS, Lustre)
    os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
    # figures are written to files, never shown
    os.environ["MPLBACKEND"] = "Agg"
    if uses_torch:
        import torch

        torch.set_num_threads(threads)
        # float32 means float32 on a GPU too: no TF32 in cuDNN convolutions (on by default)
        # or matmuls, so GPU features and activations match CPU ones to float32 rounding
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def resolve_device(name: str):
    """torch.device for a config value "auto" | "cpu" | "cuda"."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: 'cuda' requested but no CUDA device is available")
    return torch.device(name)

"""Deterministic seeds: one base seed in config, derived per purpose by hashing."""
import hashlib
import random

import numpy as np


def derive_seed(base: int, *keys) -> int:
    """A 31-bit seed derived from ``base`` and any number of labels (stable across runs)."""
    text = "/".join([str(int(base))] + [str(k) for k in keys])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def rng(base: int, *keys) -> np.random.Generator:
    return np.random.default_rng(derive_seed(base, *keys))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) global generators."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)

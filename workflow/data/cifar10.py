"""CIFAR-10 in torchvision's python-pickle layout under a local root.

Files are read directly (``cifar-10-batches-py/data_batch_{1..5}``, ``test_batch``,
``batches.meta``) so a small file in the same format works as a test fixture;
torchvision is used only to download when ``download: true``.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

FOLDER = "cifar-10-batches-py"
TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
TEST = ["test_batch"]


def _read_batches(root: Path, names):
    xs, ys = [], []
    for name in names:
        p = root / FOLDER / name
        if not p.exists():
            raise FileNotFoundError(f"dataset.root: CIFAR-10 file missing: {p}")
        with open(p, "rb") as fh:
            d = pickle.load(fh, encoding="latin1")
        xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(np.asarray(d.get("labels", d.get("fine_labels")), dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def load(root, download: bool = False):
    """Returns dict(train=(images, labels), test=(images, labels), class_names=[...])."""
    root = Path(root)
    if download and not (root / FOLDER / "test_batch").exists():
        from torchvision.datasets import CIFAR10

        CIFAR10(str(root), train=True, download=True)
    with open(root / FOLDER / "batches.meta", "rb") as fh:
        meta = pickle.load(fh, encoding="latin1")
    return {"train": _read_batches(root, TRAIN), "test": _read_batches(root, TEST),
            "class_names": list(meta["label_names"])}

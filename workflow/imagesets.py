"""Reading image sets back from the stage-1 HDF5 files."""
from __future__ import annotations

import numpy as np

from . import h5io


def load_split(path, split: str, indices=None):
    """(images uint8 [N,H,W,3], labels int64 [N]) of ``split`` ("train"/"test") in ``path``.

    ``indices`` (sorted or not) selects a subset of the split's rows, e.g. an ablated
    training set.
    """
    with h5io.read(path) as f:
        if split not in f:
            raise KeyError(f"{path}: no split {split!r} (have {sorted(f.keys())})")
        g = f[split]
        if indices is None:
            return g["images"][()], g["labels"][()].astype(np.int64)
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx)
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        imgs = g["images"][np.sort(idx)][inv]
        labels = g["labels"][np.sort(idx)][inv]
        return imgs, labels.astype(np.int64)


def class_info(path) -> dict:
    with h5io.read(path) as f:
        return {"class_names": h5io.json_attr(f, "class_names"),
                "num_classes": int(f.attrs["num_classes"]),
                "image_size": int(f.attrs["image_size"]),
                "pixel_mean": list(map(float, f.attrs["pixel_mean"])),
                "pixel_std": list(map(float, f.attrs["pixel_std"]))}


def load_probe_set(path):
    """(images, concept labels 0/1, heldout bool) of a concept's probe set."""
    with h5io.read(path) as f:
        return f["images"][()], f["labels"][()].astype(np.int64), f["heldout"][()].astype(bool)

"""Stage 1: materialise the base train/test sets and one probe set per concept (HDF5).

base.h5:   /train/{images,labels[,planted]}  /test/{images,labels[,planted]}
           attrs: class_names, num_classes, image_size, pixel_mean, pixel_std
probe_<concept>.h5: /images /labels (1 = concept present) /heldout (bool)
           /train_concept_mask, /test_concept_mask (ground truth per base train/test
           image, when known)
"""
from __future__ import annotations

import json
import logging

import numpy as np

from . import h5io
from .datasets import cifar10, imagefolder, synthetic
from .seeding import rng as seeded_rng

log = logging.getLogger(__name__)


def load_base(cfg: dict) -> dict:
    """Train/test arrays and class names for ``cfg = {seed, dataset}``."""
    d, seed = cfg["dataset"], cfg["seed"]
    name = d["name"]
    if name == "synthetic":
        s = d["synthetic"]
        tr = synthetic.generate(s["n_train"], seed, "train", s["planted_fraction"], d["image_size"])
        te = synthetic.generate(s["n_test"], seed, "test", s["planted_fraction"], d["image_size"])
        return {"train": tr, "test": te, "class_names": list(synthetic.CLASS_NAMES)}
    if name == "cifar10":
        return cifar10.load(d["root"], d.get("download", False))
    if name == "imagefolder":
        return imagefolder.load(d["root"], d["image_size"], d.get("subset_fraction", 1.0),
                                d.get("test_fraction", 0.1), seeded_rng(seed, "imagefolder-subset"))
    raise ValueError(f"dataset.name: unknown dataset {name!r}")


def build_base(cfg: dict, out_path) -> None:
    data = load_base(cfg)
    x_train = data["train"][0]
    mean = x_train.reshape(-1, 3).mean(0) / 255.0
    std = x_train.reshape(-1, 3).std(0) / 255.0
    with h5io.atomic_h5(out_path, cfg, class_names=json.dumps(data["class_names"]),
                        num_classes=len(data["class_names"]), image_size=x_train.shape[1],
                        pixel_mean=mean, pixel_std=std) as f:
        for split in ("train", "test"):
            arrays = data[split]
            g = f.create_group(split)
            g.create_dataset("images", data=arrays[0], chunks=(min(256, len(arrays[0])),) + arrays[0].shape[1:])
            g.create_dataset("labels", data=arrays[1])
            if len(arrays) > 2:
                g.create_dataset("planted", data=arrays[2])
            log.info("%s: %d images, %d classes", split, len(arrays[1]), len(np.unique(arrays[1])))


def resolve_classes(spec, class_names) -> list:
    """Class ids from a list of ids and/or names; a clear error for unknown ones."""
    ids = []
    for c in spec:
        if isinstance(c, str) and not c.isdigit():
            if c not in class_names:
                raise ValueError(f"concepts: unknown class name {c!r}")
            ids.append(class_names.index(c))
        else:
            c = int(c)
            if not 0 <= c < len(class_names):
                raise ValueError(f"concepts: class id {c} out of range 0..{len(class_names) - 1}")
            ids.append(c)
    return sorted(set(ids))


def split_heldout(labels: np.ndarray, fraction: float, rng) -> np.ndarray:
    """Stratified boolean held-out mask."""
    held = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        held[idx[: int(round(fraction * len(idx)))]] = True
    return held


def _balanced_from(images, labels01, n, rng):
    pos, neg = np.flatnonzero(labels01 == 1), np.flatnonzero(labels01 == 0)
    k = min(n // 2, len(pos), len(neg))
    if k < 2:
        raise ValueError(f"concepts: too few positives ({len(pos)}) or negatives ({len(neg)}) for a probe set")
    idx = np.sort(np.concatenate([rng.choice(pos, k, replace=False), rng.choice(neg, k, replace=False)]))
    return images[idx], labels01[idx]


def build_probe_set(cfg: dict, concept: dict, base_path, out_path) -> None:
    """Probe set of ``concept``; ``cfg = {seed, dataset, probe_set}``."""
    d, seed, n = cfg["dataset"], cfg["seed"], cfg["probe_set"]["size"]
    rng = seeded_rng(seed, "probe-set", concept["name"])
    with h5io.read(base_path) as f:
        class_names = json.loads(f.attrs["class_names"])
        train_labels = f["train/labels"][()]
        train_planted = f["train/planted"][()] if "planted" in f["train"] else None
        test_labels = f["test/labels"][()]
        test_planted = f["test/planted"][()] if "planted" in f["test"] else None
    kind, truth, test_truth = concept["kind"], None, None
    if kind == "planted":
        if d["name"] != "synthetic":
            raise ValueError(f"concepts.{concept['name']}: kind 'planted' needs dataset.name synthetic")
        lab01 = (np.arange(n) % 2 == 0).astype(np.int64)
        rng.shuffle(lab01)
        images, _, _ = synthetic.generate(n, seed, f"probe/{concept['name']}", 0.0, d["image_size"],
                                          planted=lab01.astype(bool), same_band_negatives=True)
        truth, test_truth = train_planted, test_planted
    elif kind == "classes":
        ids = resolve_classes(concept["classes"], class_names)
        truth, test_truth = np.isin(train_labels, ids), np.isin(test_labels, ids)
        if d["name"] == "synthetic":
            others = [c for c in range(len(class_names)) if c not in ids]
            lab01 = (np.arange(n) % 2 == 0).astype(np.int64)
            rng.shuffle(lab01)
            labels = np.where(lab01 == 1, rng.choice(ids, n), rng.choice(others, n))
            images, _, _ = synthetic.generate(n, seed, f"probe/{concept['name']}",
                                              d["synthetic"]["planted_fraction"], d["image_size"], labels=labels)
        else:
            with h5io.read(base_path) as f:
                test_x, test_y = f["test/images"][()], f["test/labels"][()]
            images, lab01 = _balanced_from(test_x, np.isin(test_y, ids).astype(np.int64), n, rng)
    elif kind == "folders":
        pos = imagefolder.list_images(concept["positives"])
        neg = imagefolder.list_images(concept["negatives"])
        for key, lst in (("positives", pos), ("negatives", neg)):
            if not lst:
                raise FileNotFoundError(f"concepts.{concept['name']}.{key}: no images in {concept[key]}")
        size = d["image_size"]
        images = np.concatenate([imagefolder.load_images(pos, size, "positives"),
                                 imagefolder.load_images(neg, size, "negatives")])
        lab01 = np.concatenate([np.ones(len(pos), np.int64), np.zeros(len(neg), np.int64)])
        images, lab01 = _balanced_from(images, lab01, n, rng)
    else:
        raise ValueError(f"concepts.{concept['name']}.kind: unknown kind {kind!r}")
    heldout = split_heldout(lab01, cfg["probe_set"]["heldout_fraction"], rng)
    with h5io.atomic_h5(out_path, {**cfg, "concept": concept}, concept=concept["name"]) as f:
        f.create_dataset("images", data=images)
        f.create_dataset("labels", data=lab01)
        f.create_dataset("heldout", data=heldout)
        if truth is not None:
            f.create_dataset("train_concept_mask", data=np.asarray(truth, bool))
        if test_truth is not None:
            f.create_dataset("test_concept_mask", data=np.asarray(test_truth, bool))
    log.info("probe set %s: %d images (%d positive), %d held out", concept["name"], len(lab01),
             int(lab01.sum()), int(heldout.sum()))

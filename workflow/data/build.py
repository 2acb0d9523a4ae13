"""Stage 1: materialise the base train/test sets and one probe set per concept.

The file layouts are owned by ``workflow.artifacts`` (``write_base``, ``write_probe_set``).
"""
from __future__ import annotations

import logging

import numpy as np

from .. import artifacts
from ..seeding import rng as seeded_rng
from . import cifar10, imagefolder, synthetic

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
        return cifar10.load(d["root"], d.get("download", False))   # absent from the slice when false
    if name == "imagefolder":
        return imagefolder.load(d["root"], d["image_size"], d["subset_fraction"], d["test_fraction"],
                                seeded_rng(seed, "imagefolder-subset"))
    raise ValueError(f"dataset.name: unknown dataset {name!r}")


def build_base(cfg: dict, out_path, workers: int = 1) -> None:
    """The base file. An ImageFolder tree is decoded by ``workers`` processes and written
    block by block (memory bounded by the block, not the dataset); the in-memory
    datasets (synthetic, CIFAR-10) are written whole."""
    if cfg["dataset"]["name"] == "imagefolder":
        d = cfg["dataset"]
        files = imagefolder.split_files(d["root"], d["subset_fraction"], d["test_fraction"],
                                        seeded_rng(cfg["seed"], "imagefolder-subset"))
        size, store = d["image_size"], store_size(d)
        views = {"train": (store, None), "test": (store, size)}   # test: the evaluation view (centre crop)
        splits = {split: (files[split][1], imagefolder.blocks(files[split][0], views[split][0], workers,
                                                              desc=f"{split} images", view=views[split][1]))
                  for split in ("train", "test")}
        stats = artifacts.write_base_blocks(out_path, cfg, files["class_names"], size, splits, store_size=store)
        for split in ("train", "test"):
            log.info("%s: %d images, %d classes", split, len(files[split][1]), len(np.unique(files[split][1])))
        log.info("pixel mean %s, std %s (streamed)", np.round(stats["pixel_mean"], 4), np.round(stats["pixel_std"], 4))
        return
    data = load_base(cfg)
    x_train = data["train"][0]
    mean = x_train.reshape(-1, 3).mean(0) / 255.0
    std = x_train.reshape(-1, 3).std(0) / 255.0
    splits = {split: data[split] for split in ("train", "test")}
    artifacts.write_base(out_path, cfg, splits, data["class_names"], mean, std)
    for split, arrays in splits.items():
        log.info("%s: %d images, %d classes", split, len(arrays[1]), len(np.unique(arrays[1])))


def store_size(d: dict) -> int:
    """The stored size of the train split's images (``dataset.store_size``, else image_size)."""
    return d.get("store_size") or d["image_size"]


def resolve_classes(wanted, class_names) -> list:
    """Class ids from a list of ids and/or names; a clear error for unknown ones."""
    ids = []
    for c in wanted:
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
    class_names = artifacts.base_info(base_path)["class_names"]
    train, test = artifacts.base_labels(base_path, "train"), artifacts.base_labels(base_path, "test")
    train_labels, train_planted = train["labels"], train["planted"]
    test_labels, test_planted = test["labels"], test["planted"]
    kind, truth, test_truth, classes = concept["kind"], None, None, None
    if kind == "planted":
        if d["name"] != "synthetic":
            raise ValueError(f"concepts.{concept['name']}: kind 'planted' needs dataset.name synthetic")
        lab01 = (np.arange(n) % 2 == 0).astype(np.int64)
        rng.shuffle(lab01)
        images, classes, _ = synthetic.generate(n, seed, f"probe/{concept['name']}", 0.0, d["image_size"],
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
            images, classes, _ = synthetic.generate(n, seed, f"probe/{concept['name']}",
                                                    d["synthetic"]["planted_fraction"], d["image_size"], labels=labels)
        else:   # from the test split; only the chosen images are read
            idx, lab01 = _balanced_from(np.arange(len(test_labels)), np.isin(test_labels, ids).astype(np.int64), n,
                                        rng)
            images, classes = artifacts.base_split(base_path, "test", idx)[0], test_labels[idx]
    elif kind == "folders":
        pos = imagefolder.list_images(concept["positives"])
        neg = imagefolder.list_images(concept["negatives"])
        for key, lst in (("positives", pos), ("negatives", neg)):
            if not lst:
                raise FileNotFoundError(f"concepts.{concept['name']}.{key}: no images in {concept[key]}")
        size, store = d["image_size"], store_size(d)            # the test split's view
        images = np.concatenate([imagefolder.load_images(pos, store, "positives", size),
                                 imagefolder.load_images(neg, store, "negatives", size)])
        lab01 = np.concatenate([np.ones(len(pos), np.int64), np.zeros(len(neg), np.int64)])
        images, lab01 = _balanced_from(images, lab01, n, rng)
    else:
        raise ValueError(f"concepts.{concept['name']}.kind: unknown kind {kind!r}")
    heldout = split_heldout(lab01, cfg["probe_set"]["heldout_fraction"], rng)
    artifacts.write_probe_set(out_path, {**cfg, "concept": concept}, concept["name"], images, lab01, heldout,
                              truth, test_truth, classes=classes)
    log.info("probe set %s: %d images (%d positive), %d held out", concept["name"], len(lab01),
             int(lab01.sum()), int(heldout.sum()))


def base_stage(job) -> None:
    build_base(job.params, job.output["data"], workers=job.threads)


def probe_set_stage(job) -> None:
    cfg = job.params
    concept = next(c for c in cfg["concepts"] if c["name"] == job.wildcards["concept"])
    build_probe_set({k: v for k, v in cfg.items() if k != "concepts"}, concept, job.input["base"],
                    job.output["probe_set"])

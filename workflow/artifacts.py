"""The on-disk format of every artefact the workflow writes: one writer and one reader each.

Torch-free (numpy, h5py, json), so every stage, test and notebook can read any
intermediate. Writes go through ``atomic`` (temporary name, then rename); reads detect
corrupt files and name them.

=================  =========================================================================
artefact           layout
=================  =========================================================================
base data          /train/{images,labels[,planted]} /test/{...}; attrs class_names,
                   num_classes, image_size, pixel_mean, pixel_std
probe set          /images /labels (1 = concept) /heldout; /train_concept_mask and
                   /test_concept_mask where the ground truth of base images is known
model              /final/<param> [/epoch_NNNN/<param>] /metrics/test_correct;
                   attrs arch, metrics, checkpoints
activations        /<layer> [N, C_l] pooled activations; attr layers
probes             /m<member>/<layer>/{coef,mean,scale,path_*} + attrs; /heldout_bal_acc,
                   /train_bal_acc, /sparsity_k [members x layers]
summary            JSON {concept: {layers, acc_*, sparsity_*, location, ...}}
features (shard)   /grads /out_to_loss /indices; attrs of the projector and model
features           /grads /out_to_loss /x_xtx_inv; same attrs
scores             /per_target [T, n] /concept_score [n] /target_indices; JSON enrichment
ablation set       /removed /keep [/removed_scores]; attrs kind, concept, layer, reason
compare, verdicts  JSON and text
=================  =========================================================================
"""
from __future__ import annotations

import json

import h5py
import numpy as np

from . import atomic
from .atomic import json_attr, reading

# -- base data --------------------------------------------------------------------------------


def write_base(path, cfg: dict, splits: dict, class_names: list, pixel_mean, pixel_std) -> None:
    """``splits``: {"train": (images, labels[, planted]), "test": (...)}."""
    x = splits["train"][0]
    with atomic.h5(path, cfg, class_names=json.dumps(list(class_names)), num_classes=len(class_names),
                   image_size=x.shape[1], pixel_mean=np.asarray(pixel_mean), pixel_std=np.asarray(pixel_std)) as f:
        for split, arrays in splits.items():
            g = f.create_group(split)
            g.create_dataset("images", data=arrays[0], chunks=(max(1, min(256, len(arrays[0]))),) + arrays[0].shape[1:])
            g.create_dataset("labels", data=arrays[1])
            if len(arrays) > 2 and arrays[2] is not None:
                g.create_dataset("planted", data=arrays[2])


def write_base_blocks(path, cfg: dict, class_names: list, image_size: int, splits: dict,
                      store_size: int | None = None) -> dict:
    """The base file written block by block: ``splits`` {split: (labels, iterable of uint8
    image blocks in order)}. The train split's channel mean and std are accumulated as
    exact integer sums over the blocks. Images are chunked a few hundred KB at a time, so
    a random batch reads only its own images. ``image_size`` is the model's input;
    ``store_size`` (default: the same) the train split's stored size (the test split is
    stored at ``image_size``). Returns the pixel mean and std."""
    store_size = store_size or image_size
    s1 = np.zeros(3, np.int64)
    s2 = np.zeros(3, np.int64)
    count = 0
    attrs = {"store_size": store_size} if store_size != image_size else {}
    with atomic.h5(path, cfg, class_names=json.dumps(list(class_names)), num_classes=len(class_names),
                   image_size=image_size, **attrs) as f:
        for split, (labels, image_blocks) in splits.items():
            n = len(labels)
            side = store_size if split == "train" else image_size
            rows = max(1, min(256, (1 << 18) // (side * side * 3)))
            g = f.create_group(split)
            ds = g.create_dataset("images", shape=(n, side, side, 3), dtype=np.uint8,
                                  chunks=(max(1, min(rows, n)), side, side, 3))
            g.create_dataset("labels", data=np.asarray(labels, np.int64))
            at = 0
            for x in image_blocks:
                ds[at:at + len(x)] = x
                at += len(x)
                if split == "train":
                    s1 += x.sum(axis=(0, 1, 2), dtype=np.int64)
                    s2 += np.einsum("nhwc,nhwc->c", x, x, dtype=np.int64)
                    count += x.shape[0] * x.shape[1] * x.shape[2]
            if at != n:
                raise ValueError(f"{path}: {split} got {at} images for {n} labels")
        mean = s1 / max(count, 1)
        std = np.sqrt(np.maximum(s2 / max(count, 1) - mean ** 2, 0.0))
        f.attrs["pixel_mean"], f.attrs["pixel_std"] = mean / 255.0, std / 255.0
    return {"pixel_mean": mean / 255.0, "pixel_std": std / 255.0}


def base_info(path) -> dict:
    """Class names and the image statistics the model normalises with; ``image_size`` is
    the model's input, ``store_size`` that of the stored training images (larger when
    ``dataset.store_size`` is set: every stage but training centre-crops them)."""
    with reading(path) as f:
        return {"class_names": json_attr(f, "class_names"), "num_classes": int(f.attrs["num_classes"]),
                "image_size": int(f.attrs["image_size"]),
                "store_size": int(f.attrs.get("store_size", f.attrs["image_size"])),
                "pixel_mean": list(map(float, f.attrs["pixel_mean"])),
                "pixel_std": list(map(float, f.attrs["pixel_std"])),
                "n_train": int(f["train/labels"].shape[0]), "n_test": int(f["test/labels"].shape[0])}


def base_labels(path, split: str) -> dict:
    """{"labels", "planted" (or None)} of a split, without its images."""
    with reading(path) as f:
        g = f[split]
        return {"labels": g["labels"][()].astype(np.int64),
                "planted": g["planted"][()].astype(bool) if "planted" in g else None}


def base_split(path, split: str, indices=None):
    """(images uint8 [N,H,W,3], labels int64 [N]) of ``split`` ("train"/"test").

    ``indices`` (any order, repeats allowed) selects rows, returned in that order.
    """
    with reading(path) as f:
        if split not in f:
            raise KeyError(f"{path}: no split {split!r} (have {sorted(f.keys())})")
        g = f[split]
        if indices is None:
            return g["images"][()], g["labels"][()].astype(np.int64)
        idx = np.asarray(indices, dtype=np.int64)
        return read_rows(g["images"], idx), g["labels"][()][idx].astype(np.int64)


def read_rows(ds, indices) -> np.ndarray:
    """``ds[indices]`` for indices in any order, repeats allowed, returned in that order:
    each distinct row is read once, run by run of consecutive rows. h5py's own fancy
    indexing (increasing indices only) builds a point selection that took 830 ms for 32
    rows of 256 px images; this takes 3-7 ms (a batch of 32 random rows of 384)."""
    rows, inv = np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)
    out = np.empty((len(rows),) + tuple(ds.shape[1:]), ds.dtype)
    cut = np.flatnonzero(np.diff(rows) != 1) + 1
    for a, b in zip(np.concatenate([[0], cut]), np.concatenate([cut, [len(rows)]])):
        if b > a:
            ds.read_direct(out, np.s_[rows[a]:rows[a] + (b - a)], np.s_[a:b])
    return out[inv]


class BaseReader:
    """Rows of one split of the base file by index, read from the open file (chunked reads
    of sorted indices, returned in the order asked): memory is one batch, not the split."""

    def __init__(self, path, split: str):
        self.path, self._f = path, None
        with reading(path) as f:
            self.labels = f[split]["labels"][()].astype(np.int64)
            self.shape = f[split]["images"].shape
        self.split = split

    def read(self, indices) -> np.ndarray:
        if self._f is None:
            self._f = h5py.File(self.path, "r")   # per process (and per worker): opened on first use
        return read_rows(self._f[self.split]["images"], indices)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


# -- probe sets -------------------------------------------------------------------------------


def write_probe_set(path, cfg: dict, concept: str, images, labels, heldout, train_truth=None,
                    test_truth=None, classes=None) -> None:
    """``labels``: 1 for the concept's images, 0 for the others; ``classes``: each image's
    class id in the base dataset (-1 where it has none: folder concepts)."""
    with atomic.h5(path, cfg, concept=concept) as f:
        f.create_dataset("images", data=images)
        f.create_dataset("labels", data=np.asarray(labels, np.int64))
        f.create_dataset("classes", data=np.asarray(classes if classes is not None else np.full(len(labels), -1),
                                                    np.int64))
        f.create_dataset("heldout", data=np.asarray(heldout, bool))
        if train_truth is not None:
            f.create_dataset("train_concept_mask", data=np.asarray(train_truth, bool))
        if test_truth is not None:
            f.create_dataset("test_concept_mask", data=np.asarray(test_truth, bool))


def probe_set(path, images: bool = True) -> dict:
    """{"labels" 0/1, "heldout" bool, "classes" (class ids, -1 where none)[, "images"]} of a
    concept's probe set."""
    with reading(path) as f:
        out = {"labels": f["labels"][()].astype(np.int64), "heldout": f["heldout"][()].astype(bool),
               "classes": f["classes"][()].astype(np.int64) if "classes" in f else np.full(len(f["labels"]), -1)}
        if images:
            out["images"] = f["images"][()]
        return out


def probe_set_images(path, indices) -> np.ndarray:
    with reading(path) as f:
        return read_rows(f["images"], np.sort(np.asarray(indices, dtype=np.int64)))


def concept_truth(path, split: str = "train"):
    """Ground-truth concept mask of every base ``split`` image, or None where unknown."""
    with reading(path) as f:
        key = f"{split}_concept_mask"
        return f[key][()].astype(bool) if key in f else None


# -- models -----------------------------------------------------------------------------------


def write_model(path, cfg: dict, arch: dict, states: dict, metrics: dict, arrays=None, optimizer=None) -> None:
    """``states``: {"final" | "epoch_NNNN": {param: numpy array}}; ``metrics`` as attributes;
    per-example ``arrays`` (e.g. test_correct) under /metrics; ``optimizer``: {"epoch_NNNN":
    {param: momentum buffer}} under /optimizer, to resume training there (ablation.spawn_epoch)."""
    names = sorted(k for k in states if k != "final") + ["final"]
    with atomic.h5(path, cfg, arch=json.dumps(arch), metrics=json.dumps(metrics),
                   checkpoints=json.dumps(names)) as f:
        for k, v in metrics.items():
            f.attrs[k] = v
        for k, v in (arrays or {}).items():
            f.create_dataset(f"metrics/{k}", data=v)
        for name in names:
            g = f.create_group(name)
            for k, v in states[name].items():
                g.create_dataset(k, data=v)
        for name, buffers in (optimizer or {}).items():
            g = f.create_group(f"optimizer/{name}")
            for k, v in buffers.items():
                g.create_dataset(k, data=v)


def model_state(path, checkpoint: str = "final"):
    """(arch dict, {param: numpy array}) of one checkpoint."""
    with reading(path) as f:
        if checkpoint not in f:
            raise KeyError(f"{path}: no checkpoint {checkpoint!r} (have {json_attr(f, 'checkpoints')})")
        return json_attr(f, "arch"), {k: np.array(v) for k, v in f[checkpoint].items()}


def optimizer_state(path, checkpoint: str):
    """{param: momentum buffer} saved with intermediate checkpoint ``checkpoint``."""
    with reading(path) as f:
        if f"optimizer/{checkpoint}" not in f:
            raise ValueError(f"{path}: no optimizer state saved at {checkpoint!r} (ablation.spawn_epoch needs a "
                             f"saved checkpoint); rm {path} and rerun")
        return {k: np.array(v) for k, v in f[f"optimizer/{checkpoint}"].items()}


def model_metrics(path) -> dict:
    """The stored metrics and the per-test-image correctness (no weights)."""
    with reading(path) as f:
        return {**json_attr(f, "metrics"), "test_correct": f["metrics/test_correct"][()].astype(bool)}


def model_checkpoints(path) -> list:
    with reading(path) as f:
        return json_attr(f, "checkpoints")


# -- activations ------------------------------------------------------------------------------


def write_activations(path, cfg: dict, acts: dict, logits=None) -> None:
    with atomic.h5(path, cfg, layers=list(acts)) as f:
        for layer, a in acts.items():
            f.create_dataset(layer, data=a)
        if logits is not None:
            f.create_dataset("logits", data=np.asarray(logits, np.float32))


def activations(path) -> dict:
    """{layer: float [N, C_l]}."""
    with reading(path) as f:
        return {str(k): f[k][()] for k in f.attrs["layers"]}


def logits(path) -> np.ndarray:
    """The model's class logits [N, classes] on the probe set's images."""
    with reading(path) as f:
        if "logits" not in f:
            raise ValueError(f"{path}: no logits (made by an older version); rebuild it")
        return f["logits"][()]


# -- probes -----------------------------------------------------------------------------------

PROBE_ARRAYS = ("coef", "mean", "scale")
PATH_ARRAYS = ("path_C", "path_nnz", "path_acc")


def write_probes(path, cfg: dict, layers: list, members: list, fits: dict, heldout_counts=()) -> None:
    """``fits``: {(member, layer): {"probe": {coef, mean, scale, intercept, C}, "path": {...},
    "heldout_bal_acc", "train_bal_acc", "sparsity_k", "sparsity_reached", "n_channels"}};
    ``heldout_counts``: the held-out images per class (the balanced accuracy's resolution)."""
    shape = (len(members), len(layers))
    table = {key: np.zeros(shape, np.int64 if key == "sparsity_k" else np.float64)
             for key in ("heldout_bal_acc", "train_bal_acc", "sparsity_k")}
    with atomic.h5(path, cfg, layers=list(layers), members=list(members),
                   heldout_counts=[int(n) for n in heldout_counts]) as f:
        for i, m in enumerate(members):
            for j, layer in enumerate(layers):
                fit = fits[(m, layer)]
                g = f.create_group(f"m{m}/{layer}")
                for key in PROBE_ARRAYS:
                    g.create_dataset(key, data=fit["probe"][key])
                for key in PATH_ARRAYS:
                    g.create_dataset(key, data=fit["path"][key])
                g.attrs.update(intercept=fit["probe"]["intercept"], C=fit["probe"]["C"],
                               **{k: fit[k] for k in ("heldout_bal_acc", "train_bal_acc", "sparsity_k",
                                                      "sparsity_reached", "n_channels")})
                for key in table:
                    table[key][i, j] = fit[key]
        for key, arr in table.items():
            f.create_dataset(key, data=arr)


def probe(path, member, layer) -> dict:
    """One fitted probe: {coef, mean, scale, intercept, C}."""
    with reading(path) as f:
        g = f[f"m{member}/{layer}"]
        return {**{k: g[k][()] for k in PROBE_ARRAYS}, "intercept": float(g.attrs["intercept"]),
                "C": float(g.attrs["C"])}


def probes_table(path) -> dict:
    """{layers, members, heldout_bal_acc, train_bal_acc, sparsity_k [members x layers], config,
    heldout_counts (held-out images per class)}."""
    with reading(path) as f:
        return {"layers": [str(s) for s in f.attrs["layers"]], "members": [int(m) for m in f.attrs["members"]],
                "heldout_counts": [int(n) for n in f.attrs.get("heldout_counts", [])],
                **{k: f[k][()] for k in ("heldout_bal_acc", "train_bal_acc", "sparsity_k")},
                "config": json_attr(f, "config")}


# -- JSON and text outputs --------------------------------------------------------------------


def write_summary(path, summary: dict) -> None:
    atomic.write_json(path, summary)


def summary(path) -> dict:
    return atomic.read_json(path)


write_json = atomic.write_json
read_json = atomic.read_json
write_text = atomic.write_text
save_figure = atomic.save_figure
copy = atomic.copy


# -- TRAK features ----------------------------------------------------------------------------

FEATURE_ATTRS = ("proj_dim", "proj_seed", "projector", "layer_dim", "device_type", "precision", "model_hash",
                 "n_train", "checkpoint", "member", "model_id", "grad_dim")
# present only where they apply: the parameters whose gradients took the per-example (vmap) path
OPTIONAL_FEATURE_ATTRS = ("per_example_params",)


def write_feature_shard(path, cfg: dict, attrs: dict, indices, grads, out_to_loss) -> None:
    with atomic.h5(path, cfg, **attrs) as f:
        f.create_dataset("grads", data=grads)
        f.create_dataset("out_to_loss", data=out_to_loss)
        f.create_dataset("indices", data=indices)


def feature_shard(path) -> dict:
    """{"attrs", "indices", "grads", "out_to_loss"}; an unreadable shard is named."""
    with reading(path) as f:
        return {"attrs": feature_attrs_of(f), "indices": f["indices"][()], "grads": f["grads"][()],
                "out_to_loss": f["out_to_loss"][()]}


def write_features(path, cfg: dict, attrs: dict, grads, out_to_loss, x_xtx_inv) -> None:
    with atomic.h5(path, cfg, **attrs) as f:
        f.create_dataset("grads", data=grads)
        f.create_dataset("out_to_loss", data=out_to_loss)
        f.create_dataset("x_xtx_inv", data=x_xtx_inv)


def features(path, arrays=("x_xtx_inv", "out_to_loss")) -> dict:
    """{"attrs", <arrays>} of gathered features."""
    with reading(path) as f:
        return {"attrs": feature_attrs_of(f), **{k: f[k][()] for k in arrays}}


def feature_attrs_of(f) -> dict:
    return {k: atomic.attr(f.attrs[k]) for k in f.attrs if k not in ("config", "versions")}


# -- TRAK scores ------------------------------------------------------------------------------


def write_scores(path, cfg: dict, concept: str, layer: str, per_target, target_indices, n_models: int,
                 per_negative=None, negative_indices=None, estimator: str = "trak") -> None:
    """``per_target`` [T, n]: each target's score of every training image (by ``estimator``);
    optionally the same for held-out negatives (``per_negative`` [Tn, n])."""
    per_target = np.asarray(per_target, np.float32)
    extra = {} if estimator == "trak" else {"estimator": estimator}
    with atomic.h5(path, cfg, concept=concept, layer=layer, n_models=n_models, **extra) as f:
        f.create_dataset("per_target", data=per_target)
        f.create_dataset("concept_score", data=per_target.mean(0))
        if per_negative is not None:
            f.create_dataset("per_negative", data=np.asarray(per_negative, np.float32))
            f.create_dataset("negative_indices", data=np.asarray(negative_indices, np.int64))
        f.create_dataset("target_indices", data=np.asarray(target_indices, np.int64))


def write_unscored(path, cfg: dict, concept: str, layer: str, reason: str, estimator: str) -> None:
    """The scores file of a (concept, layer) an estimator does not score (the metagradient
    scores chosen layers only): no scores, and why; reading its scores raises."""
    with atomic.h5(path, cfg, concept=concept, layer=layer, estimator=estimator, scored=False, reason=reason):
        pass


def _scored(f, path) -> None:
    if not f.attrs.get("scored", True):
        raise ValueError(f"{path}: no scores here: {f.attrs['reason']}")


def concept_scores(path) -> np.ndarray:
    """One score per training image (mean over the concept's targets)."""
    with reading(path) as f:
        _scored(f, path)
        return f["concept_score"][()]


def negative_scores(path):
    """(per_negative [Tn, n], negative_indices [Tn]) scored with the targets, or (None, None)."""
    with reading(path) as f:
        _scored(f, path)
        if "per_negative" not in f:
            return None, None
        return f["per_negative"][()], f["negative_indices"][()]


def write_margin_scores(path, cfg: dict, concept: str, per_target, target_indices, classes, n_models: int,
                        estimator: str = "trak") -> None:
    """An estimator's scores [T, n] of each target's classification margin at its class;
    ``per_target`` None where the targets have no classes (the file then says so)."""
    with atomic.h5(path, cfg, concept=concept, n_models=n_models, defined=per_target is not None,
                   estimator=estimator) as f:
        f.create_dataset("target_indices", data=np.asarray(target_indices, np.int64))
        if per_target is not None:
            f.create_dataset("per_target", data=np.asarray(per_target, np.float32))
            f.create_dataset("classes", data=np.asarray(classes, np.int64))


def margin_scores(path):
    """(per_target [T, n], target_indices [T], classes [T]) of the margin, or None where undefined."""
    with reading(path) as f:
        if "per_target" not in f:
            return None
        return f["per_target"][()], f["target_indices"][()], f["classes"][()]


def per_target_scores(path):
    """(per_target [T, n], target_indices [T]): each target's score of every training image."""
    with reading(path) as f:
        _scored(f, path)
        return f["per_target"][()], f["target_indices"][()]


# -- ablation sets ----------------------------------------------------------------------------


def write_ablation(path, cfg: dict, condition: str, design: dict, n_train: int, removed, removed_scores,
                   reason: str, layer=None) -> None:
    removed = np.sort(np.asarray(removed, np.int64))
    keep = np.ones(n_train, bool)
    keep[removed] = False
    with atomic.h5(path, cfg, condition=condition, kind=design["kind"], concept=design.get("concept") or "",
                   layer=layer or "", n_train=n_train, n_removed=len(removed), reason=reason) as f:
        f.create_dataset("removed", data=removed)
        f.create_dataset("keep", data=np.flatnonzero(keep))
        if removed_scores is not None:
            f.create_dataset("removed_scores", data=np.asarray(removed_scores, np.float64))


def ablation(path) -> dict:
    """{"keep", "removed", "kind", "concept", "layer", "reason", "n_train", "n_removed", ...}."""
    with reading(path) as f:
        out = {k: f[k][()] for k in ("keep", "removed")}
        out.update({k: atomic.attr(v) for k, v in f.attrs.items() if k not in ("config", "versions")})
    out["n_train"], out["n_removed"] = int(out["n_train"]), int(out["n_removed"])
    return out


# -- LDS ----------------------------------------------------------------------------------------


def write_lds(path, cfg: dict, concept: str, layer: str, arrays: dict) -> None:
    """The LDS stage's arrays by name ("<fraction>/<estimator>/lds_per_target" [M, T],
    ".../predicted" [S, T], "<fraction>/actual_targets" [M, S, T], "<fraction>/actual_selectivity" [M, S])."""
    with atomic.h5(path, cfg, concept=concept, layer=layer) as f:
        for name, a in arrays.items():
            f.create_dataset(name, data=np.asarray(a, np.float64))


def lds_arrays(path) -> dict:
    """{name: array} of an LDS file (``write_lds``)."""
    out = {}
    with reading(path) as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out

"""Stage 5: TRAK features of the training set, per model checkpoint and shard.

For every training image: the projected gradient of the classification margin
(traker's image-classification output, z_y - logsumexp_{j != y} z_j), and the
out-to-loss term 1 - p(correct) = sigmoid(-margin). Shards are separate jobs; ``gather``
checks that they fit together and computes X (X^T X + lambda I)^-1, the train-side
factor of the TRAK score.
"""
from __future__ import annotations

import hashlib
import logging

import numpy as np
import torch
from tqdm import tqdm

from .. import artifacts
from ..model import checkpoints
from ..model.loader import prefetch
from ..model.resnet import to_input
from ..runtime import resolve_device
from .projection import factory

log = logging.getLogger(__name__)
# attributes every shard (and the scoring side) must agree on
CHECKED_ATTRS = artifacts.FEATURE_ATTRS + ("n_shards",)


def model_id(member: int, checkpoint: str, checkpoint_names) -> int:
    """The projector's model id of (member, checkpoint): same on the featurize and score side."""
    return int(member) * 1000 + list(checkpoint_names).index(checkpoint)


def model_hash(model) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def shard_indices(n: int, shard: int, n_shards: int) -> np.ndarray:
    return np.array_split(np.arange(n), n_shards)[shard]


def dtype_of(precision: str):
    return {"float32": torch.float32, "float16": torch.float16}[precision]


def setup(model_path, checkpoint: str, member: int, tcfg: dict, token_pool: str = "mean"):
    """(model, projected-gradient function, attrs) for one checkpoint under the ``trak`` slice;
    ``token_pool``: how the model pools token sequences (probe readouts)."""
    device = resolve_device(tcfg["device"])
    model = checkpoints.load(model_path, checkpoint, device, token_pool)
    grads = factory.make(tcfg["projector"], model, tcfg["proj_dim"], tcfg["proj_seed"], device.type,
                         layer_dim=tcfg["layer_dim"], dtype=dtype_of(tcfg["precision"]))
    attrs = {"proj_dim": grads.proj_dim,
             "layer_dim": int(getattr(grads.projector, "layer_dim", None) or 0),   # 0: no per-layer reduction
             "proj_seed": int(tcfg["proj_seed"]), "projector": type(grads.projector).__name__,
             "device_type": device.type, "precision": tcfg["precision"], "model_hash": model_hash(model),
             "checkpoint": checkpoint, "member": int(member),
             "grad_dim": int(sum(p.numel() for p in model.parameters())),
             "model_id": model_id(member, checkpoint, tcfg["checkpoints"])}
    per_example = getattr(grads.projector, "per_example", None)
    if per_example:   # the parameters whose gradients took the vmap path (none for resnet18)
        attrs["per_example_params"] = ",".join(per_example)
    return model, grads, attrs


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """traker's classification output per example: z_y - logsumexp_{j != y} z_j
    (arithmetic only, so it runs per example under vmap)."""
    mask = labels[:, None] == torch.arange(logits.shape[-1], device=logits.device)
    correct = (logits * mask).sum(-1)
    return correct - logits.masked_fill(mask, -torch.inf).logsumexp(-1)


def train_features(model, grads, x, y, model_id: int):
    """(projected margin gradients [B, k], out-to-loss terms 1 - p(y) [B]) of a batch."""
    g, margins = grads(model, lambda m, xb, yb: margin(m(xb), yb), x, y, model_id=model_id)
    return g.float().cpu().numpy(), torch.sigmoid(-margins).float().cpu().numpy().ravel()


def featurize(model_path, data_path, out_paths: dict, member: int, shard: int, cfg: dict) -> None:
    """Features of one shard of the training set for every checkpoint in ``out_paths``
    ({checkpoint: shard file}): each batch of images is read once and run through every
    checkpoint's model, so a job's work grows with its checkpoints, not its reads."""
    tcfg = cfg["trak"]
    setups = {ckpt: setup(model_path, ckpt, member, tcfg) for ckpt in out_paths}
    device = resolve_device(tcfg["device"])                 # where setup put every model
    info = artifacts.base_info(data_path)
    n_train, size = info["n_train"], info["image_size"]
    idx = shard_indices(n_train, shard, tcfg["shards"])
    reader = artifacts.BaseReader(data_path, "train")   # one batch of images in memory at a time
    feats = {c: np.zeros((len(idx), a["proj_dim"]), np.float32) for c, (_, _, a) in setups.items()}
    otl = {c: np.zeros(len(idx), np.float32) for c in setups}
    bs = tcfg["batch_size"]

    def batches():
        for s in range(0, len(idx), bs):
            yield s, reader.read(idx[s:s + bs]), reader.labels[idx[s:s + bs]]

    for s, images, labels in tqdm(prefetch(batches()), total=-(-len(idx) // bs), mininterval=10,
                                  desc=f"featurize m{member} shard {shard} ({len(setups)} checkpoints)"):
        x = to_input(images, size).to(device)        # the centre view of images stored larger
        y = torch.as_tensor(labels).to(device)
        for ckpt, (model, grads, attrs) in setups.items():
            feats[ckpt][s:s + bs], otl[ckpt][s:s + bs] = train_features(model, grads, x, y, attrs["model_id"])
    reader.close()
    for ckpt, (_, _, attrs) in setups.items():
        artifacts.write_feature_shard(out_paths[ckpt], cfg, {**attrs, "shard": int(shard),
                                                             "n_shards": int(tcfg["shards"]),
                                                             "n_train": int(n_train)}, idx, feats[ckpt], otl[ckpt])
        log.info("m%d %s shard %d/%d: %d images, proj %s(%d), mean out_to_loss %.4f", member, ckpt, shard,
                 tcfg["shards"], len(idx), attrs["projector"], attrs["proj_dim"], float(otl[ckpt].mean()))


def x_xtx_inv(grads: np.ndarray, lambda_reg: float = 0.0):
    """(X (X^T X + lam I)^-1, lam) in float64; lam = lambda_reg x mean diagonal of X^T X.

    With more feature dimensions than training images (k > n, e.g. unprojected
    gradients) the same matrix is computed in n x n form, (X X^T + lam I)^-1 X, using the
    pseudo-inverse when lam is 0 (X^T X is then singular).
    """
    x = torch.as_tensor(np.asarray(grads), dtype=torch.float64)
    n, k = x.shape
    lam = float(lambda_reg) * float((x * x).sum()) / k
    if k <= n:
        xtx = x.T @ x
        return (x @ torch.linalg.inv(xtx + lam * torch.eye(k, dtype=torch.float64))).numpy(), lam
    xxt = x @ x.T
    inv = torch.linalg.inv(xxt + lam * torch.eye(n, dtype=torch.float64)) if lam > 0 else torch.linalg.pinv(xxt)
    return (inv @ x).numpy(), lam


def gather(shard_paths, out_path, cfg: dict) -> None:
    """Join shards after checking they are complete and consistent; add X (X^T X + lam I)^-1."""
    shards = [artifacts.feature_shard(p) for p in shard_paths]
    ref = shards[0]["attrs"]
    for p, s in zip(shard_paths, shards):
        for k in CHECKED_ATTRS:
            if s["attrs"][k] != ref[k]:
                raise ValueError(f"{p}: shard does not match {shard_paths[0]}: {k} = {s['attrs'][k]!r} vs "
                                 f"{ref[k]!r}; refusing to mix features (re-run its featurize job)")
        if not (np.isfinite(s["grads"]).all() and np.isfinite(s["out_to_loss"]).all()):
            raise ValueError(f"{p}: TRAK shard holds non-finite values")
    numbers = sorted(int(s["attrs"]["shard"]) for s in shards)
    if numbers != list(range(int(ref["n_shards"]))):
        raise ValueError(f"TRAK shards {numbers} do not form 0..{int(ref['n_shards']) - 1} ({shard_paths[0]} ...)")
    indices = np.concatenate([s["indices"] for s in shards])
    if not np.array_equal(np.sort(indices), np.arange(int(ref["n_train"]))):
        raise ValueError(f"TRAK shards of {shard_paths[0]} ... do not cover the {int(ref['n_train'])} training "
                         f"images exactly once")
    order = np.argsort(indices)
    grads = np.concatenate([s["grads"] for s in shards])[order]
    otl = np.concatenate([s["out_to_loss"] for s in shards])[order]
    x_inv, lam = x_xtx_inv(grads, cfg["trak"]["lambda_reg"])
    attrs = {k: ref[k] for k in artifacts.FEATURE_ATTRS + artifacts.OPTIONAL_FEATURE_ATTRS if k in ref}
    artifacts.write_features(out_path, cfg, {**attrs, "lambda_abs": lam}, grads, otl, x_inv.astype(np.float32))
    log.info("gathered %d shards: %d x %d features", len(shard_paths), *grads.shape)


def featurize_stage(job) -> None:
    """``output``: shards {checkpoint: file} of this (member, shard)."""
    w = job.wildcards
    featurize(job.input["model"], job.input["data"], job.output["shards"], int(w["member"]), int(w["shard"]),
              job.params)


def gather_stage(job) -> None:
    """``input``: shards {checkpoint: {shard: file}}; ``output``: features {checkpoint: file}."""
    for ckpt, shards in job.input["shards"].items():
        gather([shards[k] for k in sorted(shards, key=int)], job.output["features"][ckpt], job.params)

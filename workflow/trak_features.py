"""Stage 5: TRAK features of the training set, per model checkpoint and shard.

For every training image: the projected gradient of the classification margin
(traker's ``ImageClassificationModelOutput``), and the out-to-loss term 1 - p(correct).
Shards are separate jobs; ``gather`` checks that they fit together and computes
X (X^T X + lambda I)^-1, the train-side factor of the TRAK score.
"""
from __future__ import annotations

import hashlib
import logging

import numpy as np
import torch
from tqdm import tqdm
from trak.gradient_computers import FunctionalGradientComputer
from trak.modelout_functions import ImageClassificationModelOutput

from . import checkpoints, h5io, imagesets, projectors
from .factored import FactoredProjector
from .models import resolve_device, to_input

log = logging.getLogger(__name__)
CHECKED_ATTRS = ("proj_dim", "proj_seed", "projector", "layer_dim", "device_type", "precision", "model_hash",
                 "n_train", "n_shards", "checkpoint", "member", "model_id", "grad_dim")


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


def setup(model_path, checkpoint: str, member: int, tcfg: dict):
    """(model, projector, attrs) for one checkpoint under the ``trak`` config slice."""
    device = resolve_device(tcfg["device"])
    if device.type == "cuda" and tcfg["precision"] == "float32":
        # full float32 on the GPU: no TF32 in convolutions (cuDNN's default) or matmuls,
        # so GPU features match CPU ones to float32 rounding
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    model = checkpoints.load(model_path, checkpoint, device)
    grad_dim = sum(p.numel() for p in model.parameters())
    proj = projectors.make(tcfg["projector"], grad_dim, tcfg["proj_dim"], tcfg["proj_seed"], device.type,
                           model=model, layer_dim=tcfg.get("layer_dim"))
    attrs = {"proj_dim": int(tcfg["proj_dim"]) if tcfg["projector"] != "noop" else grad_dim,
             "layer_dim": int(getattr(proj, "layer_dim", None) or 0),   # 0: no per-layer reduction
             "proj_seed": int(tcfg["proj_seed"]), "projector": type(proj).__name__,
             "device_type": device.type, "precision": tcfg["precision"], "model_hash": model_hash(model),
             "checkpoint": checkpoint, "member": int(member), "grad_dim": int(grad_dim),
             "model_id": model_id(member, checkpoint, tcfg["checkpoints"])}
    return model, proj, attrs


def featurize(model_path, data_path, out_path, member: int, checkpoint: str, shard: int, cfg: dict,
              threads: int = 1) -> None:
    tcfg = cfg["trak"]
    torch.set_num_threads(max(1, threads))
    model, proj, attrs = setup(model_path, checkpoint, member, tcfg)
    device, dtype = next(model.parameters()).device, dtype_of(tcfg["precision"])
    with h5io.read(data_path) as f:
        n_train = len(f["train/labels"])
    idx = shard_indices(n_train, shard, tcfg["shards"])
    images, labels = imagesets.load_split(data_path, "train", idx)
    features_of = TrainFeatures(model, proj, attrs["grad_dim"], dtype)
    feats = np.zeros((len(idx), attrs["proj_dim"]), np.float32)
    otl = np.zeros(len(idx), np.float32)
    bs = tcfg["batch_size"]
    for s in tqdm(range(0, len(idx), bs), desc=f"featurize m{member} {checkpoint} shard {shard}", mininterval=10):
        x = to_input(images[s:s + bs]).to(device)
        y = torch.as_tensor(labels[s:s + bs]).to(device)
        feats[s:s + bs], otl[s:s + bs] = features_of(x, y, attrs["model_id"])
    with h5io.atomic_h5(out_path, cfg, shard=int(shard), n_shards=int(tcfg["shards"]), n_train=int(n_train),
                        **attrs) as f:
        f.create_dataset("grads", data=feats)
        f.create_dataset("out_to_loss", data=otl)
        f.create_dataset("indices", data=idx)
    log.info("m%d %s shard %d/%d: %d images, proj %s(%d), mean out_to_loss %.4f", member, checkpoint, shard,
             tcfg["shards"], len(idx), attrs["projector"], attrs["proj_dim"], float(otl.mean()))


def _py(v):
    """HDF5 attribute -> plain python value (readable in messages)."""
    return v.item() if hasattr(v, "item") else (v.decode() if isinstance(v, bytes) else v)


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


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """traker's classification output per example: z_y - logsumexp_{j != y} z_j."""
    rows = torch.arange(len(labels), device=logits.device)
    others = logits.clone()
    others[rows, labels] = -torch.inf
    return logits[rows, labels] - others.logsumexp(-1)


class TrainFeatures:
    """Projected margin gradients [B, k] and out-to-loss terms 1 - p(y) [B] of a batch:
    from hooks in one batched pass with the factored projector, else traker's per-example
    gradients (``FunctionalGradientComputer``) projected by ``proj``."""

    def __init__(self, model, proj, grad_dim: int, dtype=torch.float32):
        self.model, self.proj = model, proj
        self.factored = isinstance(proj, FactoredProjector)
        device = next(model.parameters()).device
        self.gc = None if self.factored else FunctionalGradientComputer(
            model, ImageClassificationModelOutput(), grad_dim, dtype, device)

    def __call__(self, x, y, model_id: int):
        if self.factored:
            grads, margins = self.proj.featurize(self.model, lambda m, xb: margin(m(xb), y), x, model_id)
            otl = torch.sigmoid(-margins)          # 1 - softmax(z)_y, since p(y) = sigmoid(margin)
        else:
            grads = self.proj.project(self.gc.compute_per_sample_grad((x, y)), model_id)
            otl = self.gc.compute_loss_grad((x, y))
        return grads.float().cpu().numpy(), otl.float().cpu().numpy().ravel()


def gather(shard_paths, out_path, cfg: dict) -> None:
    """Join shards after checking they are complete and consistent; add X (X^T X + lam I)^-1."""
    metas, parts = [], []
    for p in shard_paths:
        try:
            with h5io.read(p) as f:
                meta = {k: _py(f.attrs[k]) for k in CHECKED_ATTRS + ("shard",)}
                part = (f["indices"][()], f["grads"][()], f["out_to_loss"][()])
        except (OSError, KeyError) as e:
            raise ValueError(f"{p}: unreadable or incomplete TRAK shard ({e})") from e
        metas.append(meta)
        parts.append(part)
    ref = metas[0]
    for p, m in zip(shard_paths, metas):
        for k in CHECKED_ATTRS:
            if m[k] != ref[k]:
                raise ValueError(f"{p}: shard does not match {shard_paths[0]}: {k} = {m[k]!r} vs {ref[k]!r}; "
                                 f"refusing to mix features (re-run its featurize job)")
    shards = sorted(int(m["shard"]) for m in metas)
    if shards != list(range(int(ref["n_shards"]))):
        raise ValueError(f"TRAK shards {shards} do not form 0..{int(ref['n_shards']) - 1} ({shard_paths[0]} ...)")
    indices = np.concatenate([q[0] for q in parts])
    if not np.array_equal(np.sort(indices), np.arange(int(ref["n_train"]))):
        raise ValueError(f"TRAK shards of {shard_paths[0]} ... do not cover the {int(ref['n_train'])} training "
                         f"images exactly once")
    order = np.argsort(indices)
    grads = np.concatenate([q[1] for q in parts])[order]
    otl = np.concatenate([q[2] for q in parts])[order]
    for p, q in zip(shard_paths, parts):
        if not (np.isfinite(q[1]).all() and np.isfinite(q[2]).all()):
            raise ValueError(f"{p}: TRAK shard holds non-finite values")
    x_inv, lam = x_xtx_inv(grads, cfg["trak"]["lambda_reg"])
    attrs = {k: ref[k] for k in CHECKED_ATTRS if k != "n_shards"}
    with h5io.atomic_h5(out_path, cfg, lambda_abs=lam, **attrs) as f:
        f.create_dataset("grads", data=grads)
        f.create_dataset("out_to_loss", data=otl)
        f.create_dataset("x_xtx_inv", data=x_inv.astype(np.float32))
    log.info("gathered %d shards: %d x %d features", len(shard_paths), *grads.shape)


def load_meta(path) -> dict:
    with h5io.read(path) as f:
        return {k: _py(f.attrs[k]) for k in f.attrs if k not in ("config", "versions")}

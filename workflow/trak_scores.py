"""Stage 6: TRAK scores whose target is a concept probe, and their ground-truth check.

For concept c, layer l: target images are the concept's held-out positives (a seeded
subset of at most ``trak.max_targets``). For each model checkpoint, the target side is
the projected gradient of probe_{c,l,m}(standardise(pool(h_l(x)))) with respect to the
network's parameters, projected with the same projector (same seed, model id) as the
training features. Models combine as traker's ``finalize_scores`` does:

    scores[i, t] = mean_m( X_m (X_m^T X_m)^-1 g_m(t) )[i] * mean_m(out_to_loss_m[i])

The concept score of training image i is the mean over targets.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from trak.utils import vectorize

from . import h5io, probes
from .factored import FactoredProjector
from .models import to_input
from .probe_function import ProbeOutput, per_example_output
from .seeding import rng as seeded_rng
from .trak_features import load_meta, setup

log = logging.getLogger(__name__)


def target_images(probe_set_path, max_targets: int, seed: int, concept: str):
    with h5io.read(probe_set_path) as f:
        y, held = f["labels"][()], f["heldout"][()].astype(bool)
        idx = np.flatnonzero(held & (y == 1))
        if len(idx) > max_targets:
            idx = np.sort(seeded_rng(seed, "trak-targets", concept).choice(idx, max_targets, replace=False))
        return idx, f["images"][idx] if len(idx) else f["images"][:0]


def probe_gradients(model, probe: dict, layer: str, images, proj, model_id: int, batch_size: int):
    """Projected per-example gradients [T, k] of the probe output at ``layer``."""
    fn = ProbeOutput(probe, layer, device=next(model.parameters()).device)
    return target_gradients(model, fn, images, proj, model_id, batch_size)


def target_gradients(model, fn, images, proj, model_id: int, batch_size: int):
    """Projected per-example gradients [T, k] of the batched output ``fn(model, x) -> [B]``:
    from hooks with the factored projector, else per example under ``torch.func.vmap``."""
    device = next(model.parameters()).device
    factored = isinstance(proj, FactoredProjector)
    if not factored:
        params = {k: v.detach() for k, v in model.named_parameters()}
        buffers = {k: v.detach() for k, v in model.named_buffers()}
        grad_fn = torch.func.vmap(torch.func.grad(per_example_output(model, fn)), in_dims=(None, None, 0))
    out = []
    for s in range(0, len(images), batch_size):
        x = to_input(images[s:s + batch_size]).to(device)
        if factored:
            g = proj.featurize(model, fn, x, model_id)[0]
        else:
            g = proj.project(vectorize(grad_fn(params, buffers, x), device=device), model_id)
        out.append(g.float().cpu())
    return torch.cat(out).numpy()


def combine(parts) -> np.ndarray:
    """TRAK's ensemble rule over models m: parts = [(x_xtx_inv_m [n,k], target_grads_m [T,k],
    out_to_loss_m [n]), ...] -> scores [T, n] = (mean_m X_m(X_m^T X_m)^-1 g_m) * mean_m out_to_loss_m.

    ``parts`` may be a generator: one model's features are held in memory at a time.
    """
    acc = otl = None
    n = 0
    for x, g, o in parts:
        kernel = np.asarray(x, np.float64) @ np.asarray(g, np.float64).T
        acc = kernel if acc is None else acc + kernel
        otl = np.asarray(o, np.float64) if otl is None else otl + o
        n += 1
    return ((acc / n) * (otl / n)[:, None]).T


def enrichment(scores: np.ndarray, truth: np.ndarray, fraction: float, seed: int) -> dict:
    """Precision of ground-truth images among the top-k over their base rate, and the same
    figure for a seeded random ranking (the null, about 1)."""
    k = max(1, int(round(fraction * len(scores))))
    base = float(truth.mean())
    top = np.argsort(-scores, kind="stable")[:k]
    bottom = np.argsort(scores, kind="stable")[:k]
    rand = seeded_rng(seed, "enrichment-null").permutation(len(scores))[:k]
    return {"k": k, "base_rate": base, "top_precision": float(truth[top].mean()),
            "enrichment": float(truth[top].mean() / base) if base > 0 else float("nan"),
            "bottom_enrichment": float(truth[bottom].mean() / base) if base > 0 else float("nan"),
            "random_enrichment": float(truth[rand].mean() / base) if base > 0 else float("nan")}


def score(concept: str, layer: str, probe_set_path, probes_path, models: dict, features: dict,
          out_path, json_path, cfg: dict, threads: int = 1) -> None:
    """``models``: {(member, checkpoint): model file}; ``features``: same keys -> gathered features."""
    tcfg = cfg["trak"]
    torch.set_num_threads(max(1, threads))
    tidx, timages = target_images(probe_set_path, tcfg["max_targets"], cfg["seed"], concept)
    if len(tidx) == 0:
        raise ValueError(f"{probe_set_path}: concept {concept!r} has no held-out positives to use as TRAK targets")

    def parts():
        for (member, ckpt) in tqdm(sorted(models), desc=f"score {concept}/{layer}"):
            model, proj, attrs = setup(models[(member, ckpt)], ckpt, member, tcfg)
            meta = load_meta(features[(member, ckpt)])
            for key, value in attrs.items():  # same projector, device, seed, model, checkpoint
                if meta[key] != value:
                    raise ValueError(f"{features[(member, ckpt)]}: features were made with {key}={meta[key]!r} but "
                                     f"scoring would use {value!r}; rerun featurize with the same trak settings")
            probe = probes.load_probe(probes_path, member, layer)
            g = probe_gradients(model, probe, layer, timages, proj, attrs["model_id"], tcfg["batch_size"])
            with h5io.read(features[(member, ckpt)]) as f:
                yield f["x_xtx_inv"][()], g, f["out_to_loss"][()]

    n = len(models)
    per_target = combine(parts()).astype(np.float32)   # [targets, n_train]
    concept_score = per_target.mean(0)
    result = {"concept": concept, "layer": layer, "n_targets": int(len(tidx)), "n_models": n}
    with h5io.read(probe_set_path) as f:
        truth = f["train_concept_mask"][()].astype(bool) if "train_concept_mask" in f else None
    if truth is not None:
        result.update(enrichment(concept_score, truth, tcfg["top_fraction"], cfg["seed"]))
    with h5io.atomic_h5(out_path, cfg, concept=concept, layer=layer, n_models=n) as f:
        f.create_dataset("per_target", data=per_target)
        f.create_dataset("concept_score", data=concept_score)
        f.create_dataset("target_indices", data=tidx)
    Path(json_path).write_text(json.dumps(result, indent=2))
    log.info("%s/%s: %s", concept, layer, json.dumps(result))

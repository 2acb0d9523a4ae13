"""Stage 6: TRAK scores whose target is a concept probe, and their ground-truth check.

For concept c, layer l: target images are the concept's held-out positives (a seeded
subset of at most ``trak.max_targets``). The same number of held-out negatives are scored
alongside: validate uses them for TRAK's predicted change of the probe's selectivity
(targets minus negatives); rankings use the targets only. For each model checkpoint, the target side is
the projected gradient of probe_{c,l,m}(standardise(pool(h_l(x)))) with respect to the
network's parameters, projected with the same projector (same seed, model id) as the
training features. Models combine as traker's ``finalize_scores`` does:

    scores[i, t] = mean_m( X_m (X_m^T X_m)^-1 g_m(t) )[i] * mean_m(out_to_loss_m[i])

The concept score of training image i is the mean over targets.
"""
from __future__ import annotations

import json
import logging

import numpy as np
import torch
from tqdm import tqdm

from .. import artifacts
from ..model.resnet import to_input
from ..probing.probe_function import ProbeOutput
from ..seeding import rng as seeded_rng
from .features import setup

log = logging.getLogger(__name__)


def target_indices(probe_set_path, max_targets: int, seed: int, concept: str, label: int = 1) -> np.ndarray:
    """The concept's held-out positives (``label`` 1: the TRAK targets) or negatives (0: the
    reference for selectivity) in its probe set, a seeded subset of ``max_targets``."""
    ps = artifacts.probe_set(probe_set_path, images=False)
    idx = np.flatnonzero(ps["heldout"] & (ps["labels"] == label))
    if len(idx) > max_targets:
        stream = "trak-targets" if label == 1 else "trak-negatives"
        idx = np.sort(seeded_rng(seed, stream, concept).choice(idx, max_targets, replace=False))
    return idx


def target_gradients(model, grads, fn, images, model_id: int, batch_size: int) -> np.ndarray:
    """Projected per-example gradients [T, k] of the batched output ``fn(model, x) -> [B]``."""
    device = next(model.parameters()).device
    out = [grads(model, fn, to_input(images[s:s + batch_size]).to(device), model_id=model_id)[0].float().cpu()
           for s in range(0, len(images), batch_size)]
    return torch.cat(out).numpy()


def probe_gradients(model, grads, probe: dict, layer: str, images, model_id: int, batch_size: int) -> np.ndarray:
    """Projected per-example gradients [T, k] of the probe's output at ``layer``."""
    fn = ProbeOutput(probe, layer, device=next(model.parameters()).device)
    return target_gradients(model, grads, fn, images, model_id, batch_size)


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


def enrichment(scores: np.ndarray, truth: np.ndarray, fraction: float, seed: int, hardness=None) -> dict:
    """Precision of ground-truth images among the top-k over their base rate, the same for
    the bottom-k, and two baselines a ranking must beat: a seeded random ranking (the
    null, about 1) and the "hardest images", ranked by the ensemble's mean out-to-loss
    term 1 - p(correct) (``hardness``), i.e. how badly the models fit each image."""
    k = max(1, int(round(fraction * len(scores))))
    base = float(truth.mean())

    def share(idx):
        return float(truth[idx].mean() / base) if base > 0 else float("nan")

    top = np.argsort(-scores, kind="stable")[:k]
    bottom = np.argsort(scores, kind="stable")[:k]
    rand = seeded_rng(seed, "enrichment-null").permutation(len(scores))[:k]
    out = {"k": k, "base_rate": base, "top_precision": float(truth[top].mean()), "enrichment": share(top),
           "bottom_enrichment": share(bottom), "random_enrichment": share(rand)}
    if hardness is not None:
        out["hardest_enrichment"] = share(np.argsort(-np.asarray(hardness), kind="stable")[:k])
    return out


def score(concept: str, layer: str, probe_set_path, probes_path, models: dict, features: dict,
          out_path, json_path, cfg: dict) -> dict:
    """``models``: {member: model file}; ``features``: {(member, checkpoint): gathered features}."""
    tcfg = cfg["trak"]
    tidx = target_indices(probe_set_path, tcfg["max_targets"], cfg["seed"], concept)
    if len(tidx) == 0:
        raise ValueError(f"{probe_set_path}: concept {concept!r} has no held-out positives to use as TRAK targets")
    nidx = target_indices(probe_set_path, tcfg["max_targets"], cfg["seed"], concept, label=0)
    # targets and negatives in one pass; the negatives' scores predict the change off the concept
    timages = np.concatenate([artifacts.probe_set_images(probe_set_path, tidx),
                              artifacts.probe_set_images(probe_set_path, nidx)])

    hardness = []

    def parts():
        for (member, ckpt) in tqdm(sorted(features), desc=f"score {concept}/{layer}"):
            model, grads, attrs = setup(models[member], ckpt, member, tcfg)
            feats = artifacts.features(features[(member, ckpt)])
            for key, value in attrs.items():  # same projector, device, seed, model, checkpoint
                if feats["attrs"][key] != value:
                    raise ValueError(f"{features[(member, ckpt)]}: features were made with {key}="
                                     f"{feats['attrs'][key]!r} but scoring would use {value!r}; rerun featurize "
                                     f"with the same trak settings")
            probe = artifacts.probe(probes_path, member, layer)
            g = probe_gradients(model, grads, probe, layer, timages, attrs["model_id"], tcfg["batch_size"])
            hardness.append(feats["out_to_loss"])
            yield feats["x_xtx_inv"], g, feats["out_to_loss"]

    both = combine(parts()).astype(np.float32)   # [targets + negatives, n_train]
    per_target, per_negative = both[:len(tidx)], both[len(tidx):]
    result = {"concept": concept, "layer": layer, "n_targets": int(len(tidx)), "n_models": len(features)}
    truth = artifacts.concept_truth(probe_set_path)
    if truth is not None:
        result.update(enrichment(per_target.mean(0), truth, tcfg["top_fraction"], cfg["seed"],
                                 hardness=np.mean(hardness, axis=0)))
    artifacts.write_scores(out_path, cfg, concept, layer, per_target, tidx, len(features),
                           per_negative=per_negative, negative_indices=nidx)
    artifacts.write_json(json_path, result)
    log.info("%s/%s: %s", concept, layer, json.dumps(result))
    return result


def score_stage(job) -> None:
    """``input``: probe_set, probes, models {member: file}, features {member: {checkpoint: file}}."""
    models = {int(m): p for m, p in job.input["models"].items()}
    features = {(int(m), c): p for m, by_ckpt in job.input["features"].items() for c, p in by_ckpt.items()}
    score(job.wildcards["concept"], job.wildcards["layer"], job.input["probe_set"], job.input["probes"], models,
          features, job.output["scores"], job.output["enrichment"], job.params)

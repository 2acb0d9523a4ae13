"""Stage 6: TRAK scores whose target is a concept probe, and their ground-truth check.

For concept c, layer l: target images are the concept's held-out positives (a seeded
subset of at most ``trak.max_targets``). The same number of held-out negatives are scored
alongside: validate uses them for TRAK's predicted change of the probe's selectivity
(targets minus negatives); rankings use the targets only. For each model checkpoint, the target side is
the projected gradient of probe_{c,l,m}(standardise(pool(h_l(x)))) with respect to the
network's parameters, projected with the same projector (same seed, model id) as the
training features. Models combine as traker's ``finalize_scores`` does:

    scores[i, t] = mean_m( X_m (X_m^T X_m)^-1 g_m(t) )[i] * mean_m(out_to_loss_m[i])

The concept score of training image i is the mean over targets. One job scores every
(concept, layer) of a condition: each model checkpoint is loaded, and its features read,
once for all of them (``Ensemble`` keeps one running sum per target set). On CUDA
(``trak.device``) the products run on the GPU in float64; on the CPU in numpy, as before.
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
from ..runtime import resolve_device
from ..seeding import rng as seeded_rng
from .features import margin, setup

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


def target_gradients(model, grads, fn, images, model_id: int, batch_size: int, aux=None) -> np.ndarray:
    """Projected per-example gradients [T, k] of the batched output ``fn(model, x) -> [B]``
    (``fn(model, x, aux) -> [B]`` with ``aux`` [T], e.g. the targets' classes)."""
    device = next(model.parameters()).device
    extra = (lambda s: ()) if aux is None else (lambda s: (torch.as_tensor(aux[s:s + batch_size]).to(device),))
    out = [grads(model, fn, to_input(images[s:s + batch_size]).to(device), *extra(s), model_id=model_id)[0]
           .float().cpu() for s in range(0, len(images), batch_size)]
    return torch.cat(out).numpy()


def margin_gradients(model, grads, images, classes, model_id: int, batch_size: int) -> np.ndarray:
    """Projected per-example gradients [T, k] of the classification margin (TRAK's training
    output function) of each target at its class: the literature's LDS target."""
    return target_gradients(model, grads, lambda m, xb, yb: margin(m(xb), yb), images, model_id, batch_size,
                            aux=np.asarray(classes, np.int64))


def probe_gradients(model, grads, probe: dict, layer: str, images, model_id: int, batch_size: int) -> np.ndarray:
    """Projected per-example gradients [T, k] of the probe's output at ``layer``."""
    fn = ProbeOutput(probe, layer, device=next(model.parameters()).device)
    return target_gradients(model, grads, fn, images, model_id, batch_size)


class Ensemble:
    """TRAK's ensemble rule, one model at a time: ``add(x_xtx_inv_m [n,k], {key: g_m [T,k]},
    out_to_loss_m [n])`` per model m, then ``scores(key)`` -> [T, n] =
    (mean_m X_m(X_m^T X_m)^-1 g_m) * mean_m out_to_loss_m. Only the running sums
    ([n, T] per key) are held, never a second model's features. ``device`` cuda: the
    products run there (float64); else numpy float64."""

    def __init__(self, device=None):
        self.device = torch.device(device) if device is not None else None
        self.cuda = self.device is not None and self.device.type == "cuda"
        self.acc, self.otl, self.n = {}, None, 0

    def _float64(self, a):
        """``a`` as float64 where the products run: a CUDA tensor, else a numpy array."""
        if self.cuda:
            return torch.as_tensor(np.asarray(a)).to(self.device, torch.float64)
        return np.asarray(a, np.float64)

    def add(self, x, grads: dict, out_to_loss) -> None:
        x = self._float64(x)
        for key, g in grads.items():
            kernel = x @ self._float64(g).T
            self.acc[key] = kernel if key not in self.acc else self.acc[key] + kernel
        self.otl = np.asarray(out_to_loss, np.float64) if self.otl is None else self.otl + out_to_loss
        self.n += 1

    def scores(self, key) -> np.ndarray:
        acc = self.acc[key]
        if self.cuda:
            acc = acc.cpu().numpy()
        return ((acc / self.n) * (self.otl / self.n)[:, None]).T


def combine(parts) -> np.ndarray:
    """TRAK's ensemble rule over models m: parts = [(x_xtx_inv_m [n,k], target_grads_m [T,k],
    out_to_loss_m [n]), ...] -> scores [T, n] (``Ensemble`` with one target set).

    ``parts`` may be a generator: one model's features are held in memory at a time.
    """
    ens = Ensemble()
    for x, g, o in parts:
        ens.add(x, {0: g}, o)
    return ens.scores(0)


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


def concept_targets(probe_set_path, concept: str, tcfg: dict, seed: int):
    """(target indices, negative indices, their images stacked: targets first, the targets'
    classes or None where the probe set has none) of one concept."""
    tidx = target_indices(probe_set_path, tcfg["max_targets"], seed, concept)
    if len(tidx) == 0:
        raise ValueError(f"{probe_set_path}: concept {concept!r} has no held-out positives to use as TRAK targets")
    nidx = target_indices(probe_set_path, tcfg["max_targets"], seed, concept, label=0)
    # targets and negatives in one pass; the negatives' scores predict the change off the concept
    images = np.concatenate([artifacts.probe_set_images(probe_set_path, tidx),
                             artifacts.probe_set_images(probe_set_path, nidx)])
    classes = artifacts.probe_set(probe_set_path, images=False)["classes"][tidx]
    return tidx, nidx, images, (classes if (classes >= 0).all() else None)


def check_features(path, feats: dict, attrs: dict) -> None:
    for key, value in attrs.items():  # same projector, device, seed, model, checkpoint
        if feats["attrs"][key] != value:
            raise ValueError(f"{path}: features were made with {key}={feats['attrs'][key]!r} but scoring would "
                             f"use {value!r}; rerun featurize with the same trak settings")


def score(concepts: dict, layers, models: dict, features: dict, outputs: dict, cfg: dict) -> dict:
    """Every (concept, layer) target of one condition.

    ``concepts``: {concept: (probe set file, probes file)}; ``models``: {member: model
    file}; ``features``: {(member, checkpoint): gathered features}; ``outputs``:
    {concept: {layer: (scores .h5, enrichment .json), "margin": scores .h5}}: the margin
    file holds the TRAK scores of the targets' classification margins (the LDS stage's
    second readout; none where the probe set has no classes). Each checkpoint is set up
    and its features read once. Returns {concept: {layer: enrichment row}}.
    """
    tcfg = cfg["trak"]
    targets = {c: concept_targets(ps, c, tcfg, cfg["seed"]) for c, (ps, _) in concepts.items()}
    ens, hardness = Ensemble(resolve_device(tcfg["device"])), []
    for (member, ckpt) in tqdm(sorted(features), desc=f"score {len(concepts)} concepts x {len(layers)} layers"):
        model, grads, attrs = setup(models[member], ckpt, member, tcfg)
        feats = artifacts.features(features[(member, ckpt)])
        check_features(features[(member, ckpt)], feats, attrs)
        g = {(c, layer): probe_gradients(model, grads, artifacts.probe(concepts[c][1], member, layer), layer,
                                         targets[c][2], attrs["model_id"], tcfg["batch_size"])
             for c in concepts for layer in layers}
        g.update({(c, "margin"): margin_gradients(model, grads, targets[c][2][:len(targets[c][0])], targets[c][3],
                                                  attrs["model_id"], tcfg["batch_size"])
                  for c in concepts if targets[c][3] is not None})
        hardness.append(feats["out_to_loss"])
        ens.add(feats["x_xtx_inv"], g, feats["out_to_loss"])
        del feats, g
    results = {}
    for c, (probe_set_path, _) in concepts.items():
        tidx, nidx, _, classes = targets[c]
        artifacts.write_margin_scores(outputs[c]["margin"], cfg, c, None if classes is None else
                                      ens.scores((c, "margin")).astype(np.float32), tidx, classes, len(features))
        truth = artifacts.concept_truth(probe_set_path)
        for layer in layers:
            both = ens.scores((c, layer)).astype(np.float32)   # [targets + negatives, n_train]
            per_target, per_negative = both[:len(tidx)], both[len(tidx):]
            result = {"concept": c, "layer": layer, "n_targets": int(len(tidx)), "n_models": len(features)}
            if truth is not None:
                result.update(enrichment(per_target.mean(0), truth, tcfg["top_fraction"], cfg["seed"],
                                         hardness=np.mean(hardness, axis=0)))
            out_path, json_path = outputs[c][layer]
            artifacts.write_scores(out_path, cfg, c, layer, per_target, tidx, len(features),
                                   per_negative=per_negative, negative_indices=nidx)
            artifacts.write_json(json_path, result)
            log.info("%s/%s: %s", c, layer, json.dumps(result))
            results.setdefault(c, {})[layer] = result
    return results


def score_stage(job) -> None:
    """``input``: probe_sets and probes {concept: file}, models {member: file}, features
    {member: {checkpoint: file}}; ``output``: scores and enrichment {concept: {layer: file}}."""
    i, o = job.input, job.output
    models = {int(m): p for m, p in i["models"].items()}
    features = {(int(m), c): p for m, by_ckpt in i["features"].items() for c, p in by_ckpt.items()}
    concepts = {c: (i["probe_sets"][c], i["probes"][c]) for c in i["probe_sets"]}
    layers = list(job.params["layers"])
    outputs = {c: {**{layer: (o["scores"][c][layer], o["enrichment"][c][layer]) for layer in layers},
                   "margin": o["margin"][c]} for c in concepts}
    score(concepts, layers, models, features, outputs, job.params)

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
import time

import numpy as np
import torch
from tqdm import tqdm

from .. import artifacts
from ..model import checkpoints
from ..model.resnet import to_input
from ..probing.activations import pooled_activations
from ..probing.probe_function import ProbeOutput
from ..probing.summary import location as concept_location
from ..runtime import resolve_device
from ..seeding import rng as seeded_rng
from . import estimators
from .estimators import Ensemble, combine  # noqa: F401  (TRAK's ensemble rule, used here before the registry)
from .ekfac import BlockDataset
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


def training_activations(model, data_path, layers, batch_size: int) -> dict:
    """{layer: float32 [n_train, C]}: pooled activations of every training image (the centre
    view), read batch by batch: memory is one batch plus the pooled arrays."""
    reader = artifacts.BaseReader(data_path, "train")
    n, size = reader.shape[0], artifacts.base_info(data_path)["image_size"]
    device = next(model.parameters()).device
    out = {layer: [] for layer in layers}
    with torch.no_grad():
        for s in range(0, n, batch_size):
            pooled = model.pooled(to_input(reader.read(np.arange(s, min(n, s + batch_size))), size).to(device), layers)
            for layer in layers:
                out[layer].append(pooled[layer].float().cpu().numpy())
    reader.close()
    return {k: np.concatenate(v) for k, v in out.items()}


class Timer:
    """CPU seconds of the shared work (target gradients, activations), by name."""

    def __init__(self):
        self.seconds = {}

    def __call__(self, name, fn, *args, **kwargs):
        start = time.process_time()
        out = fn(*args, **kwargs)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.process_time() - start
        return out


def checkpoint_inputs(member, ckpt, models, features, concepts, targets, layers, names, cfg, data_path, timer,
                      lr_weight) -> estimators.Checkpoint:
    """What checkpoint (member, ckpt) hands every estimator: features, the rows of each
    target set and, where an estimator of ``names`` reads them, the target gradients of the
    job's readout (``cfg["readout"]``: the probes at each layer, or the targets'
    classification margin) and the final model's pooled activations (the similarity
    baseline; probe readouts only, once per member)."""
    tcfg, readout = cfg["trak"], cfg.get("readout", "probe")
    pooling = cfg.get("token_pool", "mean")
    model, grads, attrs = setup(models[member], ckpt, member, tcfg, pooling)
    arrays = ("x_xtx_inv", "out_to_loss") + (("grads",) if estimators.needs(names, "gradients", raw=True) else ())
    feats = artifacts.features(features[(member, ckpt)], arrays=arrays)
    check_features(features[(member, ckpt)], feats, attrs)
    if readout == "probe":
        rows = {(c, layer): len(targets[c][2]) for c in concepts for layer in layers}
    else:
        rows = {(c, "margin"): len(targets[c][0]) for c in concepts if targets[c][3] is not None}
    g = {}
    if estimators.needs(names, "gradients"):
        def gradients(key):
            c, layer = key
            if layer == "margin":
                return margin_gradients(model, grads, targets[c][2][:len(targets[c][0])], targets[c][3],
                                        attrs["model_id"], tcfg["batch_size"])
            return probe_gradients(model, grads, artifacts.probe(concepts[c][1], member, layer), layer,
                                   targets[c][2], attrs["model_id"], tcfg["batch_size"])
        g = timer("target gradients", lambda: {key: gradients(key) for key in rows})
    last = ckpt == max(c for m, c in features if m == member)
    final = None
    if estimators.needs(names, "model") and last:
        final_model = checkpoints.load(models[member], "final", next(model.parameters()).device, pooling)
        readouts = {}
        for c, layer in rows:
            if layer == "margin":
                readouts[(c, layer)] = (lambda m, x, y: margin(m(x), y), targets[c][2][:len(targets[c][0])],
                                        targets[c][3])
            else:
                probe = ProbeOutput(artifacts.probe(concepts[c][1], member, layer), layer,
                                    device=next(model.parameters()).device)
                readouts[(c, layer)] = (probe.through_logits, targets[c][2], None)
        final = {"model": final_model, "readouts": readouts, "train": BlockDataset(data_path),
                 "size": artifacts.base_info(data_path)["image_size"], "batch_size": tcfg["batch_size"],
                 "device": next(model.parameters()).device}
    replay = None
    if estimators.needs(names, "replay") and last:
        replay = replay_inputs(member, models, concepts, targets, rows, cfg, data_path, next(model.parameters()).device)
    acts = target_acts = None
    if readout == "probe" and "similarity" in names and last:
        final = checkpoints.load(models[member], "final", next(model.parameters()).device, pooling)
        acts = timer("activations", training_activations, final, data_path, layers, tcfg["batch_size"])
        target_acts = {"keys": {(c, layer): (layer, len(targets[c][0])) for c in concepts for layer in layers}}
        for c in concepts:
            pooled = timer("activations", pooled_activations, final, targets[c][2], layers,
                           next(final.parameters()).device, tcfg["batch_size"])
            target_acts.update({(c, layer): pooled[layer] for layer in layers})
    return estimators.Checkpoint(member, ckpt, feats.get("grads"), feats["x_xtx_inv"], feats["out_to_loss"], g,
                                 lr_weight, acts, target_acts, rows, final, replay)


def replayed_layers(concepts: dict, layers, cfg: dict) -> dict:
    """{concept: the layers a replaying estimator (the metagradient) scores}: the concept's
    location in the base ensemble and the layers ``ablation.layers`` names, of ``layers``."""
    named = [layer for layer in cfg["metagradient"]["layers"] if layer != "location"]
    out = {}
    for c, (_, probes_path) in concepts.items():
        wanted = {concept_location(probes_path), *named}
        out[c] = [layer for layer in layers if layer in wanted]
    return out


def replay_inputs(member, models, concepts, targets, rows, cfg, data_path, device) -> dict:
    """What a replaying estimator needs of member ``member``: its base model file, the data and
    recipe, and for each target set it scores one scalar readout per side, {"targets": (fn,
    rows), "negatives": (fn, rows)}: the mean probe output on the targets and on the
    negatives (the mean margin of the targets for the margin readout)."""
    m = cfg["metagradient"]
    scored = replayed_layers(concepts, [layer for _, layer in rows if layer != "margin"], cfg) \
        if any(layer != "margin" for _, layer in rows) else {}
    readouts = {}
    for c, layer in rows:
        tidx, _, images, classes = targets[c]
        n_t = len(tidx)
        if layer == "margin":
            x, y = to_input(images[:n_t]).to(device), torch.as_tensor(np.asarray(classes, np.int64)).to(device)
            readouts[(c, layer)] = {"targets": (lambda model, x=x, y=y: margin(model(x), y).mean(), n_t)}
            continue
        if layer not in scored[c]:
            continue
        probe = ProbeOutput(artifacts.probe(concepts[c][1], member, layer), layer, device=device)
        x = to_input(images).to(device)
        sides = {"targets": (lambda model, x=x[:n_t], p=probe: p(model, x).mean(), n_t)}
        if len(images) > n_t:
            sides["negatives"] = (lambda model, x=x[n_t:], p=probe: p(model, x).mean(), len(images) - n_t)
        readouts[(c, layer)] = sides
    return {"model_path": models[member], "data_path": data_path, "start": int(m["spawn_epoch"]),
            "cfg": {"seed": cfg["seed"], "model": cfg["model"], "train": cfg["train"],
                    "token_pool": cfg.get("token_pool", "mean")}, "readouts": readouts,
            "device": device}


def score(concepts: dict, layers, models: dict, features: dict, outputs: dict, cfg: dict, data_path=None) -> dict:
    """Every (concept, layer) target of one condition, for every estimator of
    ``cfg["estimators"]`` (``estimators.REGISTRY``; default TRAK alone). The workflow runs one
    estimator per job (rules ``score`` for TRAK, ``estimate`` for the others), so adding an
    estimator to the config runs its job alone.

    ``cfg["readout"]``: "probe" (the default) scores each concept probe at each layer;
    "margin" scores the targets' classification margin instead (the LDS stage's second
    readout, rule ``score_margin``: only a run that asks for the LDS pays for it).

    ``concepts``: {concept: (probe set file, probes file or None)}; ``models``: {member:
    model file}; ``features``: {(member, checkpoint): gathered features}; ``outputs``:
    {estimator: {concept: {layer: (scores .h5, enrichment .json)}}, "cost": .json} for the
    probe readout, {estimator: {concept: {"margin": scores .h5}}, "cost": .json} for the
    margin (undefined where the probe set has no classes); the cost file holds the CPU
    seconds each estimator took, and the shared work. Each checkpoint is set up and its
    features read once for every estimator. ``data_path``: the base file (the similarity
    baseline's training activations). Returns {estimator: {concept: {layer: enrichment
    row}}} (empty for the margin).
    """
    tcfg = cfg["trak"]
    names = list(cfg.get("estimators", ["trak"]))
    readout = cfg.get("readout", "probe")
    if readout not in ("probe", "margin"):
        raise ValueError(f"score: unknown readout {readout!r} (have probe, margin)")
    targets = {c: concept_targets(ps, c, tcfg, cfg["seed"]) for c, (ps, _) in concepts.items()}
    ests = {name: estimators.make(name, cfg["seed"], resolve_device(tcfg["device"])) for name in names}
    lr_weights = {}
    if "tracin" in names:
        t = cfg["train"]
        n_train = len(artifacts.features(next(iter(features.values())), arrays=("out_to_loss",))["out_to_loss"])
        lr_weights = estimators.lr_weights(tcfg["checkpoints"], t["epochs"], -(-n_train // t["batch_size"]), t)
    timer, hardness = Timer(), []
    for (member, ckpt) in tqdm(sorted(features), desc=f"score {len(concepts)} concepts x "
                                                     f"{len(layers) if readout == 'probe' else 1} {readout} "
                                                     f"readouts, {len(names)} estimators"):
        ck = checkpoint_inputs(member, ckpt, models, features, concepts, targets, layers, names, cfg, data_path,
                               timer, lr_weights.get(ckpt, 1.0))
        hardness.append(ck.out_to_loss)
        for est in ests.values():
            est.add(ck)
        del ck
    hardness = np.mean(hardness, axis=0)
    results = {}
    for name, est in ests.items():
        for c, (probe_set_path, _) in concepts.items():
            tidx, nidx, _, classes = targets[c]
            if readout == "margin":
                margin_scores = None if classes is None else est.scores((c, "margin"), len(tidx), len(hardness))[0]
                artifacts.write_margin_scores(outputs[name][c]["margin"], cfg, c, None if margin_scores is None else
                                              margin_scores.astype(np.float32), tidx, classes, len(features),
                                              estimator=name)
                continue
            truth = artifacts.concept_truth(probe_set_path)
            for layer in layers:
                per_target, per_negative = est.scores((c, layer), len(tidx), len(hardness))
                result = {"concept": c, "layer": layer, "estimator": name, "n_targets": int(len(tidx)),
                          "n_models": len(features)}
                out_path, json_path = outputs[name][c][layer]
                if per_target is None:       # a replaying estimator scores chosen layers only
                    reason = (f"{name} scores each concept's location layer and the layers ablation.layers names; "
                              f"{layer} is not among them for {c}")
                    artifacts.write_unscored(out_path, cfg, c, layer, reason, estimator=name)
                    artifacts.write_json(json_path, {**result, "scored": False, "reason": reason})
                    continue
                per_target = per_target.astype(np.float32)
                if truth is not None:
                    result.update(enrichment(per_target.mean(0), truth, tcfg["top_fraction"], cfg["seed"],
                                             hardness=hardness))
                artifacts.write_scores(out_path, cfg, c, layer, per_target, tidx, len(features),
                                       per_negative=None if per_negative is None else per_negative.astype(np.float32),
                                       negative_indices=None if per_negative is None else nidx, estimator=name)
                artifacts.write_json(json_path, result)
                log.info("%s %s/%s: %s", name, c, layer, json.dumps(result))
                results.setdefault(name, {}).setdefault(c, {})[layer] = result
    cost = {"estimators": {name: est.seconds for name, est in ests.items()},
            "uses": {name: estimators.REGISTRY[name].uses for name in names}, "shared": timer.seconds}
    if "cost" in outputs:
        artifacts.write_json(outputs["cost"], cost)
    log.info("CPU seconds: %s", json.dumps(cost))
    return results


def score_stage(job) -> None:
    """One estimator (``params["estimators"]``: one name) on one readout (``params["readout"]``).
    ``input``: probe_sets {concept: file}, probes {concept: file} (the probe readout), models
    {member: file}, features {member: {checkpoint: file}}, data (the base file; the
    similarity baseline); ``output``: scores and enrichment {concept: {layer: file}}, or
    margin {concept: file}; and cost."""
    i, o = job.input, job.output
    models = {int(m): p for m, p in i["models"].items()}
    features = {(int(m), c): p for m, by_ckpt in i["features"].items() for c, p in by_ckpt.items()}
    concepts = {c: (i["probe_sets"][c], i.get("probes", {}).get(c)) for c in i["probe_sets"]}
    layers = list(job.params["layers"])
    (name,) = job.params.get("estimators", ["trak"])
    if job.params.get("readout", "probe") == "margin":
        files = {c: {"margin": o["margin"][c]} for c in concepts}
    else:
        files = {c: {layer: (o["scores"][c][layer], o["enrichment"][c][layer]) for layer in layers}
                 for c in concepts}
    score(concepts, layers, models, features, {name: files, "cost": o["cost"]}, job.params, data_path=i.get("data"))

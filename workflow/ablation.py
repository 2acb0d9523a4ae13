"""Stage 7: ablated training sets (SPEC "ablate").

Conditions, each retrained with the base ensemble's recipe and seeds:

- ``top-<concept>``: the k training images with the highest TRAK concept score at the
  concept's location layer (the base ensemble's most decodable layer);
  ``top-<concept>-<layer>`` at a named layer instead (``ablation.layers``).
- ``random``: k images drawn with a seed (the null: same size, no attribution).
- ``oracle-<concept>``: every training image that carries the concept by ground truth
  (synthetic planted concepts, class-group concepts): the positive control.

k is ``ablation.top_k`` if set, else ``round(ablation.fraction * n_train)``.
Each set is an HDF5 file: ``keep`` and ``removed`` (sorted train indices), the score
of each removed image where one exists, and a one-line ``reason``.
"""
from __future__ import annotations

import logging

import numpy as np

from . import h5io
from .seeding import rng as seeded_rng

log = logging.getLogger(__name__)

CONCEPT_KINDS_WITH_TRUTH = ("planted", "classes")


def conditions(config: dict) -> dict:
    """{condition name: spec} for the ablation block of a validated ``config``.

    spec = {"kind": "top"|"random"|"oracle", "concept": name|None, "layer": layer|"location"|None}.
    """
    a = config.get("ablation", {})
    concepts = {c["name"]: c for c in config["concepts"]}
    chosen = a.get("concepts") or list(concepts)
    out = {}
    for name in chosen:
        for layer in a.get("layers", ["location"]):
            cond = f"top-{name}" if layer == "location" else f"top-{name}-{layer}"
            out[cond] = {"kind": "top", "concept": name, "layer": layer}
    controls = a.get("controls", ["random", "oracle"])
    if "random" in controls:
        out["random"] = {"kind": "random", "concept": None, "layer": None}
    if "oracle" in controls:
        for name in chosen:
            if concepts[name]["kind"] in CONCEPT_KINDS_WITH_TRUTH:
                out[f"oracle-{name}"] = {"kind": "oracle", "concept": name, "layer": None}
    return out


def size(n_train: int, cfg: dict) -> int:
    """k, the number of images a top-k or random condition removes."""
    k = cfg.get("top_k")
    if k is None:
        k = int(round(cfg["fraction"] * n_train))
    if not 0 < k < n_train:
        raise ValueError(f"ablation: k={k} must be between 1 and n_train-1={n_train - 1} "
                         f"(ablation.top_k / ablation.fraction)")
    return int(k)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores (ties broken by the lower index), sorted."""
    order = np.lexsort((np.arange(len(scores)), -np.asarray(scores)))
    return np.sort(order[:k])


def random_k(n_train: int, k: int, seed: int) -> np.ndarray:
    return np.sort(seeded_rng(seed, "ablation", "random").choice(n_train, size=k, replace=False))


def oracle(truth: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.asarray(truth, bool))


def complement(n_train: int, removed: np.ndarray) -> np.ndarray:
    keep = np.ones(n_train, bool)
    keep[removed] = False
    return np.flatnonzero(keep)


def build(spec: dict, n_train: int, cfg: dict, scores=None, truth=None, location=None):
    """(removed indices, their scores or None, reason) for one condition ``spec``."""
    kind = spec["kind"]
    if kind == "top":
        k = size(n_train, cfg)
        if scores is None or len(scores) != n_train:
            raise ValueError(f"ablation {spec}: need {n_train} concept scores")
        removed = top_k(scores, k)
        layer = spec["layer"] if spec["layer"] != "location" else location
        where = f"{layer} (its location in the base ensemble)" if spec["layer"] == "location" else layer
        reason = f"top-{k} training images by TRAK concept score of {spec['concept']!r} at {where}"
        return removed, np.asarray(scores)[removed], reason
    if kind == "random":
        k = size(n_train, cfg)
        return random_k(n_train, k, cfg["seed"]), None, f"{k} training images drawn at random (seed {cfg['seed']})"
    if kind == "oracle":
        if truth is None or len(truth) != n_train:
            raise ValueError(f"ablation {spec}: need the ground-truth concept mask of the {n_train} train images")
        removed = oracle(truth)
        return removed, None, (f"all {len(removed)} training images that carry {spec['concept']!r} "
                               f"by ground truth (positive control)")
    raise ValueError(f"ablation: unknown kind {kind!r}")


def write(out_path, condition: str, spec: dict, n_train: int, removed, removed_scores, reason: str,
          cfg: dict, layer=None) -> None:
    removed = np.asarray(removed, np.int64)
    keep = complement(n_train, removed)
    with h5io.atomic_h5(out_path, cfg, condition=condition, kind=spec["kind"], concept=spec["concept"] or "",
                        layer=layer or "", n_train=n_train, n_removed=len(removed), reason=reason) as f:
        f.create_dataset("removed", data=removed)
        f.create_dataset("keep", data=keep)
        if removed_scores is not None:
            f.create_dataset("removed_scores", data=np.asarray(removed_scores, np.float64))
    log.info("%s: %s; %d of %d kept", condition, reason, len(keep), n_train)


def load(path) -> dict:
    with h5io.read(path) as f:
        out = {k: f[k][()] for k in ("keep", "removed")}
        out.update({k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()})
    return out


def concept_scores(path) -> np.ndarray:
    """Per-train-image concept scores from a stage-6 scores file (read without torch)."""
    with h5io.read(path) as f:
        return f["concept_score"][()]


def make(condition: str, cfg: dict, base_path, out_path, probes_path=None, score_paths=(),
         probe_set_path=None) -> dict:
    """Stage entry point: build and write the ablated set of ``condition`` (``cfg["spec"]``).

    top: ``probes_path`` (base probes, for the location) and one scores file per layer in
    ``cfg["layers"]`` order; oracle: ``probe_set_path`` (its ``train_concept_mask``).
    """
    spec = cfg["spec"]
    with h5io.read(base_path) as f:
        n_train = int(f["train/labels"].shape[0])
    scores = truth = location = None
    if spec["kind"] == "top":
        layers = list(cfg["layers"])
        if len(score_paths) != len(layers):
            raise ValueError(f"ablation {condition}: expected scores for {layers}, got {list(score_paths)}")
        layer = spec["layer"]
        if layer == "location":
            from .summary import summarise

            location = layer = summarise({spec["concept"]: probes_path})[spec["concept"]]["location"]
        scores = concept_scores(dict(zip(layers, score_paths))[layer])
    elif spec["kind"] == "oracle":
        with h5io.read(probe_set_path) as f:
            if "train_concept_mask" not in f:
                raise ValueError(f"{probe_set_path}: no ground truth for {spec['concept']!r}; "
                                 f"drop 'oracle' from ablation.controls")
            truth = f["train_concept_mask"][()]
    removed, removed_scores, reason = build(spec, n_train, cfg, scores, truth, location)
    write(out_path, condition, spec, n_train, removed, removed_scores, reason, cfg,
          layer=location or (spec["layer"] if spec["kind"] == "top" else None))
    return {"n_removed": len(removed), "reason": reason}

"""Stage 7: ablated training sets.

Conditions, each retrained paired with the base run (same seeds, order and augmentation):

- ``top-<concept>``: the k training images with the highest TRAK concept score at the
  concept's location layer (the base ensemble's most decodable layer);
  ``top-<concept>-<layer>`` at a named layer instead (``ablation.layers``). For each other
  estimator of ``ablation.estimators`` (``attribution.estimators``), the same sets by its
  scores, with the estimator in the kind: ``top~grad_cos-curved``, ``bottom~grad_cos-curved``,
  ``matched~grad_cos-curved``.
- ``bottom-<concept>``: the k lowest scores (images that work against the concept).
- ``random``: k images drawn with a seed (the null: same size, no attribution). Random
  sets are nested across sizes (the first k of one seeded permutation).
- ``oracle-<concept>``: every training image that carries the concept by ground truth
  (synthetic planted concepts, class-group concepts): the positive control.
- ``matched-<concept>``: k' training images drawn with a seed from the concept's own
  training images (ground truth), where k' is the number of concept images in the top-k
  set of the same size and layer. Top-k minus matched asks whether the attribution finds
  exemplars that matter more than other exemplars of the concept (a concentrated concept)
  or not (a diffuse one). Matched sets are nested across sizes (the first k' of one seeded
  permutation of the concept's images).

k is ``ablation.top_k`` if set, else ``round(fraction * n_train)`` for each fraction of
``ablation.fractions``. The first fraction is the main comparison (plain names); the
others are the points of the removal curves, named with an ``@<fraction>`` suffix
(``top-curved@0.02``, ``random@0.02``). Each set is an HDF5 file
(``artifacts.write_ablation``): ``keep`` and ``removed`` (sorted train indices), the
score of each removed image where one exists, and a one-line ``reason``.
"""
from __future__ import annotations

import logging

import numpy as np

from .. import artifacts
from ..probing.summary import location as concept_location
from ..seeding import rng as seeded_rng

log = logging.getLogger(__name__)

CONCEPT_KINDS_WITH_TRUTH = ("planted", "classes")
SCORED = ("top", "bottom")


def sizes(a: dict) -> list:
    """[(name suffix, {"fraction", "top_k"})] of the ablation block: the main size first."""
    if a["top_k"] is not None:
        return [("", {"fraction": None, "top_k": a["top_k"]})]
    return [("" if i == 0 else f"@{f:g}", {"fraction": f, "top_k": None}) for i, f in enumerate(a["fractions"])]


def conditions(config: dict) -> dict:
    """{condition name: design} for the ablation block of a resolved ``config``.

    design = {"kind": "top"|"bottom"|"random"|"oracle"|"matched", "concept": name|None,
    "layer": layer|"location"|None, "fraction", "top_k"} (oracles have no size; a matched
    design also names its top-k condition, ``"top"``).
    """
    a = config["ablation"]
    concepts = {c["name"]: c for c in config["concepts"]}
    chosen = a["concepts"] or list(concepts)
    controls = a["controls"]
    out = {}
    for suffix, size_ in sizes(a):
        for name in chosen:
            for layer in a["layers"]:
                stem = name if layer == "location" else f"{name}-{layer}"
                for estimator in a.get("estimators", ["trak"]):
                    tag, by = estimator_tag(estimator), ({} if estimator == "trak" else {"estimator": estimator})
                    for kind in ("top", "bottom"):
                        if kind == "top" or kind in controls:
                            out[f"{kind}{tag}-{stem}{suffix}"] = {"kind": kind, "concept": name, "layer": layer,
                                                                  **size_, **by}
                    if "matched" in controls and concepts[name]["kind"] in CONCEPT_KINDS_WITH_TRUTH:
                        out[f"matched{tag}-{stem}{suffix}"] = {"kind": "matched", "concept": name, "layer": layer,
                                                               **size_, "top": f"top{tag}-{stem}{suffix}", **by}
        if "random" in controls:
            out[f"random{suffix}"] = {"kind": "random", "concept": None, "layer": None, **size_}
    if "oracle" in controls:
        for name in chosen:
            if concepts[name]["kind"] in CONCEPT_KINDS_WITH_TRUTH:
                out[f"oracle-{name}"] = {"kind": "oracle", "concept": name, "layer": None}
    return out


def estimator_tag(estimator: str) -> str:
    """What a condition's kind carries for its estimator: nothing for TRAK (today's names),
    ``~<estimator>`` for the others (``top~grad_cos-curved``)."""
    return "" if estimator == "trak" else f"~{estimator}"


def estimator_of(design: dict) -> str:
    return design.get("estimator", "trak")


def lds_conditions(config: dict) -> dict:
    """{condition name: design} of the LDS stage's random subsets (``lds`` block): for each
    fraction f and subset s, ``lds<f>-s<ss>`` removes round(f * n_train) images drawn with a
    seed of their own. Trained only for ``lds.members``, as paired twins."""
    lds = config.get("lds") or {}
    return {f"lds{f:g}-s{s:02d}": {"kind": "subset", "concept": None, "layer": None, "fraction": f, "top_k": None,
                                   "subset": s}
            for f in lds.get("fractions", []) for s in range(lds.get("subsets", 0))}


def size(n_train: int, design: dict) -> int:
    """k, the number of images a top-k, bottom-k or random condition removes."""
    k = design["top_k"]
    if k is None:
        k = int(round(design["fraction"] * n_train))
    if not 0 < k < n_train:
        raise ValueError(f"ablation: k={k} must be between 1 and n_train-1={n_train - 1} "
                         f"(ablation.top_k / ablation.fractions)")
    return int(k)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores (ties broken by the lower index), sorted."""
    order = np.lexsort((np.arange(len(scores)), -np.asarray(scores)))
    return np.sort(order[:k])


def bottom_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k lowest scores (ties broken by the lower index), sorted."""
    order = np.lexsort((np.arange(len(scores)), np.asarray(scores)))
    return np.sort(order[:k])


def seeded_first(items, k: int, seed: int, *keys) -> np.ndarray:
    """The first k of one seeded permutation of ``items`` (a count n, for 0..n-1, or an index
    array), sorted: sets of different sizes drawn with the same keys are nested."""
    return np.sort(seeded_rng(seed, *keys).permutation(items)[:k])


def random_k(n_train: int, k: int, seed: int) -> np.ndarray:
    """k random training images; random sets of different sizes are nested."""
    return seeded_first(n_train, k, seed, "ablation", "random")


def subset(n_train: int, k: int, seed: int, fraction: float, s: int) -> np.ndarray:
    """The removed images of LDS subset ``s`` at ``fraction``: k drawn with a seed of its own."""
    return seeded_first(n_train, k, seed, "lds", f"{fraction:g}", s)


def oracle(truth: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.asarray(truth, bool))


def matched(truth: np.ndarray, top_removed: np.ndarray, seed: int, concept: str) -> np.ndarray:
    """k' of the concept's training images, drawn with a seed, where k' is the number of concept
    images among ``top_removed``: the first k' of one seeded permutation (nested across sizes)."""
    truth = np.asarray(truth, bool)
    k = int(truth[np.asarray(top_removed, np.int64)].sum())
    return seeded_first(np.flatnonzero(truth), k, seed, "ablation", "matched", concept)


def build(design: dict, n_train: int, cfg: dict, scores=None, truth=None, location=None, top_removed=None):
    """(removed indices, their scores or None, reason) for one condition ``design``."""
    kind = design["kind"]
    if kind == "matched":
        if truth is None or len(truth) != n_train or top_removed is None:
            raise ValueError(f"ablation {design}: need the ground truth of the {n_train} train images and the "
                             f"top-k set {design['top']!r}")
        removed = matched(truth, top_removed, cfg["seed"], design["concept"])
        return removed, None, (f"{len(removed)} of the {int(np.sum(truth))} training images of {design['concept']!r}, "
                               f"drawn at random (seed {cfg['seed']}): as many as {design['top']} holds (matched "
                               f"control)")
    if kind in SCORED:
        k = size(n_train, design)
        if scores is None or len(scores) != n_train:
            raise ValueError(f"ablation {design}: need {n_train} concept scores")
        removed = (top_k if kind == "top" else bottom_k)(scores, k)
        layer = design["layer"] if design["layer"] != "location" else location
        where = f"{layer} (its location in the base ensemble)" if design["layer"] == "location" else layer
        which = "highest" if kind == "top" else "lowest"
        reason = (f"{kind}-{k}: the {which} {estimator_of(design).replace('trak', 'TRAK')} concept scores of {design['concept']!r} at "
                  f"{where}")
        return removed, np.asarray(scores)[removed], reason
    if kind == "subset":
        k = size(n_train, design)
        return (subset(n_train, k, cfg["seed"], design["fraction"], design["subset"]), None,
                f"LDS subset {design['subset']} at {design['fraction']:g}: {k} training images drawn at random "
                f"(seed {cfg['seed']})")
    if kind == "random":
        k = size(n_train, design)
        return random_k(n_train, k, cfg["seed"]), None, f"{k} training images drawn at random (seed {cfg['seed']})"
    if kind == "oracle":
        if truth is None or len(truth) != n_train:
            raise ValueError(f"ablation {design}: need the ground-truth concept mask of the {n_train} train images")
        removed = oracle(truth)
        return removed, None, (f"all {len(removed)} training images that carry {design['concept']!r} "
                               f"by ground truth (positive control)")
    raise ValueError(f"ablation: unknown kind {kind!r}")


def make(condition: str, cfg: dict, base_path, out_path, probes_path=None, score_paths=None,
         probe_set_path=None, top_path=None) -> dict:
    """Build and write the ablated set of ``condition`` (``cfg["design"]``).

    top: ``probes_path`` (base probes, for the location) and ``score_paths`` {layer: scores
    file}; oracle: ``probe_set_path`` (its ground truth of the train images); matched: that
    and ``top_path``, the top-k set it matches.
    """
    design = cfg["design"]
    n_train = artifacts.base_info(base_path)["n_train"]
    scores = truth = location = top_removed = None
    if design["kind"] in SCORED:
        layer = design["layer"]
        if layer == "location":
            location = layer = concept_location(probes_path)
        if layer not in score_paths:
            raise ValueError(f"ablation {condition}: no scores for layer {layer!r} (have {list(score_paths)})")
        scores = artifacts.concept_scores(score_paths[layer])
    elif design["kind"] in ("oracle", "matched"):
        truth = artifacts.concept_truth(probe_set_path)
        if truth is None:
            raise ValueError(f"{probe_set_path}: no ground truth for {design['concept']!r}; "
                             f"drop {design['kind']!r} from ablation.controls")
        if design["kind"] == "matched":
            top = artifacts.ablation(top_path)
            top_removed, location = top["removed"], top["layer"] or None
    removed, removed_scores, reason = build(design, n_train, cfg, scores, truth, location, top_removed)
    artifacts.write_ablation(out_path, cfg, condition, design, n_train, removed, removed_scores, reason,
                             layer=location or (design["layer"] if design["kind"] in (*SCORED, "matched") else None))
    log.info("%s: %s; %d of %d kept", condition, reason, n_train - len(removed), n_train)
    return {"n_removed": len(removed), "reason": reason}


def ablate_stage(job) -> None:
    i = job.input
    make(job.wildcards["condition"], job.params, i["data"], job.output["ablation"], probes_path=i.get("probes"),
         score_paths=i.get("scores"), probe_set_path=i.get("probe_set"), top_path=i.get("top"))

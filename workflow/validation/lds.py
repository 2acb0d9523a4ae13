"""Attribution quality: the linear datamodeling score (LDS) on the concept readout.

For each fraction f of ``lds.fractions``, S random subsets of the training set are removed
(``ablation.sets.lds_conditions``) and each is trained as a paired twin of every member m of
``lds.members``. Base member m's probe at the concept's location is held fixed and applied
to each twin: the *actual* readout is its output on each of the concept's TRAK targets and
the selectivity (mean output on the targets minus on the scored negatives). An estimator's
*predicted* readout of a subset is the sum of its scores over the images kept, which ranks
the subsets as minus the sum over the images removed. LDS per target is the Spearman
correlation over the S subsets of predicted and actual; the figure is its mean over targets
(and members) with a bootstrap interval over subsets (the targets share their subsets, so
an interval over targets would be too narrow: a random estimator's excluded 0). The
aggregate readout's LDS is the same correlation for the selectivity, with a bootstrap
interval over subsets.

The same is computed for the targets' classification margin (z_y - logsumexp_{j != y} z_j
at each target's class y, TRAK's own output function), so the figures compare with the
literature: actual from each twin's logits, predicted from each estimator's scores of that
margin (``classification_margin.h5``). Folder concepts have no classes: their margin LDS is
undefined.

Every estimator of ``lds.estimators`` is read from the registry's files
(``attribution.estimators``); rank correlation is the measure because attribution
magnitudes are not calibrated. ``hardest`` gives one score per image for every target (the
ensemble's mean out-to-loss), and ``random`` seeded noise (its LDS is about 0). An
estimator without scores of the negatives (hardest) predicts no change of the
selectivity, so its aggregate LDS is undefined (reported as such).
"""
from __future__ import annotations

import logging

import numpy as np
from scipy.stats import rankdata

from .. import artifacts, stats
from ..probing.summary import location_index
from .validate import probe_readout

log = logging.getLogger(__name__)


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks along the last axis from 0 (ties share their mean rank)."""
    return rankdata(np.asarray(x, float), axis=-1) - 1.0


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation along the last axis of two arrays of the same shape; nan where
    either side is constant."""
    ra, rb = ranks(a), ranks(b)
    ra -= ra.mean(-1, keepdims=True)
    rb -= rb.mean(-1, keepdims=True)
    den = np.sqrt((ra * ra).sum(-1) * (rb * rb).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(-1) / np.where(den > 0, den, 1), np.nan)


def predicted(scores: np.ndarray, removed: list) -> np.ndarray:
    """[S, T]: minus the sum of each target's scores over each subset's removed images (the
    sum over the kept images minus a constant per target: the same ranks over subsets)."""
    return np.stack([-scores[:, np.asarray(r, np.int64)].sum(1, dtype=np.float64) for r in removed])


def bootstrap_spearman(a: np.ndarray, b: np.ndarray, seed: int, confidence: float, n_boot: int = 2000) -> dict:
    """Spearman of two length-S vectors with a percentile bootstrap interval over the S subsets."""
    point = float(spearman(a, b))
    if not np.isfinite(point):
        return {"point": float("nan"), "lo": float("nan"), "hi": float("nan")}
    idx = np.random.default_rng(seed).integers(0, len(a), (n_boot, len(a)))
    boots = spearman(a[idx], b[idx])
    boots = boots[np.isfinite(boots)]
    q = (1 - confidence) / 2
    lo, hi = np.quantile(boots, [q, 1 - q]) if len(boots) else (np.nan, np.nan)
    return {"point": point, "lo": float(lo), "hi": float(hi)}


def bootstrap_mean_lds(pred: np.ndarray, actual: np.ndarray, seed: int, confidence: float,
                       n_boot: int = 1000) -> dict | None:
    """The mean over members and targets of the per-target LDS, with a percentile bootstrap
    interval over subsets: the targets share their subsets, so their LDS values are not
    independent and an interval over targets would be too narrow (a random estimator's
    excluded 0). ``pred``: [S, T]; ``actual``: [M, S, T]."""
    def mean_lds(idx):
        p = np.broadcast_to(pred[idx].T, (actual.shape[0], pred.shape[1], len(idx)))
        v = spearman(p, actual[:, idx, :].transpose(0, 2, 1))
        return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")

    s = pred.shape[0]
    point = mean_lds(np.arange(s))
    if not np.isfinite(point):
        return None
    g = np.random.default_rng(seed)
    boots = np.array([mean_lds(g.integers(0, s, s)) for _ in range(n_boot)])
    boots = boots[np.isfinite(boots)]
    q = (1 - confidence) / 2
    lo, hi = np.quantile(boots, [q, 1 - q])
    return {"point": point, "lo": float(lo), "hi": float(hi), "n_boot": int(len(boots))}


def margin_of(logits: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Classification margin z_y - logsumexp_{j != y} z_j of each row at its class (float64)."""
    z = np.asarray(logits, np.float64)
    rows = np.arange(len(z))
    others = z.copy()
    others[rows, classes] = -np.inf
    top = others.max(1)
    return z[rows, classes] - (top + np.log(np.exp(others - top[:, None]).sum(1)))


def estimator_scores(score_path, margin_path) -> dict:
    """{"targets": [T, n], "negatives": [Tn, n] or None, "target_indices", "negative_indices",
    "margin": [T, n] or None, "classes"} of one estimator at the concept's location (the
    registry's files, ``attribution.estimators``)."""
    per_target, targets = artifacts.per_target_scores(score_path)
    per_negative, negatives = artifacts.negative_scores(score_path)
    margin = artifacts.margin_scores(margin_path)
    if margin is not None and not np.array_equal(margin[1], targets):
        raise ValueError(f"{margin_path}: its targets are not those of {score_path}; rebuild it")
    return {"targets": per_target.astype(np.float64), "target_indices": targets,
            "negatives": None if per_negative is None else per_negative.astype(np.float64),
            "negative_indices": negatives,
            "margin": None if margin is None else margin[0].astype(np.float64),
            "classes": None if margin is None else margin[2]}


def lds(concept: str, cfg: dict, probe_set_path, probes_path, activation_paths: dict, ablation_paths: dict,
        score_paths: dict, margin_paths: dict) -> tuple:
    """(result dict, arrays for the HDF5 file). ``activation_paths``: {"base" or subset:
    {member: file}}; ``ablation_paths``: {subset: file}; ``score_paths``: {estimator: {layer:
    file}}; ``margin_paths``: {estimator: file}, its scores of the targets' classification
    margins. Every estimator scores the same targets (checked)."""
    confidence, designs, members = cfg["confidence"], cfg["designs"], [int(m) for m in cfg["members"]]
    ps = artifacts.probe_set(probe_set_path, images=False)
    labels, held = ps["labels"], ps["heldout"]
    table = artifacts.probes_table(probes_path)
    location = table["layers"][location_index(table["heldout_bal_acc"])]
    scores = {est: estimator_scores(score_paths[est][location], margin_paths[est]) for est in cfg["estimators"]}
    first = scores[cfg["estimators"][0]]
    targets, negatives = first["target_indices"], first["negative_indices"]
    for est, sc in scores.items():
        if not np.array_equal(sc["target_indices"], targets):
            raise ValueError(f"{score_paths[est][location]}: {est} scored other targets than "
                             f"{cfg['estimators'][0]}; rebuild it")
    if negatives is None:
        negatives = np.flatnonzero(held & (labels == 0))
    probes = {m: artifacts.probe(probes_path, m, location) for m in members}

    def readout(m, path):
        return probe_readout(probes[m], artifacts.activations(path)[location], labels, held, targets, negatives)

    target_classes = next((sc["classes"] for sc in scores.values() if sc["classes"] is not None), None)

    def margins(path):
        return margin_of(artifacts.logits(path)[targets], target_classes)

    base = {m: readout(m, activation_paths["base"][str(m)]) for m in members}
    result = {"concept": concept, "location": location, "members": members, "n_targets": int(len(targets)),
              "n_negatives": int(len(negatives)), "confidence": confidence, "estimators": cfg["estimators"],
              "margin": target_classes is not None, "fractions": {}}
    arrays = {}
    for fraction in sorted({d["fraction"] for d in designs.values()}):
        names = sorted((n for n, d in designs.items() if d["fraction"] == fraction),
                       key=lambda n: designs[n]["subset"])
        removed = [artifacts.ablation(ablation_paths[n])["removed"] for n in names]
        reads = {m: [readout(m, activation_paths[n][str(m)]) for n in names] for m in members}
        actual_t = np.stack([[r["targets"] for r in reads[m]] for m in members])           # [M, S, T]
        actual_sel = np.array([[r["selectivity"] for r in reads[m]] for m in members])      # [M, S]
        if target_classes is not None:
            actual_m = np.stack([[margins(activation_paths[n][str(m)]) for n in names] for m in members])  # [M, S, T]
        entry = {"n_subsets": len(names), "n_removed": int(len(removed[0])),
                 "actual_selectivity_change": stats.t_interval(
                     (actual_sel - np.array([[base[m]["selectivity"]] for m in members])).ravel(), confidence),
                 "estimators": {}}
        for est in cfg["estimators"]:
            sc = scores[est]
            pred_t = predicted(sc["targets"], removed)                                     # [S, T]
            per_target = spearman(np.broadcast_to(pred_t.T, actual_t.transpose(0, 2, 1).shape),
                                  actual_t.transpose(0, 2, 1))                               # [M, T]
            finite = per_target[np.isfinite(per_target)]
            agg = {"point": float("nan"), "lo": float("nan"), "hi": float("nan")}
            if sc["negatives"] is not None:
                pred_sel = pred_t.mean(1) - predicted(sc["negatives"], removed).mean(1)     # [S]
                per_member = [bootstrap_spearman(pred_sel, actual_sel[i], cfg["seed"] + i, confidence)
                              for i in range(len(members))]
                agg = {k: float(np.mean([p[k] for p in per_member])) for k in ("point", "lo", "hi")}
            entry["estimators"][est] = {
                "per_target": bootstrap_mean_lds(pred_t, actual_t, cfg["seed"], confidence) if len(finite) else None,
                "n_defined": int(len(finite)), "aggregate": agg, "margin": None}
            arrays[f"{fraction:g}/{est}/lds_per_target"] = per_target
            arrays[f"{fraction:g}/{est}/predicted"] = pred_t
            if target_classes is not None and sc["margin"] is not None:
                pred_m = predicted(sc["margin"], removed)                                     # [S, T]
                entry["estimators"][est]["margin"] = bootstrap_mean_lds(pred_m, actual_m, cfg["seed"], confidence)
                arrays[f"{fraction:g}/{est}/margin_predicted"] = pred_m
        if target_classes is not None:
            arrays[f"{fraction:g}/actual_margins"] = actual_m
        arrays[f"{fraction:g}/actual_targets"] = actual_t
        arrays[f"{fraction:g}/actual_selectivity"] = actual_sel
        result["fractions"][f"{fraction:g}"] = entry
    return result, arrays


def format_text(result: dict) -> str:
    c = result
    lines = [f"{c['concept']}: LDS on the concept readout at {c['location']} (fixed base probe; {c['n_targets']} "
             f"targets, members {c['members']}; Spearman over subsets of predicted vs actual readout, "
             f"mean over targets; [{int(100 * c['confidence'])}% bootstrap intervals over subsets])",
             f"  {'fraction':>8} {'subsets':>7} {'removed':>7} {'estimator':<9} {'LDS per target':>26} "
             f"{'LDS selectivity':>26} {'LDS margin (per target)':>26}"]
    for f, e in c["fractions"].items():
        for est, v in e["estimators"].items():
            pt = v["per_target"]
            pt_s = "undefined" if pt is None else stats.fmt(pt, 3, True)
            agg = v["aggregate"]
            agg_s = ("undefined (same scores for targets and negatives)" if not np.isfinite(agg["point"])
                     else stats.fmt(agg, 3, True))
            mg = v.get("margin")
            mg_s = "undefined (no classes)" if not c.get("margin") else ("undefined" if mg is None
                                                                          else stats.fmt(mg, 3, True))
            lines.append(f"  {f:>8} {e['n_subsets']:7d} {e['n_removed']:7d} {est:<9} {pt_s:>26} {agg_s:>26} "
                         f"{mg_s:>26}")
    return "\n".join(lines)


def lds_stage(job) -> str:
    i = job.input
    result, arrays = lds(job.wildcards["concept"], job.params, i["probe_set"], i["probes"], i["activations"],
                         i["ablations"], i["scores"], i["margin"])
    text = format_text(result)
    artifacts.write_lds(job.output["h5"], job.params, result["concept"], result["location"], arrays)
    artifacts.write_json(job.output["json"], result)
    artifacts.write_text(job.output["txt"], text + "\n")
    return text

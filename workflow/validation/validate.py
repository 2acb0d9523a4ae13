"""Stage 10: the counterfactual check of the attribution itself.

For a concept at its location layer (and any layer named in ``ablation.layers``), every
ablated condition and every member m, base member m's probe is held fixed (weights,
intercept, standardisation) and applied to the pooled activations of m's retrained twin
on the concept's probe set. What removing the images *did*:

- the change of the fixed probe's output (decision value) on the concept's TRAK targets,
  on the held-out positives and on the held-out negatives;
- the change of its *selectivity*: the mean output on the targets minus the mean output
  on the scored held-out negatives. A retrained twin's features drift as a whole, which
  moves the output of every image alike; the difference cancels that shared part
  (docs/method.md, "Drift under control", has the measured effect on power);
- the change of its balanced accuracy and AUC on the held-out probe set.

What TRAK *claimed* it would do: for each target t, minus the sum over the removed images
of their scores for t (the scores are the ensemble's, so the claim is one number per
target); for the selectivity, the same for the targets minus that for the negatives. Their agreement across targets is a correlation. The decisive comparisons are
paired over members: "top-k minus random" and "top-k minus bottom-k" of the change, with
t-intervals and minimal detectable effects (``workflow.stats``), and "top-k minus matched"
where the concept's training images are known (as many of them, at random, as the top-k
holds). Each concept ends in a three-way verdict (``verdict``): supported, no effect within
a margin scaled from the positive control, or inconclusive with the detectable effect.
TRAK's predicted changes stay in the tables, labelled uncalibrated; no verdict reads them.

Also recorded: the twin correlation (per-channel correlation of a base member's and its
twin's activations over the probe set, averaged over channels) and the same between
unrelated base members, which measures how far retraining drifts.
"""
from __future__ import annotations

import logging

import numpy as np
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from .. import artifacts, stats
from ..ablation.sets import estimator_of
from . import verdict as verdicts
from ..probing.probes import decision_function
from ..probing.summary import location_index

log = logging.getLogger(__name__)


def channel_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over channels of the correlation of two [N, C] activation matrices (constant channels skipped)."""
    a, b = a - a.mean(0), b - b.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    ok = den > 0
    return float(np.mean((a * b).sum(0)[ok] / den[ok])) if ok.any() else float("nan")


def predicted_change(per_target: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """TRAK's claim per target: minus the sum of the removed images' scores."""
    return -per_target[:, np.asarray(removed, np.int64)].sum(1).astype(np.float64)


def agreement(predicted: np.ndarray, actual: np.ndarray) -> dict:
    """Pearson and Spearman correlation of predicted and actual changes across targets."""
    if len(predicted) < 3 or np.std(predicted) == 0 or np.std(actual) == 0:
        return {"pearson": float("nan"), "spearman": float("nan")}
    rank = lambda x: np.argsort(np.argsort(x))  # noqa: E731
    return {"pearson": float(np.corrcoef(predicted, actual)[0, 1]),
            "spearman": float(np.corrcoef(rank(predicted), rank(actual))[0, 1])}


MEASURES = {"selectivity": "selectivity (output on targets minus on negatives)",
            "output_targets": "output on the targets"}


def interval(measure: str, diffs, confidence: float, acc_step: float) -> dict:
    """The interval of one measure's per-member differences: the balanced accuracy moves in
    steps of one held-out image (``acc_step``), so members can tie and its spread is floored
    (``stats.paired_quantized``); the continuous readouts get the plain t-interval."""
    if measure == "bal_acc":
        return stats.paired_quantized(diffs, np.zeros(len(diffs)), acc_step, confidence)
    return stats.t_interval(diffs, confidence)


def probe_readout(probe: dict, acts: np.ndarray, labels: np.ndarray, held: np.ndarray, targets: np.ndarray,
                  negatives: np.ndarray) -> dict:
    """The fixed probe's outputs and held-out accuracy on one model's activations."""
    f = decision_function(probe, acts.astype(np.float64))
    y, fh = labels[held], f[held]
    return {"f": f, "targets": f[targets], "selectivity": float(f[targets].mean() - f[negatives].mean()),
            "pos": float(fh[y == 1].mean()), "neg": float(fh[y == 0].mean()),
            "bal_acc": float(balanced_accuracy_score(y, (fh > 0).astype(int))),
            "auc": float(roc_auc_score(y, fh)) if len(np.unique(y)) == 2 else float("nan")}


def validate_layer(layer: str, members: list, probes_path, acts: dict, ablations: dict, scores: dict,
                   labels, held, summaries: dict, confidence: float, truth=None) -> dict:
    """Every condition's actual and predicted change at ``layer``; ``acts``: {condition:
    {member: {layer: [N, C]}}}, ``ablations``: {condition: set}, ``scores``: {"per_target",
    "targets", "per_negative", "negatives"} (probe-set indices and their TRAK scores);
    ``truth``: the concept's training images (bool mask) where known, for each set's dose."""
    probes = {m: artifacts.probe(probes_path, m, layer) for m in members}
    targets, negatives = scores["targets"], scores["negatives"]

    def readout(m, a):
        return probe_readout(probes[m], a, labels, held, targets, negatives)

    base = {m: readout(m, acts["base"][m][layer]) for m in members}
    corr_unrelated = [channel_correlation(acts["base"][a][layer], acts["base"][b][layer])
                      for i, a in enumerate(members) for b in members[i + 1:]]
    acc_step = stats.balanced_accuracy_step(np.bincount(labels[held], minlength=2))
    out = {"unrelated_member_correlation": float(np.mean(corr_unrelated)) if corr_unrelated else float("nan"),
           "acc_step": acc_step,
           "base": {k: [base[m][k] for m in members] for k in ("pos", "neg", "bal_acc", "auc")},
           "conditions": {}}
    for cond, a in ablations.items():
        twin = {m: readout(m, acts[cond][m][layer]) for m in members}
        per_member = {
            "output_targets": [float(np.mean(twin[m]["targets"] - base[m]["targets"])) for m in members],
            "selectivity": [twin[m]["selectivity"] - base[m]["selectivity"] for m in members],
            "output_positives": [twin[m]["pos"] - base[m]["pos"] for m in members],
            "output_negatives": [twin[m]["neg"] - base[m]["neg"] for m in members],
            "bal_acc": [twin[m]["bal_acc"] - base[m]["bal_acc"] for m in members],
            "auc": [twin[m]["auc"] - base[m]["auc"] for m in members],
            "twin_correlation": [channel_correlation(acts["base"][m][layer], acts[cond][m][layer]) for m in members],
        }
        actual = np.mean([twin[m]["targets"] - base[m]["targets"] for m in members], axis=0)
        predicted = predicted_change(scores["per_target"], a["removed"])
        predicted_sel = None
        if scores["per_negative"] is not None:
            predicted_sel = float(predicted.mean() - predicted_change(scores["per_negative"], a["removed"]).mean())
        refit = None
        if cond in summaries:  # refit-probe accuracy at this layer (the retrained ensemble's own probes)
            s_b, s_c = summaries["base"], summaries[cond]
            j = s_b["layers"].index(layer)
            refit = stats.paired_quantized(np.asarray(s_c["acc_per_member"])[:, j],
                                           np.asarray(s_b["acc_per_member"])[:, j], acc_step, confidence)
        out["conditions"][cond] = {
            "kind": a["kind"], "concept": a["concept"], "n_removed": int(a["n_removed"]),
            "n_concept": None if truth is None else int(np.asarray(truth, bool)[a["removed"]].sum()),
            "per_member": per_member,
            "change": {k: interval(k, v, confidence, acc_step) for k, v in per_member.items()
                       if k != "twin_correlation"},
            "twin_correlation": float(np.mean(per_member["twin_correlation"])),
            "refit_acc": refit,
            "predicted": {"mean": float(predicted.mean()), "per_target": predicted.tolist(),
                          "selectivity": predicted_sel},
            "actual_per_target": actual.tolist(),
            "agreement": agreement(predicted, actual),
        }
    return out


def contrasts(layer_result: dict, designs: dict, concept: str, layer_name: str, confidence: float) -> dict:
    """Paired differences of the change between a concept's top-k and its controls of the same size."""
    conds = layer_result["conditions"]
    out = {}
    for name, d in designs.items():
        if d["kind"] != "top" or d["concept"] != concept or d["layer"] != layer_name or name not in conds:
            continue
        kind, rest = name.split("-", 1)                      # "top" or "top~<estimator>", the rest
        tag = kind[len("top"):]
        suffix = rest[len(concept + ("" if d["layer"] == "location" else f"-{d['layer']}")):]
        others = {"random": f"random{suffix}", "bottom": f"bottom{tag}-{rest}", "matched": f"matched{tag}-{rest}"}
        for label, other in others.items():
            if other not in conds:
                continue
            a, b = conds[name], conds[other]
            pa, pb = a["predicted"]["selectivity"], b["predicted"]["selectivity"]
            out[f"{name} - {other}"] = {
                "top": name, "control": other, "control_kind": label,
                **{k: interval(k, np.subtract(a["per_member"][k], b["per_member"][k]), confidence,
                               layer_result["acc_step"]) for k in ("output_targets", "selectivity", "bal_acc", "auc")},
                "predicted": a["predicted"]["mean"] - b["predicted"]["mean"],
                "predicted_selectivity": None if pa is None or pb is None else pa - pb,
            }
    return out


def verdict(concept: str, contrasts: dict, oracle: dict | None, doses: dict, measure: str,
            margin_fraction: float, margin_absolute: float | None) -> dict:
    """The concept's three-way verdict (``verdict`` module) on ``measure`` at its location, from
    its main contrasts {"random": contrast, "matched": contrast} (either may be missing),
    the positive control (oracle - random, per measure) and the doses of concept images."""
    what = MEASURES[measure]
    if not contrasts:
        return {"outcome": None, "measure": measure, "text": f"{concept}: no top-k vs control comparison configured"}
    cis = {f"top - {k}": c[measure] for k, c in contrasts.items()}
    delta = verdicts.margin(None if oracle is None else oracle[measure], doses, margin_fraction, margin_absolute)
    outcomes = {k: verdicts.classify(c[measure], delta["value"]) for k, c in contrasts.items()}
    result = verdicts.overall(outcomes, None if oracle is None else oracle[measure])
    acc = {k: c["bal_acc"] for k, c in contrasts.items()}
    return {**result, "measure": measure, "contrasts": outcomes, "margin": delta,
            "accuracy": {k: {"ci": ci, "outcome": verdicts.classify(ci, None)} for k, ci in acc.items()},
            "text": verdicts.words(concept, result, cis, delta, what)}


def curves(layer_result: dict, designs: dict, concept: str, confidence: float) -> dict:
    """Removal curves at the location: per kind (top, bottom, random), the points over sizes
    (the sets of the first estimator of ``ablation.estimators``)."""
    conds = layer_result["conditions"]
    main = next((estimator_of(d) for d in designs.values() if d["kind"] == "top"), "trak")
    out = {}
    for name, d in designs.items():
        if d["kind"] not in ("top", "bottom", "random") or name not in conds or estimator_of(d) != main:
            continue
        if d["kind"] != "random" and (d["concept"] != concept or d["layer"] != "location"):
            continue
        c = conds[name]
        out.setdefault(d["kind"], []).append({
            "condition": name, "fraction": d["fraction"], "n_removed": c["n_removed"],
            "refit_acc": c["refit_acc"], "output_targets": c["change"]["output_targets"],
            "selectivity": c["change"]["selectivity"], "bal_acc": c["change"]["bal_acc"]})
    for points in out.values():
        points.sort(key=lambda p: p["n_removed"])
    return out


def validate(concept: str, cfg: dict, probe_set_path, probes_path, activation_paths: dict, score_paths: dict,
             ablation_paths: dict, summary_paths: dict) -> dict:
    """``activation_paths``: {condition: {member: file}} (base included); ``score_paths``:
    {layer: file}; ``ablation_paths``/``summary_paths``: {condition: file}."""
    confidence, designs = cfg["confidence"], cfg["designs"]
    ps = artifacts.probe_set(probe_set_path, images=False)
    labels, held = ps["labels"], ps["heldout"]
    truth = artifacts.concept_truth(probe_set_path)
    table = artifacts.probes_table(probes_path)
    members, layers_all = table["members"], table["layers"]
    location = layers_all[location_index(table["heldout_bal_acc"])]
    layers = [location] + [layer for layer in cfg["layers"] if layer not in ("location", location)]
    acts = {cond: {m: artifacts.activations(by_member[str(m)]) for m in members}
            for cond, by_member in activation_paths.items()}
    ablations = {cond: artifacts.ablation(p) for cond, p in ablation_paths.items()}
    summaries = {cond: artifacts.summary(p)[concept] for cond, p in summary_paths.items()}
    result = {"concept": concept, "location": location, "members": members, "confidence": confidence,
              "layers": {}}
    for layer in layers:
        per_target, target_idx = artifacts.per_target_scores(score_paths[layer])
        per_negative, negative_idx = artifacts.negative_scores(score_paths[layer])
        if negative_idx is None:    # scores without negatives: every held-out negative
            negative_idx = np.flatnonzero(held & (labels == 0))
        scores = {"per_target": per_target, "targets": target_idx, "per_negative": per_negative,
                  "negatives": negative_idx}
        lr = validate_layer(layer, members, probes_path, acts, ablations, scores, labels, held, summaries,
                            confidence, truth)
        lr["n_targets"], lr["n_negatives"] = int(len(target_idx)), int(len(negative_idx))
        lr["contrasts"] = contrasts(lr, designs, concept, "location" if layer == location else layer, confidence)
        result["layers"][layer] = lr
    loc = result["layers"][location]
    conds = loc["conditions"]
    oracle_name = f"oracle-{concept}"
    oracle = None
    if oracle_name in conds and "random" in conds:
        o, r = conds[oracle_name]["per_member"], conds["random"]["per_member"]
        oracle = {k: interval(k, np.subtract(o[k], r[k]), confidence, loc["acc_step"])
                  for k in ("output_targets", "selectivity", "bal_acc")}
    result["positive_control"] = oracle
    result["measure"] = cfg["measure"]
    result["verdicts"], result["doses_by_estimator"] = {}, {}
    for estimator in dict.fromkeys(estimator_of(d) for d in designs.values() if d["kind"] == "top"):
        main_name = next((n for n, d in designs.items() if d["kind"] == "top" and d["concept"] == concept
                          and d["layer"] == "location" and estimator_of(d) == estimator), None)
        if main_name is None:
            continue
        main = {}
        for control in ("random", "matched"):
            other = "random" if control == "random" else main_name.replace("top", "matched", 1)
            if f"{main_name} - {other}" in loc["contrasts"]:
                main[control] = loc["contrasts"][f"{main_name} - {other}"]
        doses = {"top": conds[main_name]["n_concept"] if main_name in conds else None,
                 "random": conds["random"]["n_concept"] if "random" in conds else None,
                 "oracle": conds[oracle_name]["n_concept"] if oracle_name in conds else None}
        result["verdicts"][estimator] = verdict(concept, main, oracle, doses, cfg["measure"],
                                                cfg["margin_fraction"], cfg["margin_absolute"])
        result["verdicts"][estimator]["condition"] = main_name
        result["doses_by_estimator"][estimator] = doses
    first = next(iter(result["verdicts"]), None)      # TRAK's where it was ablated
    result["verdict"] = (result["verdicts"][first] if first else
                         verdict(concept, {}, oracle, {}, cfg["measure"], cfg["margin_fraction"],
                                 cfg["margin_absolute"]))
    result["doses"] = result["doses_by_estimator"].get(first, {"top": None, "random": None, "oracle": None})
    result["curves"] = curves(loc, designs, concept, confidence)
    return result


def format_text(result: dict) -> str:
    lines = [result["verdict"]["text"]]
    lines += [f"[by {est}'s top-k] {v['text']}" for est, v in list(result.get("verdicts", {}).items())[1:]]
    loc = result["layers"][result["location"]]
    lines.append(f"  at {result['location']} ({loc['n_targets']} TRAK targets; change = twin - base with base "
                 f"member's probe held fixed; mean over members [{int(100 * result['confidence'])}% t-interval])")
    lines.append(f"  {'condition':<22} {'removed':>7} {'concept':>7} {'output (targets)':>26} {'predicted':>9} {'agree r':>7} "
                 f"{'selectivity':>26} {'predicted':>9} {'bal. acc':>26} {'twin corr':>9}")
    for cond, c in loc["conditions"].items():
        ch, ps = c["change"], c["predicted"]["selectivity"]
        dose = "-" if c.get("n_concept") is None else str(c["n_concept"])
        lines.append(f"  {cond:<22} {c['n_removed']:7d} {dose:>7} {stats.fmt(ch['output_targets'], 3, True):>26} "
                     f"{c['predicted']['mean']:+9.3f} {c['agreement']['pearson']:7.2f} "
                     f"{stats.fmt(ch['selectivity'], 3, True):>26} {_num(ps):>9} "
                     f"{stats.fmt(ch['bal_acc'], 3, True):>26} {c['twin_correlation']:9.2f}")
    lines.append(f"  unrelated base members' correlation: {loc['unrelated_member_correlation']:.2f}; 'concept': "
                 f"ground-truth concept images removed; 'predicted': TRAK's claim (uncalibrated magnitude, no verdict "
                 f"reads it)")
    for name, cst in loc["contrasts"].items():
        lines.append(f"  {name}: selectivity {stats.fmt(cst['selectivity'], 3, True)} (detectable >= "
                     f"{cst['selectivity']['mde']:.3f}, TRAK predicted {_num(cst['predicted_selectivity'])} uncalibrated); "
                     f"output {stats.fmt(cst['output_targets'], 3, True)} (detectable >= "
                     f"{cst['output_targets']['mde']:.3f}, TRAK predicted {cst['predicted']:+.3f} uncalibrated); bal. acc "
                     f"{stats.fmt(cst['bal_acc'], 3, True)} (detectable >= {cst['bal_acc']['mde']:.3f})")
    pc = result.get("positive_control")
    if pc:
        lines.append("  positive control oracle - random: " + "; ".join(
            f"{k} {stats.fmt(v, 3, True)} (detectable >= {v['mde']:.3f})" for k, v in pc.items()))
    return "\n".join(lines)


def _num(x) -> str:
    return "n/a" if x is None else f"{x:+.3f}"


def validate_stage(job) -> str:
    i = job.input
    result = validate(job.wildcards["concept"], job.params, i["probe_set"], i["probes"], i["activations"], i["scores"],
                      i["ablations"], i["summaries"])
    text = format_text(result)
    artifacts.write_json(job.output["json"], result)
    artifacts.write_text(job.output["txt"], text + "\n")
    return text

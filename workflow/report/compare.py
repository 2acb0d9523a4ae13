"""Stage 9a: compare every retrained condition with the base ensemble.

Per concept, layer and condition: the change in probe accuracy, in concept location
and in probing sparsity. Members are paired (member m of a condition is the retrained
twin of base member m), so each comparison is a t-interval over the per-member
differences (``workflow.stats``), with its minimal detectable effect: a change is called
when the interval excludes zero. A null is not evidence of no change: it reads "no change
detected" with the smallest change the design could have detected (an equivalence claim
is the validate stage's, against a stated margin). The integer measures (sparsity k, the location's index) use
``stats.paired_integer``, which stays valid when members tie; the balanced accuracy moves in
steps too (one held-out image), and its spread is floored the same way
(``stats.paired_quantized``).

Every retrained ensemble's base-task test accuracy is checked first: on the test
images without the condition's concept (which it may legitimately fail after losing
them), it must be within ``max_test_acc_drop`` of the base ensemble's on the same
images, or its comparison is flagged as meaningless.
"""
from __future__ import annotations

import logging

import numpy as np

from .. import artifacts, stats
from ..probing.summary import location_index

log = logging.getLogger(__name__)


def test_acc(members: list, exclude=None) -> float:
    """Ensemble-mean base-task test accuracy, leaving out the test images in ``exclude``."""
    keep = slice(None) if exclude is None else ~np.asarray(exclude, bool)
    return float(np.mean([np.asarray(m["test_correct"], bool)[keep].mean() for m in members]))


def compare_concept(base: dict, cond: dict, layers: list, confidence: float) -> dict:
    """Paired differences for one concept between two summaries (per-member arrays)."""
    a_b, a_c = np.asarray(base["acc_per_member"]), np.asarray(cond["acc_per_member"])
    k_b, k_c = np.asarray(base["sparsity_k_per_member"], float), np.asarray(cond["sparsity_k_per_member"], float)
    if a_b.shape != a_c.shape:
        raise ValueError(f"base and condition have different members x layers: {a_b.shape} vs {a_c.shape}")
    per_layer = []
    for j, layer in enumerate(layers):
        per_layer.append({
            "layer": layer,
            "acc_base": stats.t_interval(a_b[:, j], confidence), "acc_cond": stats.t_interval(a_c[:, j], confidence),
            "acc_delta": stats.paired_quantized(a_c[:, j], a_b[:, j], base.get("acc_step", 0.0), confidence),
            "k_base": stats.t_interval(k_b[:, j], confidence), "k_cond": stats.t_interval(k_c[:, j], confidence),
            "k_delta": stats.paired_integer(k_c[:, j], k_b[:, j], confidence),
        })
    # location: the ensemble's (argmax of the mean profile); its shift is tested on the
    # per-member locations, paired
    member_b = [location_index(row[None]) for row in a_b]
    member_c = [location_index(row[None]) for row in a_c]
    return {
        "layers": layers,
        "location_base": layers[location_index(a_b)], "location_cond": layers[location_index(a_c)],
        "location_shift": stats.paired_integer(member_c, member_b, confidence),
        "per_layer": per_layer,
    }


def _detectable(ci: dict, digits: int) -> str:
    return f"detectable >= {ci['mde']:.{digits}f}"


def verdict(c: dict, ok: bool, acc_note: str) -> dict:
    """Plain-words verdict at the base location layer (sparsity, accuracy) and for the location."""
    j = c["layers"].index(c["location_base"])
    row = c["per_layer"][j]
    shift = c["location_shift"]
    loc_changed = c["location_base"] != c["location_cond"] and shift["changed"]
    sp_changed, acc_changed = row["k_delta"]["changed"], row["acc_delta"]["changed"]
    if c["location_base"] == c["location_cond"]:
        loc = f"location the same: {c['location_base']} -> {c['location_cond']}"
    else:
        loc = (f"location {'changed' if loc_changed else 'moved, not significantly'}: {c['location_base']} -> "
               f"{c['location_cond']} (member shift {shift['point']:+.1f} [{shift['lo']:+.1f},{shift['hi']:+.1f}] "
               f"layers)")
    kd, ad = row["k_delta"], row["acc_delta"]
    parts = [
        loc,
        f"sparsity {'changed' if sp_changed else 'no change detected'}: {row['k_base']['point']:.1f} -> "
        f"{row['k_cond']['point']:.1f} (diff {stats.fmt(kd, 1, True)}, sign-flip p {kd['p_sign_flip']:.2f}"
        + ("" if sp_changed else f", {_detectable(kd, 1)}") + ")",
        f"accuracy at {c['location_base']} {'changed' if acc_changed else 'no change detected'}: "
        f"{row['acc_base']['point']:.3f} -> {row['acc_cond']['point']:.3f} (diff {stats.fmt(ad, 3, True)}"
        + ("" if acc_changed else f", {_detectable(ad, 3)}") + ")",
    ]
    text = "; ".join(parts)
    if not ok:
        text = f"NOT INTERPRETABLE ({acc_note}); " + text
    return {"location_changed": loc_changed, "sparsity_changed": sp_changed, "accuracy_changed": acc_changed,
            "any_change": bool(loc_changed or sp_changed or acc_changed), "trained_ok": ok, "text": text}


def compare(summaries: dict, model_metrics: dict, ablations: dict, test_masks: dict, cfg: dict) -> dict:
    """``summaries``: {condition: summary dict}; ``model_metrics``: {condition: [per member
    {"test_correct": bool per test image, "test_acc"}]}; ``ablations``: {condition: {"kind",
    "concept", "reason", ...}} for every non-base condition; ``test_masks``: {concept: bool
    per test image} where the ground truth is known.

    A condition that removed a concept's images may fail on that concept's test images
    without having failed to learn: its base-task check leaves them out.
    """
    base = summaries["base"]
    out = {"conditions": {}, "config": cfg,
           "base_test_acc_per_member": [m["test_acc"] for m in model_metrics["base"]]}
    for cond, info in ablations.items():
        exclude = test_masks.get(info.get("concept"))
        acc_base = test_acc(model_metrics["base"], exclude)
        acc_cond = test_acc(model_metrics[cond], exclude)
        ok = acc_cond >= acc_base - cfg["max_test_acc_drop"]
        note = (f"test acc {acc_cond:.3f} vs base {acc_base:.3f}"
                + (f" on test images without {info['concept']!r}" if exclude is not None else ""))
        entry = {"info": info, "test_acc_base": acc_base, "test_acc_cond": acc_cond, "trained_ok": ok,
                 "test_acc_note": note, "test_acc_per_member": [m["test_acc"] for m in model_metrics[cond]],
                 "concepts": {}}
        if not ok:
            log.warning("%s: retrained ensemble failed to learn the base task (%s)", cond, note)
        for concept in base:
            c = compare_concept(base[concept], summaries[cond][concept], base[concept]["layers"], cfg["confidence"])
            c["verdict"] = verdict(c, ok, note)
            entry["concepts"][concept] = c
        out["conditions"][cond] = entry
    return out


def format_verdicts(result: dict) -> str:
    lines = []
    for cond, e in result["conditions"].items():
        info = e["info"]
        lines.append(f"{cond}: {info.get('reason', '')} ({e['test_acc_note']}"
                     f"{'' if e['trained_ok'] else ': FAILED TO LEARN'})")
        for concept, c in e["concepts"].items():
            mark = "*" if concept == info.get("concept") else " "
            lines.append(f" {mark} {concept:<10} {c['verdict']['text']}")
    level = int(round(100 * result["config"]["confidence"]))
    lines.append(f"(* = the concept the condition targets; diff: condition - base, mean over members with its {level}% "
                 f"t-interval; detectable: the smallest difference this ensemble detects with {int(stats.POWER * 100)}% "
                 f"power)")
    return "\n".join(lines)


def compare_stage(job) -> str:
    """``input``: summaries {condition: summary.json} (base included), ablations {condition:
    set}, models {condition: {member: model file}}, probe_sets {concept: probe set}."""
    i, cfg = job.input, job.params
    summaries = {c: artifacts.summary(p) for c, p in i["summaries"].items()}
    ablations = {}
    for c, p in i["ablations"].items():
        a = artifacts.ablation(p)
        ablations[c] = {k: a[k] for k in ("kind", "concept", "layer", "reason", "n_removed")}
    metrics = {c: [artifacts.model_metrics(by_member[m]) for m in sorted(by_member, key=int)]
               for c, by_member in i["models"].items()}
    test_masks = {c: t for c, p in i["probe_sets"].items() if (t := artifacts.concept_truth(p, "test")) is not None}
    result = compare(summaries, metrics, ablations, test_masks, cfg)
    text = format_verdicts(result)
    artifacts.write_text(job.output["txt"], text + "\n")
    artifacts.write_json(job.output["json"], result)
    return text

"""Stage 9a: compare every retrained condition with the base ensemble.

Per concept, layer and condition: the change in probe accuracy, in concept location
and in probing sparsity, each with a 95% bootstrap interval over ensemble members.
Members are paired (member i of every condition has the same seed), so one bootstrap
draw resamples member indices and applies them to both ensembles. A change is called
when the interval of the difference excludes zero.

Every retrained ensemble's base-task test accuracy is checked first: on the test
images without the condition's concept (which it may legitimately fail after losing
them), it must be within ``max_test_acc_drop`` of the base ensemble's on the same
images, or its comparison is flagged as meaningless.
"""
from __future__ import annotations

import logging

import numpy as np

from .. import artifacts
from ..probing.summary import location_index
from ..seeding import rng as seeded_rng

log = logging.getLogger(__name__)


def bootstrap(values: np.ndarray, statistic, n_boot: int, confidence: float, rng) -> dict:
    """Point estimate and percentile interval of ``statistic`` over resampled rows of ``values``.

    ``values`` has one row per ensemble member; ``statistic`` maps an array of rows to a
    number. The bootstrap of a constant is a point: lo == point == hi.
    """
    values = np.asarray(values)
    m = len(values)
    draws = np.array([statistic(values[rng.integers(0, m, size=m)]) for _ in range(n_boot)], dtype=float)
    alpha = (1.0 - confidence) / 2.0
    point = float(statistic(values))
    lo, hi = np.quantile(draws, [alpha, 1.0 - alpha])
    # percentiles can stray from the point by float noise only when every draw is equal
    return {"point": point, "lo": float(min(lo, point)), "hi": float(max(hi, point))}


def excludes_zero(ci: dict) -> bool:
    return ci["lo"] > 0 or ci["hi"] < 0


def test_acc(members: list, exclude=None) -> float:
    """Ensemble-mean base-task test accuracy, leaving out the test images in ``exclude``."""
    keep = slice(None) if exclude is None else ~np.asarray(exclude, bool)
    return float(np.mean([np.asarray(m["test_correct"], bool)[keep].mean() for m in members]))


def compare_concept(base: dict, cond: dict, layers: list, cfg: dict, rng) -> dict:
    """Differences for one concept between two summaries (per-member arrays)."""
    a_b, a_c = np.asarray(base["acc_per_member"]), np.asarray(cond["acc_per_member"])
    k_b, k_c = np.asarray(base["sparsity_k_per_member"], float), np.asarray(cond["sparsity_k_per_member"], float)
    if a_b.shape != a_c.shape:
        raise ValueError(f"base and condition have different members x layers: {a_b.shape} vs {a_c.shape}")
    boot = lambda x, f: bootstrap(x, f, cfg["n_boot"], cfg["confidence"], rng)  # noqa: E731
    acc = np.stack([a_b, a_c], 1)   # members x 2 x layers
    k = np.stack([k_b, k_c], 1)
    per_layer = []
    for j, layer in enumerate(layers):
        per_layer.append({
            "layer": layer,
            "acc_base": boot(a_b[:, j], np.mean), "acc_cond": boot(a_c[:, j], np.mean),
            "acc_delta": boot(acc[:, :, j], lambda x: x[:, 1].mean() - x[:, 0].mean()),
            "k_base": boot(k_b[:, j], np.mean), "k_cond": boot(k_c[:, j], np.mean),
            "k_delta": boot(k[:, :, j], lambda x: x[:, 1].mean() - x[:, 0].mean()),
        })
    loc_b, loc_c = location_index(a_b), location_index(a_c)
    shift = boot(acc, lambda x: location_index(x[:, 1]) - location_index(x[:, 0]))
    # where each ensemble puts the concept, resample by resample: how stable is the location?
    draws_b = [location_index(a_b[rng.integers(0, len(a_b), len(a_b))]) for _ in range(cfg["n_boot"])]
    draws_c = [location_index(a_c[rng.integers(0, len(a_c), len(a_c))]) for _ in range(cfg["n_boot"])]
    return {
        "layers": layers,
        "location_base": layers[loc_b], "location_cond": layers[loc_c],
        "location_shift": shift,
        "location_share_base": float(np.mean(np.array(draws_b) == loc_b)),
        "location_share_cond": float(np.mean(np.array(draws_c) == loc_c)),
        "per_layer": per_layer,
    }


def _fmt(ci: dict, digits: int) -> str:
    return f"{ci['point']:.{digits}f} [{ci['lo']:.{digits}f},{ci['hi']:.{digits}f}]"


def verdict(c: dict, ok: bool, acc_note: str) -> dict:
    """Plain-words verdict at the base location layer (sparsity, accuracy) and for the location."""
    j = c["layers"].index(c["location_base"])
    row = c["per_layer"][j]
    loc_changed = c["location_base"] != c["location_cond"] and excludes_zero(c["location_shift"])
    sp_changed = excludes_zero(row["k_delta"])
    acc_changed = excludes_zero(row["acc_delta"])
    shift = c["location_shift"]
    if c["location_base"] == c["location_cond"]:
        loc = f"location unchanged: {c['location_base']} -> {c['location_cond']}"
    else:
        loc = (f"location {'changed' if loc_changed else 'moved, not significantly'}: {c['location_base']} -> "
               f"{c['location_cond']} (shift {shift['point']:+.0f} [{shift['lo']:+.0f},{shift['hi']:+.0f}] layers)")
    parts = [
        loc,
        f"sparsity {'changed' if sp_changed else 'unchanged'}: {_fmt(row['k_base'], 0)} -> {_fmt(row['k_cond'], 0)}",
        f"accuracy at {c['location_base']} {'changed' if acc_changed else 'unchanged'}: "
        f"{_fmt(row['acc_base'], 3)} -> {_fmt(row['acc_cond'], 3)}",
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
    rng = seeded_rng(cfg["seed"], "compare")
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
            c = compare_concept(base[concept], summaries[cond][concept], base[concept]["layers"], cfg, rng)
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
    lines.append("(* = the concept the condition targets; intervals: 95% bootstrap over ensemble members)")
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

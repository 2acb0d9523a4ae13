"""Drift under control: how each candidate readout of the fixed base probe trades the
positive control's effect against the spread over members (the detectable effect).

Runs on a finished experiment (no training): for each concept at its location, each
readout of base member m's probe applied to its retrained twin, the paired contrasts
top-k - random and oracle - random with their t-intervals and minimal detectable
effects (MDE), and |effect| / MDE. Readouts:

- output:      mean probe output on the TRAK targets (twin - base);
- selectivity: output on the targets minus on the scored held-out negatives;
- z:           selectivity divided by the spread of the negatives' outputs;
- bal_acc:     held-out balanced accuracy;
- align(a):    the twin's layer mapped onto the base's by ridge (alpha a), fitted on the
               probe set's concept-free training images, then the output on the targets.

    python bench/drift.py results/demo [--json out.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.linear_model import Ridge
from sklearn.metrics import balanced_accuracy_score

from workflow import artifacts, stats
from workflow.probing.probes import decision_function
from workflow.probing.summary import location_index
from workflow.validation.validate import channel_correlation

ALPHAS = (1.0, 100.0)


def readouts(probe, base_a, twin_a, labels, held, targets, negatives, fit_mask) -> dict:
    fb = decision_function(probe, base_a.astype(float))
    ft = decision_function(probe, twin_a.astype(float))
    sel = lambda f: f[targets].mean() - f[negatives].mean()  # noqa: E731
    y = labels[held]
    out = {"output": ft[targets].mean() - fb[targets].mean(),
           "selectivity": sel(ft) - sel(fb),
           "z": sel(ft) / ft[negatives].std() - sel(fb) / fb[negatives].std(),
           "bal_acc": balanced_accuracy_score(y, ft[held] > 0) - balanced_accuracy_score(y, fb[held] > 0)}
    for a in ALPHAS:
        fa = decision_function(probe, Ridge(alpha=a).fit(twin_a[fit_mask], base_a[fit_mask]).predict(twin_a))
        out[f"align({a:g})"] = fa[targets].mean() - fb[targets].mean()
    return out


def study(results: Path, concept: str) -> dict:
    probes_path = results / "base" / "probes" / f"{concept}.h5"
    table = artifacts.probes_table(probes_path)
    members, layer = table["members"], table["layers"][location_index(table["heldout_bal_acc"])]
    ps = artifacts.probe_set(results / "data" / f"probe_{concept}.h5", images=False)
    labels, held = ps["labels"], ps["heldout"]
    score_path = results / "base" / "trak" / "scores" / concept / f"{layer}.h5"
    _, targets = artifacts.per_target_scores(score_path)
    _, negatives = artifacts.negative_scores(score_path)
    if negatives is None:
        negatives = np.flatnonzero(held & (labels == 0))
    fit_mask = (~held) & (labels == 0)
    conds = ["random", f"top-{concept}", f"oracle-{concept}"]

    def acts(cond, m):
        return artifacts.activations(results / cond / "activations" / f"m{m}" / f"{concept}.h5")[layer]

    base = {m: acts("base", m) for m in members}
    probes = {m: artifacts.probe(probes_path, m, layer) for m in members}
    per = {c: [readouts(probes[m], base[m], acts(c, m), labels, held, targets, negatives, fit_mask)
               for m in members] for c in conds}
    rows = {}
    for key in per["random"][0]:
        v = {c: [r[key] for r in per[c]] for c in conds}
        rows[key] = {name: stats.paired(v[c], v["random"]) for name, c in
                     (("top - random", f"top-{concept}"), ("oracle - random", f"oracle-{concept}"))}
    twin = [channel_correlation(base[m], acts("random", m)) for m in members]
    pairs = [(a, b) for i, a in enumerate(members) for b in members[i + 1:]]
    aligned = {}
    for a in ALPHAS:
        aligned[f"{a:g}"] = {
            "twin": float(np.mean([channel_correlation(base[m][held], Ridge(alpha=a).fit(
                acts("random", m)[fit_mask], base[m][fit_mask]).predict(acts("random", m)[held])) for m in members])),
            "unrelated": float(np.mean([channel_correlation(base[x][held], Ridge(alpha=a).fit(
                base[y][fit_mask], base[x][fit_mask]).predict(base[y][held])) for x, y in pairs]))}
    return {"concept": concept, "layer": layer, "members": len(members), "readouts": rows,
            "twin_correlation_random": float(np.mean(twin)),
            "unrelated_correlation": float(np.mean([channel_correlation(base[x], base[y]) for x, y in pairs])),
            "aligned_correlation": aligned}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", type=Path, help="an experiment's results folder, e.g. results/demo")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    concepts = sorted(p.stem for p in (args.results / "base" / "probes").glob("*.h5"))
    out = []
    for concept in concepts:
        if not (args.results / f"oracle-{concept}").is_dir() or not (args.results / f"top-{concept}").is_dir():
            continue
        r = study(args.results, concept)
        out.append(r)
        print(f"{concept} at {r['layer']} ({r['members']} members): twin correlation after random removal "
              f"{r['twin_correlation_random']:.2f}, unrelated members {r['unrelated_correlation']:.2f}")
        for a, c in r["aligned_correlation"].items():
            print(f"  aligned by ridge({a}): twin {c['twin']:.2f}, unrelated {c['unrelated']:.2f}")
        print(f"  {'readout':<12} {'top - random':>26} {'MDE':>7} {'|d|/MDE':>7} {'oracle - random':>26} "
              f"{'MDE':>7} {'|d|/MDE':>7}")
        for key, row in r["readouts"].items():
            t, o = row["top - random"], row["oracle - random"]
            ratio = lambda c: abs(c["point"]) / c["mde"] if c["mde"] > 0 else float("inf")  # noqa: E731
            print(f"  {key:<12} {stats.fmt(t, 3, True):>26} {t['mde']:7.3f} {ratio(t):7.2f} "
                  f"{stats.fmt(o, 3, True):>26} {o['mde']:7.3f} {ratio(o):7.2f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

"""Which TRAK choices find the planted ground truth? Ridge, checkpoints, probe target and
the out-to-loss factor, scored against ground truth on a finished experiment.

For each concept with ground truth, at its location: the stored training features
(projected gradients and out-to-loss of every base member's checkpoints) are combined
again under each variant, and the top-k / bottom-k share of ground-truth images over the
base rate (enrichment, k = trak.top_fraction of the train set) is printed beside the
"hardest images" baseline (ranking by out-to-loss alone). Variants:

- lambda:  ridge on X^T X relative to its mean diagonal (trak.lambda_reg);
- ckpts:   which saved checkpoints enter the ensemble;
- target:  "pos" = the probe output on held-out positives (the workflow's target);
           "pos-neg" = minus the same on held-out negatives (a selectivity target);
- otl:     with or without TRAK's out-to-loss factor (without: the gradient term alone).

    python bench/attribution_variants.py results/demo [--lambdas 0 0.1 1 10 100] [--json out.json]
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch
import yaml

from workflow import artifacts
from workflow import config as wconfig
from workflow.attribution.features import setup, x_xtx_inv
from workflow.attribution.scores import enrichment, probe_gradients, target_indices
from workflow.probing.summary import location_index


def variants(results: Path, cfg: dict, concept: str, lambdas) -> list:
    tcfg = {**cfg["trak"], "device": "cpu"}
    probes_path = results / "base" / "probes" / f"{concept}.h5"
    table = artifacts.probes_table(probes_path)
    members, layer = table["members"], table["layers"][location_index(table["heldout_bal_acc"])]
    ps_path = results / "data" / f"probe_{concept}.h5"
    truth = artifacts.concept_truth(ps_path)
    pos = target_indices(ps_path, tcfg["max_targets"], cfg["seed"], concept)
    neg = target_indices(ps_path, tcfg["max_targets"], cfg["seed"], concept, label=0)
    images = {"pos": artifacts.probe_set_images(ps_path, pos), "neg": artifacts.probe_set_images(ps_path, neg)}
    ckpts = tcfg["checkpoints"]
    feats, grads = {}, {}
    for m, c in itertools.product(members, ckpts):
        feats[(m, c)] = artifacts.features(results / "base" / "trak" / "features" / f"m{m}_{c}.h5",
                                           arrays=("grads", "out_to_loss"))
        model, gfn, attrs = setup(results / "base" / "models" / f"m{m}.h5", c, m, tcfg)
        probe = artifacts.probe(probes_path, m, layer)
        for side, x in images.items():
            grads[(m, c, side)] = probe_gradients(model, gfn, probe, layer, x, attrs["model_id"],
                                                  tcfg["batch_size"]).mean(0)
    rows = []
    ckpt_sets = [[c] for c in ckpts] + ([list(ckpts)] if len(ckpts) > 1 else [])
    for lam in lambdas:
        xinv = {k: x_xtx_inv(f["grads"], lam)[0] for k, f in feats.items()}
        for cks, target in itertools.product(ckpt_sets, ("pos", "pos-neg")):
            keys = [(m, c) for m in members for c in cks]
            g = {k: grads[(*k, "pos")] - (grads[(*k, "neg")] if target == "pos-neg" else 0) for k in keys}
            kernel = np.mean([xinv[k] @ g[k] for k in keys], axis=0)
            otl = np.mean([feats[k]["out_to_loss"] for k in keys], axis=0)
            for use_otl in (True, False):
                e = enrichment(kernel * otl if use_otl else kernel, truth, tcfg["top_fraction"], cfg["seed"],
                               hardness=otl)
                rows.append({"concept": concept, "layer": layer, "lambda": lam, "ckpts": "+".join(cks),
                             "target": target, "otl": use_otl, "top": e["enrichment"],
                             "bottom": e["bottom_enrichment"], "hardest": e["hardest_enrichment"]})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", type=Path, help="an experiment's results folder, e.g. results/demo")
    ap.add_argument("--config", type=Path, default=Path("config.yaml"), help="the experiment's config")
    ap.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 0.1, 1.0, 10.0, 100.0])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = wconfig.resolve(yaml.safe_load(args.config.read_text()))
    rows = []
    for c in cfg["concepts"]:
        if artifacts.concept_truth(args.results / "data" / f"probe_{c['name']}.h5") is None:
            continue
        out = variants(args.results, cfg, c["name"], args.lambdas)
        rows += out
        print(f"{c['name']} at {out[0]['layer']}: enrichment top / bottom; hardest-images baseline "
              + ", ".join(sorted({f"{r['ckpts']} {r['hardest']:.2f}" for r in out})))
        print(f"  {'lambda':>7} {'checkpoints':<18} {'target':<8} {'with out-to-loss':>17} {'gradient term only':>19}")
        for i in range(0, len(out), 2):
            a, b = out[i], out[i + 1]
            print(f"  {a['lambda']:7g} {a['ckpts']:<18} {a['target']:<8} {a['top']:8.2f} / {a['bottom']:<6.2f} "
                  f"{b['top']:9.2f} / {b['bottom']:<6.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

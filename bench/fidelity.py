"""Fidelity of the projectors: TRAK concept scores with projection vs without.

    .venv/bin/python bench/fidelity.py [--json out.json] [--n-train 600] [--width 4]

On a model small enough to hold exact per-example gradients (ResNet-18 at width 4:
~44k parameters; the exact side is solved in n x n form), runs the workflow's own stages on a small synthetic instance (data,
2 members x 2 checkpoints, probes, featurize, gather, score) once with the no-op
projector (exact gradients) and once per (projector, proj_dim) for the sparse JL
projector, traker's dense Gaussian BasicProjector and the factored projector (exact per-layer
gradients: the sparse map, computed from hooks; and with layer_dim 256, which reduces each
weight of this width-4 model as layer_dim 4096 does at width 16) at proj_dim 512 and 2048. For each
concept at its location it prints, against the unprojected scores:
  spearman   rank correlation over all (target, train image) pairs
  top100     overlap of the 100 highest-scored training images per target (mean share)
  enrich     the enrichment figure (ground-truth share of the top 8% over the base rate)
Every variant uses the same ridge (lambda_reg 0.1, as the demo), so only the projection differs.
All numbers come from this one run.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from workflow import artifacts, runtime
from workflow.attribution import features as trak_features
from workflow.attribution import scores as trak_scores
from workflow.config import schema, with_defaults
from workflow.data import build as data
from workflow.model import train
from workflow.probing import activations, probes, summary

CONCEPTS = [{"name": "curved", "kind": "classes", "classes": [0, 1, 2, 3]}, {"name": "hilo", "kind": "planted"}]
LAYERS = ["stem", "layer1", "layer2", "layer3", "layer4"]
# (projector, proj_dim, layer_dim): layer_dim 256 at width 4 reduces each weight as
# layer_dim 4096 does at width 16 (channel counts 4x smaller, weights 16x)
METHODS = [("noop", 0, None)] + [(p, k, f) for k in (512, 2048)
                                  for p, f in (("sparse", None), ("basic", None), ("factored", None),
                                               ("factored", 256))]


def label(projector: str, layer_dim) -> str:
    return f"{projector}_l{layer_dim}" if layer_dim else projector


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def top_overlap(a: np.ndarray, b: np.ndarray, k: int = 100) -> float:
    """Mean share of the k highest entries per row that a and b have in common."""
    ta, tb = np.argsort(-a, 1)[:, :k], np.argsort(-b, 1)[:, :k]
    return float(np.mean([len(np.intersect1d(x, y)) / k for x, y in zip(ta, tb)]))


def prepare(d: Path, n_train: int, width: int, members: int, seed: int = 0) -> dict:
    cfg = {"seed": seed, "dataset": {"name": "synthetic", "image_size": 32,
                                     "synthetic": {"n_train": n_train, "n_test": 200, "planted_fraction": 0.3}},
           "probe_set": {"size": 600, "heldout_fraction": 0.3}}
    data.build_base(cfg, d / "base.h5")
    for c in CONCEPTS:
        data.build_probe_set(cfg, c, d / "base.h5", d / f"probe_{c['name']}.h5")
    tcfg = with_defaults({"seed": seed, "model": {"width": width},
                          "train": {"epochs": 6, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
                                    "augment_shift": 2, "augment_flip": True, "checkpoint_every": 3,
                                    "device": "cpu"}}, schema())
    pcfg = {"seed": seed, "layers": LAYERS, "activations": {"batch_size": 256, "device": "cpu"},
            "probes": {"Cs": [0.1, 1.0], "max_iter": 1000, "sparsity_threshold": 0.95, "path_points": 4,
                       "path_span": 100.0}, "members": list(range(members))}
    locations = {}
    for m in range(members):
        train.train_member(d / "base.h5", d / f"m{m}.h5", m, tcfg)
    for c in CONCEPTS:
        name = c["name"]
        for m in range(members):
            activations.extract(d / f"m{m}.h5", {name: d / f"probe_{name}.h5"}, {name: d / f"act_{name}_{m}.h5"}, pcfg)
        probes.fit_concept(d / f"probe_{name}.h5", {m: d / f"act_{name}_{m}.h5" for m in range(members)},
                           d / f"probes_{name}.h5", pcfg, name)
        locations[name] = summary.summarise({name: d / f"probes_{name}.h5"})[name]["location"]
    return locations


def scores_with(d: Path, projector: str, proj_dim: int, layer_dim, members: int, locations: dict,
                seed: int = 0) -> dict:
    ckpts = ["epoch_0003", "final"]
    tcfg = {"proj_dim": proj_dim or 1, "proj_seed": 0, "projector": projector, "layer_dim": layer_dim,
            "device": "cpu",
            "precision": "float32", "shards": 1, "batch_size": 32, "checkpoints": ckpts, "lambda_reg": 0.1,
            "max_targets": 40, "top_fraction": 0.08}
    cfg = {"seed": seed, "trak": tcfg, "members": list(range(members))}
    tag = f"{projector}_{proj_dim}_{layer_dim}"
    feats = {}
    for m in range(members):
        shards = {ck: d / f"feat_{tag}_{m}_{ck}_0.h5" for ck in ckpts}
        trak_features.featurize(d / f"m{m}.h5", d / "base.h5", shards, m, 0, cfg)
        for ck in ckpts:
            feats[(m, ck)] = d / f"feat_{tag}_{m}_{ck}.h5"
            trak_features.gather([shards[ck]], feats[(m, ck)], cfg)
    out = {}
    for name, layer in locations.items():   # each concept at its own location
        path, js = d / f"scores_{tag}_{name}.h5", d / f"scores_{tag}_{name}.json"
        trak_scores.score({name: (d / f"probe_{name}.h5", d / f"probes_{name}.h5")}, [layer],
                          {m: d / f"m{m}.h5" for m in range(members)}, feats, {name: {layer: (path, js)}}, cfg)
        out[name] = {"per_target": artifacts.per_target_scores(path)[0],
                     "enrichment": artifacts.read_json(js)["enrichment"]}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path)
    p.add_argument("--n-train", type=int, default=600)
    p.add_argument("--width", type=int, default=4)
    p.add_argument("--members", type=int, default=2)
    a = p.parse_args()
    runtime.configure(2, uses_torch=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        t0 = time.time()
        locations = prepare(d, a.n_train, a.width, a.members)
        print(f"prepared {a.members} models (width {a.width}) on {a.n_train} images in {time.time() - t0:.0f}s; "
              f"locations {locations}", flush=True)
        results = {}
        for projector, k, fd in METHODS:
            t = time.time()
            results[(projector, k, fd)] = scores_with(d, projector, k, fd, a.members, locations)
            print(f"  {label(projector, fd):<13} {k or 'exact':>5}: {time.time() - t:.0f}s", flush=True)
        exact = results[METHODS[0]]
        print(f"\n{'concept':<8} {'layer':<7} {'projector':<13} {'dim':>5} {'spearman':>9} {'top100':>7} {'enrich':>7}")
        for (projector, k, fd), res in results.items():
            for name, r in res.items():
                row = {"concept": name, "layer": locations[name], "projector": label(projector, fd),
                       "proj_dim": k or None,
                       "spearman": spearman(r["per_target"].ravel(), exact[name]["per_target"].ravel()),
                       "top100_overlap": top_overlap(r["per_target"], exact[name]["per_target"]),
                       "enrichment": r["enrichment"]}
                rows.append(row)
                print(f"{name:<8} {row['layer']:<7} {row['projector']:<13} {str(k or 'exact'):>5} {row['spearman']:9.3f} "
                      f"{row['top100_overlap']:7.3f} {row['enrichment']:7.2f}")
    for name in locations:
        for k in (512, 2048):
            s = {r["projector"]: r["spearman"] for r in rows if r["concept"] == name and r["proj_dim"] == k}
            for ours in (p for p in s if p != "basic"):
                print(f"{name} proj_dim {k}: {ours} - basic Spearman = {s[ours] - s['basic']:+.3f} "
                      f"(target: not below -0.02)")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

"""How far the metagradient's first-order prediction carries on a finished run: the actual
change of a concept's selectivity when an LDS subset's loss weights are lowered by a step
s, against the linear prediction, for several steps, in one run.

    .venv/bin/python bench/metagradient_linearity.py [--results results/demo] [--config config.yaml]
        [--concept curved] [--layer layer4] [--member 0] [--subsets lds0.01-s00 ...]
        [--steps 1e-5 1e-3 0.1 1] [--float64]

Reads the experiment's base model, probe, probe set and LDS subsets (run config.yaml with
config/metagradient.yaml first), computes member ``--member``'s metagradient of the fixed
probe's selectivity (targets minus negatives, as validate reads it) from
``ablation.spawn_epoch``, then replays the masked run (the training stage's arithmetic,
bit for bit in float32) with each subset's weights set to 1 - s. Prints, per subset and
step, the actual change and the prediction s * (-sum of the removed images' derivatives).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import yaml

from workflow import artifacts
from workflow.attribution import metagradient as mg
from workflow.attribution.scores import concept_targets
from workflow.config import resolve
from workflow.model import checkpoints
from workflow.model.resnet import to_input
from workflow.probing.probe_function import ProbeOutput


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default="results/demo")
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--concept", default="curved")
    ap.add_argument("--layer", default="layer4")
    ap.add_argument("--member", type=int, default=0)
    ap.add_argument("--subsets", nargs="+", default=["lds0.01-s00"])
    ap.add_argument("--steps", type=float, nargs="+", default=[1e-5, 1e-3, 0.1, 1.0])
    ap.add_argument("--float64", action="store_true", help="replay and differentiate in float64")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    res, dtype = Path(args.results), (torch.float64 if args.float64 else torch.float32)
    cfg = resolve(yaml.safe_load(Path(args.config).read_text()))
    start = cfg["ablation"]["spawn_epoch"]
    tidx, _, images, _ = concept_targets(res / "data" / f"probe_{args.concept}.h5", args.concept, cfg["trak"],
                                         cfg["seed"])
    probe = ProbeOutput(artifacts.probe(res / "base" / "probes" / f"{args.concept}.h5", args.member, args.layer),
                        args.layer, dtype=dtype)
    x, nt = to_input(images).to(dtype), len(tidx)
    readout = {"selectivity": lambda m: probe(m, x[:nt]).mean() - probe(m, x[nt:]).mean()}
    model_path = res / "base" / "models" / f"m{args.member}.h5"
    net = mg.Network(checkpoints.load(model_path), dtype=dtype)
    recipe = mg.Recipe(res / "data" / "base.h5", cfg, args.member, start)
    state = mg.start_state(net, model_path, start, res / "data" / "base.h5", cfg, args.member)
    grads, values = mg.metagradients(net, recipe, state, readout)
    g, base = grads["selectivity"], values["selectivity"]
    print(f"{args.concept} selectivity at {args.layer}, member {args.member}, {dtype}: R(1) = {base:.6f}")
    for name in args.subsets:
        removed = artifacts.ablation(res / "ablation" / f"{name}.h5")["removed"]
        slope = -g[removed].sum()
        for s in args.steps:
            w = np.ones(recipe.n)
            w[removed] = 1 - s
            change = mg.replay(net, recipe, state, w, readout)["selectivity"] - base
            print(f"  {name} ({len(removed)} images), step {s:g}: actual {change:+.4e}, "
                  f"linear prediction {s * slope:+.4e}")
    recipe.close()


if __name__ == "__main__":
    main()

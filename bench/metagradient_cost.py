"""The metagradient's cost as a ratio to training the same member, on the CPU, in one run.

    .venv/bin/python bench/metagradient_cost.py [--config config.yaml] [--threads 1] [--readouts 1 2 4]

Builds the config's data in a temporary folder, trains member 0 with the config's recipe
(every epoch: the denominator), then computes the metagradient of K scalar readouts (a
linear probe on pooled layer3 activations of 100 images: the cost does not depend on the
probe's weights) through the replayed epochs after ``ablation.spawn_epoch`` (the spawned
design), for each K of --readouts. Prints CPU seconds and each ratio to training. One
concept at its location is K = 2 (the mean output on its targets and on its negatives);
the demo's job (2 concepts) is K = 4 per member.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from workflow.attribution import metagradient as mg
from workflow.config import resolve
from workflow.data import build as data
from workflow.model import checkpoints, train


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--readouts", type=int, nargs="+", default=[1, 2, 4])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = resolve(yaml.safe_load(Path(args.config).read_text()))
    start = cfg["ablation"]["spawn_epoch"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data.build_base(cfg, tmp / "base.h5")
        t0 = time.process_time()
        train.train_member(tmp / "base.h5", tmp / "m0.h5", 0, cfg)
        trained = time.process_time() - t0
        print(f"training member 0 ({cfg['train']['epochs']} epochs, {args.threads} thread(s)): {trained:.1f} CPU s")
        net = mg.Network(checkpoints.load(tmp / "m0.h5"))
        recipe = mg.Recipe(tmp / "base.h5", cfg, 0, start)
        state = mg.start_state(net, tmp / "m0.h5", start, tmp / "base.h5", cfg, 0)
        g = torch.Generator().manual_seed(0)
        x = torch.rand(100, 3, cfg["dataset"]["image_size"], cfg["dataset"]["image_size"], generator=g)
        width = net.model.layer3[-1].bn2.num_features
        for k in args.readouts:
            weights = torch.randn(k, width, generator=g)
            readouts = {j: (lambda m, w=weights[j]: (m.pooled(x, ["layer3"])["layer3"] @ w).mean()) for j in range(k)}
            t0 = time.process_time()
            scores, _ = mg.metagradients(net, recipe, state, readouts)
            spent = time.process_time() - t0
            assert all(np.isfinite(s).all() for s in scores.values())
            print(f"metagradient, epochs {start + 1}..{cfg['train']['epochs']}, {k} readout(s): {spent:.1f} CPU s "
                  f"= {spent / trained:.2f}x training the member")
        recipe.close()


if __name__ == "__main__":
    main()

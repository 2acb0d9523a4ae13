"""Featurization cost per image: the floor, traker's stock path and our projectors.

    .venv/bin/python bench/featurize.py [--json out.json] [--images 96] [--stock-images 32] [--device cpu]

For ResNet-18 at 32x32 (widths 16 and 64) and proj_dim 512 / 2048, prints ms per image for
  floor          batched forward + backward of the mean loss (no per-example work)
  stock          traker's TRAKer.featurize (on cpu: BasicProjector, dense Gaussian blocks;
                 on cuda: its CudaProjector if fast_jl is installed, else BasicProjector)
  sparse         per-example gradients (torch.func.vmap) + our SparseJLProjector
  factored       our FactoredProjector: per-layer gradients from hooks, hashed by the same
                 sparse JL map (the pipeline's default, trak.projector auto)
  factored_l4096 the same with trak.layer_dim 4096 (Kronecker reduction of large weights)
and the ratios to the floor and to stock, all measured in this one run (each the best of
two timed passes after a warm-up pass; stock one pass). Every method
includes the out-to-loss term, as the pipeline's featurize does.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from trak import TRAKer

from workflow.attribution.features import train_features
from workflow.attribution.projection import factory
from workflow.model.resnet import ScalableResNet18


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, n_images: int, passes: int = 2) -> float:
    """ms per image: the best of ``passes`` timed passes after a warm-up pass."""
    fn()  # warm-up (allocations, lazy init)
    best = float("inf")
    for _ in range(passes):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best / n_images * 1000


def floor(model, x, y, bs):
    def run():
        for s in range(0, len(x), bs):
            model.zero_grad()
            F.cross_entropy(model(x[s:s + bs]), y[s:s + bs]).backward()
    return timed(run, len(x))


def ours(model, x, y, bs, kind, proj_dim, layer_dim=None):
    """The pipeline's per-batch featurization (``features.train_features``) with projector ``kind``."""
    grads = factory.make(kind, model, proj_dim, 0, x.device.type, layer_dim=layer_dim)

    def run():
        for s in range(0, len(x), bs):
            train_features(model, grads, x[s:s + bs], y[s:s + bs], 0)
    return timed(run, len(x))


def stock(model, x, y, bs, proj_dim):
    with tempfile.TemporaryDirectory() as d:
        traker = TRAKer(model=model, task="image_classification", train_set_size=2 * len(x), save_dir=d,
                        device=x.device.type, proj_dim=proj_dim, use_half_precision=False, logging_level=40)
        traker.load_checkpoint(model.state_dict(), model_id=0)  # warm-up + timed pass: 2 x len(x) samples

        def run():
            for s in range(0, len(x), bs):
                traker.featurize(batch=(x[s:s + bs], y[s:s + bs]), num_samples=len(y[s:s + bs]))
        return timed(run, len(x), passes=1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write the rows here as JSON")
    ap.add_argument("--images", type=int, default=96, help="images per measurement (floor, ours)")
    ap.add_argument("--stock-images", type=int, default=32, help="images per stock measurement")
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--proj-dims", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    dev = a.device
    print(f"device: {torch.cuda.get_device_name() if dev == 'cuda' else 'cpu'}, torch threads: "
          f"{torch.get_num_threads()}")
    print(f"{'width':>5} {'proj':>5} {'method':>14} {'ms/img':>9} {'x floor':>8} {'vs stock':>9}")
    for width in a.widths:
        model = ScalableResNet18(10, width=width, image_size=32).eval().to(dev)
        x = torch.rand(a.images, 3, 32, 32, device=dev)
        y = torch.randint(0, 10, (a.images,), device=dev)
        base = floor(model, x, y, a.batch_size)
        for proj_dim in a.proj_dims:
            ms = {"floor": base,
                  "stock": stock(model, x[:a.stock_images], y[:a.stock_images], a.batch_size, proj_dim),
                  "sparse": ours(model, x, y, a.batch_size, "sparse", proj_dim),
                  "factored": ours(model, x, y, a.batch_size, "factored", proj_dim),
                  "factored_l4096": ours(model, x, y, a.batch_size, "factored", proj_dim, layer_dim=4096)}
            for method, v in ms.items():
                row = {"width": width, "proj_dim": proj_dim, "method": method, "ms_per_image": round(v, 3),
                       "ratio_to_floor": round(v / base, 2), "speedup_vs_stock": round(ms["stock"] / v, 2)}
                rows.append(row)
                print(f"{width:5d} {proj_dim:5d} {method:>14} {v:9.2f} {row['ratio_to_floor']:8.2f} "
                      f"{row['speedup_vs_stock']:9.2f}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

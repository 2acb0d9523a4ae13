"""Featurization cost per image on CPU: the floor, traker's stock path and our projectors.

    .venv/bin/python bench/featurize.py [--json out.json] [--images 128] [--stock-images 32]

For ResNet-18 at 32x32 (widths 16 and 64) and proj_dim 512 / 2048, prints ms per image for
  floor   batched forward + backward of the mean loss (no per-example work)
  stock   traker's TRAKer.featurize on "cpu" (BasicProjector, dense Gaussian blocks)
  sparse  traker's per-example gradients + our SparseJLProjector (the pipeline's default)
and the ratios to the floor and to stock, all measured in this one run.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trak import TRAKer  # noqa: E402
from trak.gradient_computers import FunctionalGradientComputer  # noqa: E402
from trak.modelout_functions import ImageClassificationModelOutput  # noqa: E402

from workflow.models import ScalableResNet18  # noqa: E402
from workflow.projectors import SparseJLProjector  # noqa: E402


def timed(fn, n_images: int) -> float:
    fn()  # warm-up (allocations, lazy init)
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) / n_images * 1000


def floor(model, x, y, bs):
    def run():
        for s in range(0, len(x), bs):
            model.zero_grad()
            F.cross_entropy(model(x[s:s + bs]), y[s:s + bs]).backward()
    return timed(run, len(x))


def ours(model, x, y, bs, proj_dim):
    grad_dim = sum(p.numel() for p in model.parameters())
    gc = FunctionalGradientComputer(model, ImageClassificationModelOutput(), grad_dim, torch.float32, "cpu")
    proj = SparseJLProjector(grad_dim, proj_dim, 0)

    def run():
        for s in range(0, len(x), bs):
            proj.project(gc.compute_per_sample_grad((x[s:s + bs], y[s:s + bs])), 0)
            gc.compute_loss_grad((x[s:s + bs], y[s:s + bs]))
    return timed(run, len(x))


def stock(model, x, y, bs, proj_dim):
    with tempfile.TemporaryDirectory() as d:
        traker = TRAKer(model=model, task="image_classification", train_set_size=2 * len(x), save_dir=d,
                        device="cpu", proj_dim=proj_dim, use_half_precision=False, logging_level=40)
        traker.load_checkpoint(model.state_dict(), model_id=0)  # warm-up + timed pass: 2 x len(x) samples

        def run():
            for s in range(0, len(x), bs):
                traker.featurize(batch=(x[s:s + bs], y[s:s + bs]), num_samples=len(y[s:s + bs]))
        return timed(run, len(x))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write the rows here as JSON")
    ap.add_argument("--images", type=int, default=128, help="images per measurement (floor, ours)")
    ap.add_argument("--stock-images", type=int, default=32, help="images per stock measurement")
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--proj-dims", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--batch-size", type=int, default=32)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"{'width':>5} {'proj':>5} {'method':>7} {'ms/img':>9} {'x floor':>8} {'vs stock':>9}")
    for width in a.widths:
        model = ScalableResNet18(10, width=width, image_size=32).eval()
        x = torch.rand(a.images, 3, 32, 32)
        y = torch.randint(0, 10, (a.images,))
        base = floor(model, x, y, a.batch_size)
        for proj_dim in a.proj_dims:
            ms = {"floor": base,
                  "stock": stock(model, x[:a.stock_images], y[:a.stock_images], a.batch_size, proj_dim),
                  "sparse": ours(model, x, y, a.batch_size, proj_dim)}
            for method, v in ms.items():
                row = {"width": width, "proj_dim": proj_dim, "method": method, "ms_per_image": round(v, 3),
                       "ratio_to_floor": round(v / base, 2), "speedup_vs_stock": round(ms["stock"] / v, 2)}
                rows.append(row)
                print(f"{width:5d} {proj_dim:5d} {method:>7} {v:9.2f} {row['ratio_to_floor']:8.2f} "
                      f"{row['speedup_vs_stock']:9.2f}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

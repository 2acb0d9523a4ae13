"""Projected per-example gradients of the training margin per model family: the factored
projector (hooks, plus a vmap pass for what they cannot see) against one vmap pass for
every parameter (``sparse``), timed alternately in one run; the ratio decides
``trak.projector: auto`` (``projection.factory.resolve``).

    .venv/bin/python bench/zoo_projectors.py [--threads 1] [--batch 32] [--repeats 5]

Prints, per family, ms per image of each path and factored / sparse.
"""
from __future__ import annotations

import argparse
import time

import torch

from workflow.attribution.features import margin
from workflow.attribution.projection import factory
from workflow.model.zoo import build

FAMILIES = {
    "resnet18 width 16": {"arch": "resnet18", "width": 16},
    "timm ViT (6 blocks, 64 wide, patch 4)": {"arch": "timm:vit_tiny_patch16_224", "kwargs": {
        "img_size": 32, "patch_size": 4, "depth": 6, "embed_dim": 64, "num_heads": 4, "mlp_ratio": 2.0}},
    "torchvision MobileNetV3-small": {"arch": "torchvision:mobilenet_v3_small", "kwargs": {}},
    "torchvision ShuffleNetV2 x0.5": {"arch": "torchvision:shufflenet_v2_x0_5", "kwargs": {}},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(args.batch, 3, 32, 32, generator=g), torch.randint(0, 10, (args.batch,), generator=g)
    fn = lambda m, xb, yb: margin(m(xb), yb)  # noqa: E731
    print(f"{'family':40s} {'factored ms/img':>16s} {'sparse ms/img':>14s} {'factored/sparse':>16s} auto")
    for name, spec in FAMILIES.items():
        torch.manual_seed(0)
        model = build({**spec, "num_classes": 10, "image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}).eval()
        paths = {kind: factory.make(kind, model, 256, 0, "cpu") for kind in ("factored", "sparse")}
        times = {kind: [] for kind in paths}
        for kind, p in paths.items():     # warm-up
            p(model, fn, x, y, model_id=0)
        for _ in range(args.repeats):     # alternating, so drift hits both alike
            for kind, p in paths.items():
                t = time.perf_counter()
                p(model, fn, x, y, model_id=0)
                times[kind].append(time.perf_counter() - t)
        ms = {k: 1000 * sorted(v)[len(v) // 2] / args.batch for k, v in times.items()}
        print(f"{name:40s} {ms['factored']:16.2f} {ms['sparse']:14.2f} {ms['factored'] / ms['sparse']:16.2f} "
              f"{factory.resolve('auto', model, 'cpu')}")


if __name__ == "__main__":
    main()

"""Where a CPU training step's time goes, against the bare forward + backward + step floor,
all in one run on the same batches (full-width ResNet-18 at 224 px by default).

    .venv/bin/python bench/train_step.py [--threads 2] [--batch 32] [--steps 4] [--width 64] [--size 224]

Rows (ms per step, best of --steps after one warm-up step, and the ratio to the floor):
  floor_cl      bench/scale.py's floor: uint8 batch -> to_input (keeps NHWC strides:
                channels_last), no augmentation
  floor_nchw    the same batch made NCHW-contiguous first
  train_path    what train_member does per step: to_input, the batched shift/flip
                augmentation, cross-entropy with label smoothing, SGD with Nesterov and
                weight decay, the scheduler step (its output memory format: see below)
  augment_only  the augmentation alone
  train_rrc     the train path with random-resized crops from --store px images (train.crop
                random_resized; the preset: 256 -> 224), NCHW (train.memory_format contiguous)
  train_rrc_cl  the same with channels_last batches (train.memory_format
                channels_last, as the preset sets it)
  rrc_only      the random-resized crop alone
  first_step    the first step of a fresh model (warm-up), train path; an epoch of N
                steps pays it once
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from workflow.model.resnet import to_input
from workflow.model.zoo import build
from workflow.model.train import augment, random_resized


def best_ms(step, steps: int) -> float:
    step()
    best = float("inf")
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t0)
    return 1000 * best


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--shift", type=int, default=16)
    ap.add_argument("--store", type=int, default=256)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b, s = args.batch, args.size
    model = build({"arch": "resnet18", "num_classes": 10, "width": args.width, "image_size": s,
                   "mean": [0.5] * 3, "std": [0.25] * 3}).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=10 ** 6)
    xb = torch.randint(0, 255, (b, s, s, 3), dtype=torch.uint8)
    y = torch.randint(0, 10, (b,))
    ox, oy = torch.randint(0, 2 * args.shift + 1, (b,)), torch.randint(0, 2 * args.shift + 1, (b,))
    flip = torch.rand(b) < 0.5

    def fit(x, smoothing=0.0, scheduler=False):
        loss = F.cross_entropy(model(x), y, label_smoothing=smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if scheduler:
            sched.step()

    xs = torch.randint(0, 255, (b, args.store, args.store, 3), dtype=torch.uint8)
    boxes = torch.rand((4, b), generator=torch.Generator().manual_seed(0))

    def rrc():
        return augment(random_resized(to_input(xs), boxes, s, (0.08, 1.0)), ox, oy, flip, 0)

    t0 = time.perf_counter()
    fit(augment(to_input(xb), ox, oy, flip, args.shift), 0.1, True)
    first = 1000 * (time.perf_counter() - t0)
    x_cl = to_input(xb)
    x_nchw = x_cl.contiguous()
    aug = augment(to_input(xb), ox, oy, flip, args.shift)
    rows = {
        "floor_cl": best_ms(lambda: fit(to_input(xb)), args.steps),
        "floor_nchw": best_ms(lambda: fit(to_input(xb).contiguous()), args.steps),
        "train_path": best_ms(lambda: fit(augment(to_input(xb), ox, oy, flip, args.shift), 0.1, True), args.steps),
        "augment_only": best_ms(lambda: augment(to_input(xb), ox, oy, flip, args.shift), args.steps),
        "train_rrc": best_ms(lambda: fit(rrc(), 0.1, True), args.steps),
        "train_rrc_cl": best_ms(lambda: fit(rrc().contiguous(memory_format=torch.channels_last), 0.1, True),
                                args.steps),
        "rrc_only": best_ms(rrc, args.steps),
        "first_step": first,
    }
    print(f"input strides: to_input {tuple(x_cl.stride())} (channels_last: "
          f"{x_cl.is_contiguous(memory_format=torch.channels_last)}), augment output channels_last: "
          f"{aug.is_contiguous(memory_format=torch.channels_last)}, nchw {x_nchw.is_contiguous()}")
    floor = rows["floor_cl"]
    for name, ms in rows.items():
        print(f"{name:<13} {ms:9.1f} ms/step  {b * 1000 / ms:7.1f} img/s  {ms / floor:5.2f}x floor_cl")


if __name__ == "__main__":
    main()

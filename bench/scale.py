"""Does any job's memory grow with the training set? Peak RSS per stage at n and 4n.

Generates an ImageFolder tree of 256 px JPEGs at two sizes (n and 4n training images,
the same 192 val images),
stored at 256 px and cropped to 224 (random-resized crops in training) like
config/imagenet10p.yaml (full-width ResNet-18, ImageNet stem), and
runs the workflow's own jobs on each: the exact commands Snakemake plans for the base
ensemble's TRAK enrichment and one top-k set (`snakemake -n -p`), one at a time, each
measured with wait4 (peak RSS of the job and any worker it waited for). Every job gets a
small memory request (--mem-mb from `resources`), so on the CPU the trainer reads its
batches from the file, as a preset job does when the split exceeds a quarter of its
memory (with --device cuda the split fits the GPU and is held there, as on an 80 GB GPU).

Prints, per stage, the peak RSS at both sizes and their ratio; `grows_with_n` is true
only for jobs whose own outputs grow with n (TRAK features and scores, ablation index
lists). For training: the job's second epoch in img/s (steady state; the first pays the
warm-up) against a bare forward+backward+step floor on batches of the same shape and
layout (channels_last on CUDA, NCHW on the CPU as the trainer), timed with the same threads in a fresh process right after the job.

    .venv/bin/python bench/scale.py [--n 128] [--threads 2] [--device cpu|cuda] [--json scale.json]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
CLASSES = 8
GROWS_WITH_N = {"featurize", "gather", "score", "ablate"}   # their outputs are [n, k], [T, n] or index lists
IMAGE_MB_PER_1K = 256 * 256 * 3 * 1000 / 2 ** 20           # 187.5 MB: what holding 1,000 stored images costs
# The val split is the same at both sizes, so only the training set grows. It once grew as
# n // 8: the probe sets (drawn from it) and the TRAK target count grew with it, and the
# score job's per-example gradient batch (~80 MB per target at 224 px) showed as a 1.3x
# "growth" at 384 vs 1536 images that had nothing to do with the training set.
N_VAL = CLASSES * 24        # 48 images of the concept's 2 classes: a full 64-image probe set


def make_tree(root: Path, n_train: int, seed: int = 0) -> None:
    """Smooth random 256 px JPEGs (so decoding and resizing cost what photos cost)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", N_VAL)):
        for i in range(n):
            c = i % CLASSES
            d = root / split / f"class{c:02d}"
            d.mkdir(parents=True, exist_ok=True)
            low = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
            im = Image.fromarray(low).resize((256, 256), Image.BICUBIC)
            im.save(d / f"{i:06d}.jpg", quality=90)


def config(root: Path, threads: int, device: str) -> dict:
    return {
        "experiment": "scale", "seed": 0,
        "dataset": {"name": "imagefolder", "root": str(root), "image_size": 224, "store_size": 256,
                    "subset_fraction": 1.0},
        "concepts": [{"name": "first", "kind": "classes", "classes": [0, 1]}],
        "probe_set": {"size": 64, "heldout_fraction": 0.3},
        "model": {"arch": "resnet18", "width": 64},
        "ensemble": {"size": 1},
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.1, "checkpoint_every": 0, "device": device,
                  "crop": "random_resized", "memory_format": "channels_last"},
        "layers": ["layer3", "layer4"],
        "activations": {"batch_size": 32, "device": device},
        "probes": {"Cs": [1.0], "path_points": 4},
        "trak": {"proj_dim": 256, "projector": "auto", "device": device, "shards": 1, "batch_size": 32,
                 "checkpoints": ["final"], "max_targets": 16, "lambda_reg": 10.0},
        "ablation": {"fractions": [0.1], "controls": []},
        "threads": {"data": threads, "train": threads, "activations": threads, "probes": threads,
                    "trak": threads},
        "resources": {"default": {"mem_mb": 64, "runtime": 60}},
    }


def planned_commands(wd: Path, cfg_path: Path, targets: list, threads: int) -> list:
    """The job commands Snakemake plans. ``--cores threads``: Snakemake caps each job's
    ``--threads`` at the cores it is given (with 1, the trainer ran on 1 thread against a
    2-thread floor: the 1.75x reported before)."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile",
                           str(cfg_path), "-n", "-p", "--cores", str(threads), *targets], cwd=wd, capture_output=True,
                          text=True, check=True)
    cmds = [line.split("Shell command:", 1)[-1].strip() for line in proc.stdout.splitlines()]
    return [c for c in cmds if c.startswith("python -m workflow ")]


def run_measured(cmd: str, wd: Path) -> tuple:
    """(peak RSS MB of the job and its waited-for workers, wall s)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    t0 = time.time()
    p = subprocess.Popen(shlex.split(cmd), cwd=wd, env=env)
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise RuntimeError(f"job failed ({p.returncode}): {cmd[:200]}")
    return usage.ru_maxrss / 1024.0, time.time() - t0


def train_floor(threads: int, device: str, n: int, batch: int = 32) -> float:
    """img/s of a bare forward + backward + SGD step of the same model on fixed batches,
    in the layout the training job uses (``layout.use_channels_last``: channels_last on CUDA
    only), after one warm-up step."""
    import torch
    import torch.nn.functional as F

    from workflow.model.layout import use_channels_last
    from workflow.model.resnet import to_input
    from workflow.model.zoo import build

    torch.set_num_threads(threads)
    dev = torch.device(device)
    model = build({"arch": "resnet18", "num_classes": CLASSES, "width": 64, "image_size": 224,
                   "mean": [0.5] * 3, "std": [0.25] * 3}).to(dev).train()
    fmt = torch.channels_last if use_channels_last("channels_last", dev.type) else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randint(0, 255, (batch, 224, 224, 3), dtype=torch.uint8)
    y = torch.randint(0, CLASSES, (batch,))
    xd, yd = to_input(x).to(dev).contiguous(memory_format=fmt), y.to(dev)
    steps = max(2, n // batch)
    for i in range(steps + 1):
        if i == 1:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.time()
        loss = F.cross_entropy(model(xd), yd)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.time() - t0)


def floor_in_subprocess(threads: int, device: str, n: int) -> float:
    """train_floor in a fresh process: this one stays small, since a forked job's peak RSS
    starts from its parent's (Linux copies the high-water mark at fork)."""
    out = subprocess.run([sys.executable, __file__, "--floor", str(n), "--threads", str(threads), "--device", device],
                         capture_output=True, text=True, check=True).stdout
    return float(out.split()[-1])


def measure(n: int, threads: int, device: str, base: Path) -> dict:
    wd = base / f"n{n}"
    make_tree(wd / "tree", n)
    cfg_path = wd / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(config(wd / "tree", threads, device)))
    res = "results/scale"
    targets = [f"{res}/base/trak/enrichment.json", f"{res}/ablation/top-first.h5"]
    rows = {}
    for cmd in planned_commands(wd, cfg_path, targets, threads):
        stage = cmd.split()[3]
        rss, wall = run_measured(cmd, wd)
        r = rows.setdefault(stage, {"peak_rss_mb": 0.0, "wall_s": 0.0, "jobs": 0})
        r["peak_rss_mb"] = max(r["peak_rss_mb"], rss)
        r["wall_s"] += wall
        r["jobs"] += 1
        print(f"  n={n} {stage:<13} peak {rss:8.1f} MB  {wall:6.1f} s", flush=True)
        if stage == "train":   # the floor right after the job, so both see the machine in the same state
            log = (wd / "logs" / "scale" / "base" / "train" / "m0.log").read_text()
            n_train = int(re.search(r"member 0: (\d+) train images", log).group(1))
            epoch_s = float(re.search(r"epoch 2/2 loss \S+ \(([\d.]+)s\)", log).group(1))
            r["img_per_s"] = n_train / epoch_s       # the second epoch: steady state, like the floor
            r["floor_img_per_s"] = floor_in_subprocess(threads, device, n_train)
    rows["featurize"]["ms_per_img"] = 1000 * rows["featurize"]["wall_s"] / n_train
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=128, help="the small training set; the large one is 4n")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", type=Path, help="work here and keep it (default: a temporary folder)")
    ap.add_argument("--floor", type=int, metavar="N", help=argparse.SUPPRESS)   # print the floor's img/s over N images
    args = ap.parse_args(argv)
    if args.floor:
        print(train_floor(args.threads, args.device, args.floor))
        return
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        small, large = (measure(n, args.threads, args.device, base) for n in (args.n, 4 * args.n))
    floor = large["train"]["floor_img_per_s"]
    out = []
    print(f"{'stage':<13} {'n':>5} {'4n':>5} {'peak MB (n)':>12} {'peak MB (4n)':>13} {'ratio':>6} "
          f"{'MB/1k img':>9} grows_with_n   (holding the images: {IMAGE_MB_PER_1K:.0f} MB/1k img)")
    for stage in small:
        a, b = small[stage], large[stage]
        growth = (b["peak_rss_mb"] - a["peak_rss_mb"]) / (3 * args.n / 1000)
        row = {"stage": stage, "n_small": args.n, "n_large": 4 * args.n, "peak_rss_mb_small": round(a["peak_rss_mb"], 1),
               "peak_rss_mb_large": round(b["peak_rss_mb"], 1),
               "rss_ratio": round(b["peak_rss_mb"] / a["peak_rss_mb"], 3), "grows_with_n": stage in GROWS_WITH_N,
               # a job holding the split would grow by IMAGE_MB_PER_1K per 1,000 images
               "mb_per_1k_images": round(growth, 1)}
        if stage == "train":
            row.update(img_per_s=round(b["img_per_s"], 2), floor_img_per_s=round(floor, 2),
                       ratio_to_floor=round(floor / b["img_per_s"], 3))
        if stage == "featurize":
            row["ms_per_img"] = round(b["ms_per_img"], 1)
        out.append(row)
        print(f"{stage:<13} {args.n:5d} {4 * args.n:5d} {row['peak_rss_mb_small']:12.1f} "
              f"{row['peak_rss_mb_large']:13.1f} {row['rss_ratio']:6.2f} {row['mb_per_1k_images']:9.1f} "
              f"{row['grows_with_n']}"
              + (f"   train {row['img_per_s']:.1f} img/s vs floor {floor:.1f}: {row['ratio_to_floor']:.2f}x"
                 if stage == "train" else "")
              + (f"   {row['ms_per_img']:.1f} ms/img (job wall time)" if stage == "featurize" else ""))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

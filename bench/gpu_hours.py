"""Projected GPU-hours of the ImageNet-10% preset, stage by stage, for this code and an earlier one.

A projection, not a measurement: no GPU run of the preset exists. What is counted and
what is assumed are kept apart.

Counted, from the code: the jobs of each rule (`snakemake -n` of each version's
Snakefile and preset on an empty ImageFolder tree, as tests/test_slurm.py builds it) and
the work in them, from the preset's keys (members, epochs, kept images per retrained
twin, checkpoints, shards, probe-set sizes, TRAK targets and negatives, proj_dim).
Measured on this machine: its one-thread float64 matmul rate, times the earlier score
job's threads (those jobs multiplied on the CPU while holding a GPU).

Assumed (every one an option; the defaults and where they come from):
  --floor-img-s 5500   a well-fed full-width ResNet-18 at 224 px, forward + backward + step,
                       on one A100: FFCV's 16-epoch ResNet-18 (github.com/libffcv/ffcv-imagenet,
                       rn18_16_epochs: 1,281,167 images x 16 epochs in 35.0 min on 1 x A100 at
                       160-192 px) is 9,761 img/s; scaled to 224 px by pixel count (12 epochs at
                       160, 4 at 192: 0.566 of 224^2's pixels) that is about 5,500.
  --train-ratio-now    1.11: this code's training job against its floor (bench/scale.py --n 384, CPU, 224 px; 0.92-1.12 over five runs).
  --train-img-s-before 1000: the issue's traced estimate for the earlier loop (800-1,200 on an
                       A100/H100: CPU float conversion and per-image augmentation, pageable copies).
  --featurize-ratio-now 3.2: per-example projected gradients against the floor
                       (bench/featurize.py, CPU, width 64, proj_dim 2048, factored).
  --featurize-ratio-before 13.7: the same ratio measured on an H100 with the earlier
                       atomic (index_add) hash at width 64.
  --startup-s 60       per GPU job: CUDA context, imports, model and file opening (30-90 s).
  --gpu-f64-tflops 10  achieved float64 matmul rate of the GPU (A100 peak: 19.5).
  --scale-json F       bench/scale.py --device cuda --json output: its measured training
                       img/s and featurize ms/img replace the two "now" assumptions.

Forward-only passes (evaluation, activations) are costed at a third of a training step.

    .venv/bin/python bench/gpu_hours.py [--before REV] [--n-train 128117] [--json gpu_hours.json]
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
BEFORE = "28e1cef"   # the last version before the scale work (issue "Run the reference experiment for real")
GPU_STAGES = ("train", "activations", "featurize", "score")


def fake_tree(tmp: Path, preset: Path) -> Path:
    """An empty ImageFolder tree and concept folders, and ``preset`` pointed at them."""
    for d in ("imagenet/train/n01440764", "imagenet/val/n01440764", "hilo/positives", "hilo/negatives"):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load(preset.read_text())
    cfg["dataset"]["root"] = str(tmp / "imagenet")
    for c in cfg["concepts"]:
        if c.get("kind") == "folders":
            c.update(positives=str(tmp / "hilo/positives"), negatives=str(tmp / "hilo/negatives"))
    path = tmp / "preset.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def planned_jobs(snakefile: Path, preset: Path) -> tuple:
    """({rule: [wildcards dict per job]}, the preset as loaded) from a dry run."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = fake_tree(Path(tmp), preset)
        proc = subprocess.run([SNAKEMAKE, "-s", str(snakefile), "--configfile", str(cfg), "-n", "--cores", "8"],
                              cwd=tmp, capture_output=True, text=True, timeout=600)
        if proc.returncode:
            sys.exit(f"dry run of {snakefile} failed:\n{proc.stderr[-2000:]}")
        jobs = {}
        for block in re.split(r"\n(?=rule \w+:)", proc.stdout):
            m = re.match(r"rule (\w+):", block)
            if m:
                w = re.search(r"^\s+wildcards: (.*)$", block, re.M)
                pairs = dict(kv.split("=", 1) for kv in w.group(1).split(", ")) if w else {}
                jobs.setdefault(m.group(1), []).append(pairs)
        return jobs, yaml.safe_load(cfg.read_text())


def f64_gflops_per_thread() -> float:
    """This machine's float64 matmul rate on one thread (numpy's BLAS), best of 3."""
    from threadpoolctl import threadpool_limits

    a, b = np.random.default_rng(0).random((4096, 2048)), np.random.default_rng(1).random((2048, 600))
    best = float("inf")
    with threadpool_limits(1):
        for _ in range(3):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
    return 2 * 4096 * 2048 * 600 / best / 1e9


def project(jobs: dict, cfg: dict, rates: dict, n: int, n_test: int) -> dict:
    """{stage: (jobs, GPU-hours)} for one version's plan and rates."""
    epochs, members = cfg["train"]["epochs"], cfg["ensemble"]["size"]
    removed = max(cfg["ablation"]["fractions"]) if cfg["ablation"]["fractions"] else 0.0
    floor_s = 1.0 / rates["floor_img_s"]                  # GPU seconds per image, forward + backward + step
    train_s = 1.0 / rates["train_img_s"]
    out = {}
    img = sum(epochs * (n if j.get("condition", "base") == "base" else round(n * (1 - removed))) for j in jobs["train"])
    out["train"] = (len(jobs["train"]), (img * train_s + len(jobs["train"]) * (n_test * floor_s / 3 + rates["startup_s"])))
    probe_images = cfg["probe_set"]["size"] * len(cfg["concepts"])
    a = jobs.get("activations", [])
    out["activations"] = (len(a), len(a) * (probe_images * floor_s / 3 + rates["startup_s"]))
    ckpts = len(cfg["trak"]["checkpoints"])
    f = jobs["featurize"]
    out["featurize"] = (len(f), members * ckpts * n * floor_s * rates["featurize_ratio"] + len(f) * rates["startup_s"])
    # score: per model checkpoint, projected gradients of every (concept, layer) target and negative, and the
    # [n, k] x [k, 2T] products; earlier, one job per (concept, layer) re-read every checkpoint's features
    layers = len(cfg["layers"])
    heldout_positives = round(cfg["probe_set"]["size"] * cfg["probe_set"]["heldout_fraction"]) // 2   # balanced sets
    per_key = 2 * min(cfg["trak"]["max_targets"], heldout_positives)
    keys = len(cfg["concepts"]) * layers
    grads_s = members * ckpts * keys * per_key * floor_s * rates["featurize_ratio"]
    flops = members * ckpts * keys * 2.0 * n * cfg["trak"]["proj_dim"] * per_key
    product_s = flops / (rates["score_gflops"] * 1e9)
    s = jobs["score"]
    out["score"] = (len(s), grads_s + product_s + len(s) * rates["startup_s"])
    return {k: (j, sec / 3600) for k, (j, sec) in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default=BEFORE, help="the earlier version (a git revision)")
    ap.add_argument("--n-train", type=int, default=128117, help="ImageNet-10%%: a tenth of 1,281,167")
    ap.add_argument("--n-test", type=int, default=50000, help="ImageNet's validation set")
    ap.add_argument("--floor-img-s", type=float, default=5500.0)
    ap.add_argument("--train-ratio-now", type=float, default=1.11)
    ap.add_argument("--train-img-s-before", type=float, default=1000.0)
    ap.add_argument("--featurize-ratio-now", type=float, default=3.2)
    ap.add_argument("--featurize-ratio-before", type=float, default=13.7)
    ap.add_argument("--startup-s", type=float, default=60.0)
    ap.add_argument("--gpu-f64-tflops", type=float, default=10.0)
    ap.add_argument("--scale-json", type=Path, help="bench/scale.py --device cuda --json output")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    preset_now = REPO / "config" / "imagenet10p.yaml"
    jobs_now, cfg_now = planned_jobs(REPO / "Snakefile", preset_now)
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "before"
        proc = subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(old), args.before],
                              capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"--before {args.before}: cannot check it out ({proc.stderr.strip()}); a shallow clone lacks it")
        try:
            jobs_before, cfg_before = planned_jobs(old / "Snakefile", old / "config" / "imagenet10p.yaml")
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], capture_output=True)

    threads = int(cfg_before["threads"]["trak"])
    cpu = threads * f64_gflops_per_thread()   # the earlier score job's threads, scaled linearly
    train_now, feat_now, measured = args.floor_img_s / args.train_ratio_now, args.featurize_ratio_now, []
    if args.scale_json:
        rows = {r["stage"]: r for r in json.loads(args.scale_json.read_text())}
        train_now = rows["train"]["img_per_s"]
        feat_now = rows["featurize"]["ms_per_img"] / 1000 * args.floor_img_s   # ms/img over the floor's
        measured = ["train img/s", "featurize ms/img"]
    now = project(jobs_now, cfg_now, {"floor_img_s": args.floor_img_s, "train_img_s": train_now,
                                      "featurize_ratio": feat_now, "startup_s": args.startup_s,
                                      "score_gflops": args.gpu_f64_tflops * 1e3}, args.n_train, args.n_test)
    before = project(jobs_before, cfg_before, {"floor_img_s": args.floor_img_s, "train_img_s": args.train_img_s_before,
                                               "featurize_ratio": args.featurize_ratio_before,
                                               "startup_s": args.startup_s, "score_gflops": cpu},
                     args.n_train, args.n_test)
    print(f"ImageNet-10% preset, n_train {args.n_train}, n_test {args.n_test}; floor {args.floor_img_s:.0f} img/s; "
          f"now: train {train_now:.0f} img/s, featurize {feat_now:.2f}x floor, score products on the GPU at "
          f"{args.gpu_f64_tflops:.0f} TFLOP/s float64; before ({args.before}): train {args.train_img_s_before:.0f} "
          f"img/s, featurize {args.featurize_ratio_before:.1f}x floor, score products on {threads} CPU threads at "
          f"{cpu:.1f} GFLOP/s (this machine's one-thread rate x {threads}); {args.startup_s:.0f} s start-up per GPU job"
          + (f"; measured: {', '.join(measured)}" if measured else ""))
    print(f"{'stage':<12} {'jobs before':>11} {'jobs now':>9} {'GPU-h before':>13} {'GPU-h now':>10} {'ratio':>6} "
          f"{'min per job now':>16}")
    rows = []
    for st in GPU_STAGES:
        (jb, hb), (jn, hn) = before[st], now[st]
        rows.append({"stage": st, "jobs_before": jb, "jobs_now": jn, "gpu_h_before": round(hb, 2),
                     "gpu_h_now": round(hn, 2), "min_per_job_now": round(60 * hn / jn, 1)})
        print(f"{st:<12} {jb:>11} {jn:>9} {hb:>13.2f} {hn:>10.2f} {hb / hn:>5.1f}x {60 * hn / jn:>16.1f}")
    tb, tn = sum(v[1] for v in before.values()), sum(v[1] for v in now.values())
    print(f"{'total':<12} {sum(v[0] for v in before.values()):>11} {sum(v[0] for v in now.values()):>9} "
          f"{tb:>13.2f} {tn:>10.2f} {tb / tn:>5.1f}x")
    print(f"all jobs planned (CPU rules included): before {sum(map(len, jobs_before.values()))}, "
          f"now {sum(map(len, jobs_now.values()))}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "cpu_f64_gflops": cpu, "args": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}, indent=1))


if __name__ == "__main__":
    main()

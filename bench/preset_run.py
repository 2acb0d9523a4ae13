"""A short preset-shaped run: config/imagenet10p.yaml on a generated ImageFolder tree.

Full-width ResNet-18 at 224 px on JPEGs stored at 256 px (random-resized crops), both of
the preset's concepts (a class set and a folder pair), every stage once (train, activations,
probes, TRAK featurize/gather/score, ablate, retrain, validate, compare, report), with only
the counts shrunk. Prints, and writes as JSON, the wall time of the whole run and each
stage's own time summed over its jobs (from the "<stage> done in Xs" line of every job log).

    .venv/bin/python bench/preset_run.py --device cuda --images 4096 --json run.json   # a GPU
    .venv/bin/python bench/preset_run.py --device cpu --images 24                       # a dry run
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CLASSES = 8


def write_tree(root: Path, n_train: int, n_val: int, seed: int = 0) -> None:
    """CLASSES class folders of 256 x 240 noise JPEGs, and a folder concept (a grating over noise)."""
    rng = np.random.default_rng(seed)

    def jpeg(path: Path, stripes: bool = False) -> None:
        img = rng.integers(0, 255, (240, 256, 3), dtype=np.uint8)
        if stripes:
            img[:, ::4] = 255
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path, quality=85)

    for c in range(CLASSES):
        for split, n in (("train", n_train // CLASSES), ("val", n_val // CLASSES)):
            for i in range(n):
                jpeg(root / "imagenet" / split / f"n{c:08d}" / f"{i}.JPEG")
    for i in range(16):
        jpeg(root / "hilo" / "positives" / f"{i}.jpg", stripes=True)
        jpeg(root / "hilo" / "negatives" / f"{i}.jpg")


def preset_config(root: Path, device: str, gpu: bool) -> dict:
    cfg = yaml.safe_load((REPO / "config" / "imagenet10p.yaml").read_text())
    cfg["experiment"] = "preset_run"
    cfg["dataset"].update(root=str(root / "imagenet"), subset_fraction=1.0)
    for c in cfg["concepts"]:
        if c["kind"] == "classes":
            c["classes"] = [0, 1]
        else:
            c.update(positives=str(root / "hilo" / "positives"), negatives=str(root / "hilo" / "negatives"))
    cfg["probe_set"]["size"] = 32 if gpu else 8
    cfg["ensemble"]["size"] = 2
    cfg["train"].update(epochs=2, checkpoint_every=1, device=device, batch_size=256 if gpu else 4)
    cfg["activations"]["device"] = device
    cfg["probes"].update(max_iter=300, path_points=4)
    cfg["trak"].update(device=device, shards=2, max_targets=8, checkpoints=["final"],
                       proj_dim=2048 if gpu else 16, batch_size=64 if gpu else 4)
    cfg["ablation"].update(fractions=[0.08], concepts=["snakes"])
    cfg["lds"] = {"fractions": []}
    return cfg


def stage_times(logs: Path) -> dict:
    """{stage: seconds summed over its jobs} from the job logs' closing lines."""
    out = defaultdict(float)
    for p in logs.rglob("*.log"):
        for m in re.finditer(r"workflow: (\S+) done in ([0-9.]+)s", p.read_text(errors="replace")):
            out[m.group(1)] += float(m.group(2))
    return dict(sorted(out.items()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    ap.add_argument("--images", type=int, default=4096, help="training images (val: a quarter as many)")
    ap.add_argument("--cores", type=int, default=16)
    ap.add_argument("--workdir", type=Path, help="work here and keep it (default: a temporary folder)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    wd = a.workdir or Path(tempfile.mkdtemp(prefix="preset_run_"))
    wd.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    write_tree(wd, a.images, max(CLASSES * 2, a.images // 4))
    cfg = preset_config(wd, a.device, a.device == "cuda")
    (wd / "preset.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    generated = time.time() - t0
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--profile",
           str(REPO / "profiles" / "default"), "--configfile", str(wd / "preset.yaml"), "--cores", str(a.cores),
           "--resources", "gpu=1"]
    t1 = time.time()
    proc = subprocess.run(cmd, cwd=wd, capture_output=True, text=True)
    (wd / "snakemake.log").write_text(proc.stdout + proc.stderr)
    row = {"device": a.device, "images": a.images, "returncode": proc.returncode, "generate_s": round(generated, 1),
           "wall_s": round(time.time() - t1, 1), "stage_s": stage_times(wd / "logs" / "preset_run"),
           "workdir": str(wd)}
    print(json.dumps(row, indent=2))
    if a.json:
        a.json.write_text(json.dumps(row, indent=2))
    if proc.returncode:
        print((proc.stdout + proc.stderr)[-3000:], file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())

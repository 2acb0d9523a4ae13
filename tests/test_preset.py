"""The ImageNet-10% preset's own path, end to end on CPU: config/imagenet10p.yaml with only
its counts shrunk and its paths pointed at a generated ImageFolder tree of JPEGs.
Full-width ResNet-18 (width 64) at 224 px on images stored at 256 px (random-resized
crops), both of its concepts (a class set and a folder pair), every layer, sharded TRAK
features, its controls (random, bottom), validate and the report."""
import json
from pathlib import Path

import h5py
import numpy as np
import yaml
from PIL import Image

from conftest import REPO, completed, run_snakemake
from workflow import artifacts
from workflow.ablation import sets
from workflow.model import checkpoints

N_CLASSES, N_TRAIN, N_VAL = 4, 3, 3


def jpeg(path: Path, rng, stripes: bool = False) -> None:
    """A 256 x 240 JPEG (stored at 256 px, shorter side, centre-cropped); ``stripes``: a
    high-frequency grating over the noise, the folder concept's positives."""
    img = rng.integers(0, 255, (240, 256, 3), dtype=np.uint8)
    if stripes:
        img[:, ::4] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, quality=85)


def preset_on_tree(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for c in range(N_CLASSES):
        for split, n in (("train", N_TRAIN), ("val", N_VAL)):
            for i in range(n):
                jpeg(tmp_path / "imagenet" / split / f"n{c:08d}" / f"{i}.JPEG", rng)
    for i in range(6):
        jpeg(tmp_path / "hilo" / "positives" / f"{i}.jpg", rng, stripes=True)
        jpeg(tmp_path / "hilo" / "negatives" / f"{i}.jpg", rng)
    cfg = yaml.safe_load((REPO / "config" / "imagenet10p.yaml").read_text())
    cfg["dataset"].update(root=str(tmp_path / "imagenet"), subset_fraction=0.67)
    for c in cfg["concepts"]:
        if c["kind"] == "classes":
            c["classes"] = [0, 1]
        else:
            c.update(positives=str(tmp_path / "hilo" / "positives"), negatives=str(tmp_path / "hilo" / "negatives"))
    cfg["probe_set"]["size"] = 8
    cfg["ensemble"]["size"] = 2
    cfg["train"].update(epochs=2, batch_size=4, lr=0.02, checkpoint_every=1, device="cpu")   # 4 steps: see warmup_fraction
    cfg["activations"].update(batch_size=16, device="cpu")
    cfg["probes"].update(max_iter=300, path_points=4)
    # one checkpoint: each per-example gradient of the full-width model costs ~0.5 s on one
    # CPU thread (11.7M coordinates hashed 4 times); several checkpoints: tests/configs/tiny.yaml
    cfg["trak"].update(shards=2, proj_dim=16, batch_size=4, device="cpu", max_targets=1, checkpoints=["final"])
    cfg["ablation"].update(fractions=[0.25], concepts=["snakes"])   # top, bottom, random, matched of one concept
    cfg["threads"] = {k: 1 for k in cfg["threads"]}
    path = tmp_path / "preset.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_imagenet_preset_runs_end_to_end_on_a_tiny_tree(tmp_path):
    cfgfile = preset_on_tree(tmp_path)
    cfg = completed(yaml.safe_load(cfgfile.read_text()))
    run_snakemake(tmp_path, "--cores", "2", configfile=cfgfile, timeout=600)
    res = tmp_path / "results" / cfg["experiment"]
    info = artifacts.base_info(res / "data" / "base.h5")
    assert (info["image_size"], info["store_size"]) == (224, 256) and info["n_train"] == N_CLASSES * round(0.67 * N_TRAIN)
    model = checkpoints.load(res / "base" / "models" / "m0.h5")
    assert 11.0e6 < sum(p.numel() for p in model.parameters()) < 12.0e6       # the full-width ResNet-18
    assert artifacts.model_checkpoints(res / "base" / "models" / "m0.h5") == ["epoch_0001", "final"]
    concepts = [c["name"] for c in cfg["concepts"]]
    for c in concepts:
        for layer in cfg["layers"]:
            with h5py.File(res / "base" / "trak" / "scores" / c / f"{layer}.h5") as f:
                assert f["per_target"].shape == (1, info["n_train"])          # max_targets 1
                assert np.all(np.isfinite(f["per_target"][()]))
    designs = sets.conditions(cfg)
    assert {d["kind"] for d in designs.values()} == {"top", "bottom", "random", "matched"}   # no oracle
    assert {d["concept"] for d in designs.values()} == {"snakes", None}
    for name in designs:
        for m in range(cfg["ensemble"]["size"]):
            assert (res / name / "models" / f"m{m}.h5").is_file(), name
    verdicts = (res / "compare" / "verdicts.txt").read_text()
    assert all(c in verdicts for c in concepts)
    assert json.loads((res / "validate" / "snakes.json").read_text())
    assert (res / "validate" / "snakes.txt").read_text().startswith(("snakes: SUPPORTED", "snakes: NO EFFECT",
                                                                     "snakes: INCONCLUSIVE"))
    assert (res / "report" / "index.html").stat().st_size > 0

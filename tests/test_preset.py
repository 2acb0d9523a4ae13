"""The ImageNet-10% preset's own path, end to end on the CPU: config/imagenet10p.yaml with
only its sizes shrunk, on a generated ImageFolder tree. What stays the preset's: an
ImageFolder dataset with a per-class subset and a val split, 224 px images decoded from
JPEGs of other sizes, the full-width ResNet-18, a class concept and a folder concept,
random and bottom-k controls and no oracle, several checkpoints and featurize shards,
the per-rule resources (each job's --mem-mb) and from-scratch twins."""
import json

import h5py
import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO, run_snakemake

pytestmark = pytest.mark.e2e

CLASSES = ["n01000001", "n01000002", "n01000003", "n01000004"]


def jpeg(path, rng, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, quality=85)


def preset_on_tiny_tree(tmp_path) -> dict:
    """The preset pointed at a 4-class tree (5 train, 3 val images per class, of varying
    sizes around 256 px) and two concept folders; every count shrunk, nothing else."""
    rng = np.random.default_rng(0)
    for c in CLASSES:
        for i in range(5):
            jpeg(tmp_path / "imagenet" / "train" / c / f"{c}_{i}.JPEG", rng, (256 + 8 * i, 300 - 4 * i))
        for i in range(3):
            jpeg(tmp_path / "imagenet" / "val" / c / f"val_{c}_{i}.JPEG", rng, (240, 320))
    for side in ("positives", "negatives"):
        for i in range(6):
            jpeg(tmp_path / "hilo" / side / f"{side}_{i}.png", rng, (230, 230))
    cfg = yaml.safe_load((REPO / "config" / "imagenet10p.yaml").read_text())
    cfg["dataset"].update(root=str(tmp_path / "imagenet"), subset_fraction=0.8)      # 4 of 5 per class
    for concept in cfg["concepts"]:
        if concept["kind"] == "classes":
            concept["classes"] = [0, 1]                                                 # stands in for 52-68
        else:
            concept.update(positives=str(tmp_path / "hilo" / "positives"),
                           negatives=str(tmp_path / "hilo" / "negatives"))
    cfg["probe_set"].update(size=12)
    cfg["ensemble"]["size"] = 2
    cfg["train"].update(epochs=2, batch_size=8, checkpoint_every=1, device="cpu")
    cfg["activations"].update(batch_size=16, device="cpu")
    cfg["probes"].update(Cs=[1.0], path_points=4, max_iter=200)
    cfg["trak"].update(proj_dim=16, device="cpu", shards=2, batch_size=8, checkpoints=["epoch_0001", "final"],
                       max_targets=1)
    cfg["ablation"]["fractions"] = [0.25]
    cfg["threads"] = {k: 1 for k in cfg["threads"]}
    cfg["experiment"] = "preset"
    return cfg


def test_imagenet_preset_runs_end_to_end_on_a_tiny_tree(tmp_path):
    preset = yaml.safe_load((REPO / "config" / "imagenet10p.yaml").read_text())
    cfg = preset_on_tiny_tree(tmp_path)
    # what the test keeps of the preset
    assert cfg["model"] == preset["model"] and cfg["model"]["width"] == 64
    assert cfg["dataset"]["image_size"] == 224 and cfg["resources"] == preset["resources"]
    assert cfg["ablation"]["controls"] == preset["ablation"]["controls"] == ["random", "bottom"]
    assert [c["kind"] for c in cfg["concepts"]] == [c["kind"] for c in preset["concepts"]]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    run_snakemake(tmp_path, "--cores", "2", timeout=900)

    res = tmp_path / "results" / "preset"
    with h5py.File(res / "data" / "base.h5") as f:
        assert f["train/images"].shape == (16, 224, 224, 3) and f["test/images"].shape == (12, 224, 224, 3)
    with h5py.File(res / "base" / "models" / "m0.h5") as f:
        assert {"final", "epoch_0001"} <= set(f) and f.attrs["n_train"] == 16
        n_params = sum(v.size for v in f["final"].values())
    assert n_params > 11_000_000                                   # the full-width ResNet-18
    conditions = ["top-snakes", "bottom-snakes", "top-hilo", "bottom-hilo", "random"]
    for cond in conditions:
        with h5py.File(res / "ablation" / f"{cond}.h5") as f:
            assert len(f["removed"]) == 4 and len(f["keep"]) == 12
        assert (res / cond / "models" / "m1.h5").exists()
    assert not (res / "ablation" / "oracle-snakes.h5").exists()
    for concept in ("snakes", "hilo"):
        v = json.loads((res / "validate" / f"{concept}.json").read_text())
        assert isinstance(v["verdict"]["supported"], bool) and set(v["layers"][v["location"]]["conditions"]) == \
            set(conditions)
        for layer in cfg["layers"]:
            with h5py.File(res / "base" / "trak" / "scores" / concept / f"{layer}.h5") as f:
                assert f["per_target"].shape == (1, 16) and np.isfinite(f["per_target"][()]).all()
    verdicts = (res / "compare" / "verdicts.txt").read_text()
    assert all(f"{cond}:" in verdicts for cond in conditions)
    assert (res / "report" / "index.html").stat().st_size > 10000

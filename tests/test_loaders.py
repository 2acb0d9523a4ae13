"""Each dataset builder on a tiny fixture: synthetic, CIFAR-format files, an ImageFolder tree."""
import json
import pickle

import h5py
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import CIFAR_NAMES, REPO, completed, write_cifar

from workflow.config import ConfigError, resolve, schema
from workflow.data import build as data
from workflow.data.imagefolder import ImageDecodeError, load_image

def write_tree(root, classes=("apple", "bee", "cat"), n_train=10, n_val=3):
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for ci, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                arr = np.full((40 + i, 48, 3), 20 * ci + i, np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")
    for key in ("positives", "negatives"):
        d = root / "concept" / key
        d.mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(d / f"{i}.jpg")


def base_cfg(**dataset):
    return completed({"seed": 0, "dataset": {"image_size": 32, **dataset}})


def test_synthetic_base_and_probe_sets(tmp_path):
    cfg = base_cfg(name="synthetic", synthetic={"n_train": 50, "n_test": 20, "planted_fraction": 0.3})
    data.build_base(cfg, tmp_path / "base.h5")
    with h5py.File(tmp_path / "base.h5") as f:
        assert f["train/images"].shape == (50, 32, 32, 3) and f["test/labels"].shape == (20,)
        assert f["train/planted"].dtype == bool
        assert json.loads(f.attrs["config"]) == cfg
        versions = json.loads(f.attrs["versions"])
        assert versions["torch"] == torch.__version__.split("+")[0] or versions["torch"] == torch.__version__
        # the CPU kernels torch dispatched to: weights differ between AVX2 and AVX512
        assert versions["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    pcfg = {**cfg, "probe_set": {"size": 40, "heldout_fraction": 0.25}}
    for concept in ({"name": "curved", "kind": "classes", "classes": ["circle", 1]}, {"name": "hilo", "kind": "planted"}):
        out = tmp_path / f"probe_{concept['name']}.h5"
        data.build_probe_set(pcfg, concept, tmp_path / "base.h5", out)
        with h5py.File(out) as f:
            assert f["images"].shape == (40, 32, 32, 3)
            assert f["labels"][()].sum() == 20
            assert f["heldout"][()].sum() == 10
            assert f["train_concept_mask"].shape == (50,)
    with h5py.File(tmp_path / "base.h5") as f, h5py.File(tmp_path / "probe_curved.h5") as p:
        assert (p["train_concept_mask"][()] == np.isin(f["train/labels"][()], [0, 1])).all()


def test_cifar10_loader(tmp_path):
    write_cifar(tmp_path / "cifar")
    cfg = base_cfg(name="cifar10", root=str(tmp_path / "cifar"))
    data.build_base(cfg, tmp_path / "base.h5")
    with h5py.File(tmp_path / "base.h5") as f:
        assert f["train/images"].shape == (100, 32, 32, 3)
        assert f["test/images"].shape == (40, 32, 32, 3)
        assert json.loads(f.attrs["class_names"]) == CIFAR_NAMES
    # the pickled rows are channel-major: pixel (0,0) of image 0 is data[0][[0, 1024, 2048]]
    with open(tmp_path / "cifar" / "cifar-10-batches-py" / "data_batch_1", "rb") as fh:
        raw = pickle.load(fh)["data"][0]
    with h5py.File(tmp_path / "base.h5") as f:
        assert (f["train/images"][0, 0, 0] == raw[[0, 1024, 2048]]).all()
    pcfg = {**cfg, "probe_set": {"size": 16, "heldout_fraction": 0.25}}
    data.build_probe_set(pcfg, {"name": "vehicles", "kind": "classes", "classes": ["automobile", "truck"]},
                         tmp_path / "base.h5", tmp_path / "probe.h5")
    with h5py.File(tmp_path / "probe.h5") as f:
        assert f["labels"][()].sum() == 8 and len(f["labels"]) == 16


def test_cifar10_missing_file_is_named(tmp_path):
    write_cifar(tmp_path / "cifar")
    (tmp_path / "cifar" / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        data.load_base(base_cfg(name="cifar10", root=str(tmp_path / "cifar")))


def test_imagefolder_subset_is_stratified_and_seeded(tmp_path):
    write_tree(tmp_path / "tree")
    cfg = base_cfg(name="imagefolder", root=str(tmp_path / "tree"), subset_fraction=0.3, test_fraction=0.1)
    a = data.load_base(cfg)
    assert a["class_names"] == ["apple", "bee", "cat"]
    assert np.bincount(a["train"][1]).tolist() == [3, 3, 3]        # 30% of 10 per class
    assert np.bincount(a["test"][1]).tolist() == [3, 3, 3]         # the val/ folder
    assert a["train"][0].shape == (9, 32, 32, 3)
    b = data.load_base(cfg)
    assert a["train"][0].tobytes() == b["train"][0].tobytes()
    c = data.load_base({**cfg, "seed": 1})
    assert a["train"][0].tobytes() != c["train"][0].tobytes()


@pytest.mark.parametrize("workers", [1, 3])
def test_imagefolder_base_is_streamed_in_blocks_with_the_same_images_and_stats(tmp_path, workers):
    """base_data on an ImageFolder tree: decoded by a worker pool, written block by block,
    channel stats from exact integer sums; same images, labels and stats as in memory."""
    from workflow import artifacts
    from workflow.data import imagefolder

    write_tree(tmp_path / "tree", n_train=23)
    cfg = base_cfg(name="imagefolder", root=str(tmp_path / "tree"), subset_fraction=1.0, test_fraction=0.1)
    ref = data.load_base(cfg)
    x = ref["train"][0].reshape(-1, 3) / 255.0
    data.build_base(cfg, tmp_path / "base.h5", workers=workers)
    for split in ("train", "test"):
        got = artifacts.base_split(tmp_path / "base.h5", split)
        assert np.array_equal(got[0], ref[split][0]) and np.array_equal(got[1], ref[split][1])
    info = artifacts.base_info(tmp_path / "base.h5")
    assert np.allclose(info["pixel_mean"], x.mean(0), rtol=0, atol=1e-12)
    assert np.allclose(info["pixel_std"], x.std(0), rtol=0, atol=1e-12)
    paths = imagefolder.split_files(str(tmp_path / "tree"), 1.0, 0.1, np.random.default_rng(0))["train"][0]
    sizes = [len(b) for b in imagefolder.blocks(paths, 32, workers, block=5)]
    assert sizes == [5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 4]       # 69 images, in order, bounded blocks
    bad = tmp_path / "tree" / "train" / "bee" / "3.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(ImageDecodeError, match="3.png: cannot decode image"):
        data.build_base(cfg, tmp_path / "bad.h5", workers=workers)
    assert not (tmp_path / "bad.h5").exists()


def test_base_rows_in_any_order_with_repeats_and_a_grid_of_a_small_set(tmp_path):
    """base_split returns the rows asked for, in that order, repeats included (h5py itself
    reads only increasing indices); the top/bottom grid of a set smaller than 16 images
    draws each image in both halves."""
    from workflow import artifacts
    from workflow.attribution.report import grid_png

    cfg = base_cfg(name="synthetic", synthetic={"n_train": 7, "n_test": 4, "planted_fraction": 0.3})
    data.build_base(cfg, tmp_path / "base.h5")
    x, y = artifacts.base_split(tmp_path / "base.h5", "train")
    idx = [5, 1, 5, 0, 6, 1]
    xi, yi = artifacts.base_split(tmp_path / "base.h5", "train", idx)
    assert np.array_equal(xi, x[idx]) and np.array_equal(yi, y[idx])
    with h5py.File(tmp_path / "base.h5") as f:                  # runs, gaps, repeats, nothing
        for rows in ([0, 1, 2, 5, 6], [3], [1, 1, 4], [0, 2, 4, 6], list(range(7)), []):
            got = artifacts.read_rows(f["train/images"], np.asarray(rows, np.int64))
            assert got.shape == (len(rows), 32, 32, 3) and np.array_equal(got, x[rows])
    names = artifacts.base_info(tmp_path / "base.h5")["class_names"]
    grid_png(tmp_path / "base.h5", names, np.linspace(1, -1, 7), tmp_path / "grid.png", "seven images")
    assert (tmp_path / "grid.png").stat().st_size > 5000


def test_imagefolder_stored_larger_than_the_crop(tmp_path):
    """dataset.store_size: the train split is stored at store_size; the test split and the
    folder concept's images are the centre image_size view of the same resize, which is
    also what every stage but training reads of a stored training image; training runs in
    both crop modes on it."""
    from workflow import artifacts
    from workflow.data.imagefolder import load_image
    from workflow.model import train
    from workflow.model.resnet import to_input

    write_tree(tmp_path / "tree", n_train=6, n_val=2)
    d = {"name": "imagefolder", "root": str(tmp_path / "tree"), "subset_fraction": 1.0, "store_size": 40}
    cfg = base_cfg(**d)
    data.build_base(cfg, tmp_path / "base.h5")
    info = artifacts.base_info(tmp_path / "base.h5")
    assert (info["image_size"], info["store_size"]) == (32, 40)
    x_train, _ = artifacts.base_split(tmp_path / "base.h5", "train")
    x_test, _ = artifacts.base_split(tmp_path / "base.h5", "test")
    assert x_train.shape[1:] == (40, 40, 3) and x_test.shape[1:] == (32, 32, 3)
    val0 = sorted((tmp_path / "tree" / "val" / "apple").iterdir())[0]
    assert np.array_equal(x_test[0], load_image(val0, 40)[4:36, 4:36])
    train0 = sorted((tmp_path / "tree" / "train" / "apple").iterdir())[0]
    assert np.array_equal(to_input(x_train[:1], 32)[0], to_input(np.array(load_image(train0, 40)[None, 4:36, 4:36]))[0])
    concept = {"name": "c", "kind": "folders", "positives": str(tmp_path / "tree" / "concept" / "positives"),
               "negatives": str(tmp_path / "tree" / "concept" / "negatives")}
    data.build_probe_set(completed({**cfg, "probe_set": {"size": 8}}), concept, tmp_path / "base.h5",
                         tmp_path / "probe.h5")
    with h5py.File(tmp_path / "probe.h5") as f:
        assert f["images"].shape[1:] == (32, 32, 3)
    for crop in ("shift", "random_resized"):
        tcfg = completed({"seed": 0, "model": {"width": 2},
                          "train": {"epochs": 1, "batch_size": 8, "device": "cpu", "crop": crop}})
        metrics = train.train_member(tmp_path / "base.h5", tmp_path / f"{crop}.h5", 0, tcfg)
        assert 0.0 <= metrics["test_acc"] <= 1.0
    with pytest.raises(ConfigError, match="store_size: 24 is smaller than dataset.image_size 32"):
        resolve({"experiment": "x", "dataset": {**d, "store_size": 24, "image_size": 32}, "concepts": [concept]})
    with pytest.raises(ConfigError, match="dataset.store_size: only for imagefolder"):
        resolve({"experiment": "x", "dataset": {"name": "synthetic", "store_size": 40},
                 "concepts": [{"name": "h", "kind": "planted"}]})


def test_imagefolder_folder_concept(tmp_path):
    write_tree(tmp_path / "tree")
    cfg = base_cfg(name="imagefolder", root=str(tmp_path / "tree"), subset_fraction=1.0, test_fraction=0.1)
    data.build_base(cfg, tmp_path / "base.h5")
    concept = {"name": "texture", "kind": "folders", "positives": str(tmp_path / "tree/concept/positives"),
               "negatives": str(tmp_path / "tree/concept/negatives")}
    data.build_probe_set({**cfg, "probe_set": {"size": 12, "heldout_fraction": 0.5}}, concept,
                         tmp_path / "base.h5", tmp_path / "probe.h5")
    with h5py.File(tmp_path / "probe.h5") as f:
        assert f["images"].shape == (12, 32, 32, 3)
        assert f["labels"][()].tolist().count(1) == 6
        assert f["heldout"][()].sum() == 6
        assert "train_concept_mask" not in f


def test_unknown_class_name_is_named():
    with pytest.raises(ValueError, match="'dragon'"):
        data.resolve_classes(["dragon"], ["cat", "dog"])


MINIMAL = {"experiment": "x", "dataset": {"name": "synthetic"}, "concepts": [{"name": "a", "kind": "planted"}]}


def test_config_check_names_the_key(tmp_path):
    resolve(MINIMAL)
    with pytest.raises(ConfigError, match=r"dataset\.widht: unknown key"):
        resolve({**MINIMAL, "dataset": {"name": "synthetic", "widht": 3}})
    with pytest.raises(ConfigError, match=r"ensemble\.size: 'three' is not of type 'integer'"):
        resolve({**MINIMAL, "ensemble": {"size": "three"}})
    with pytest.raises(ConfigError, match=r"dataset\.root: directory not found: /nonexistent"):
        resolve({**MINIMAL, "dataset": {"name": "imagefolder", "root": "/nonexistent"}})
    with pytest.raises(ConfigError, match=r"concepts\.0 \(a\)\.kind: 'planted' needs"):
        resolve({**MINIMAL, "dataset": {"name": "cifar10", "root": str(tmp_path)}})


def schema_defaults(node, root):
    """Every default the schema states, as a nested dict (read straight from the YAML)."""
    node = root["$defs"][node["$ref"].rsplit("/", 1)[1]] if "$ref" in node and "default" not in node else node
    out = {}
    for key, sub in node.get("properties", {}).items():
        if "default" in sub or "default" in root["$defs"].get(sub.get("$ref", "#/$defs/-").rsplit("/", 1)[1], {}):
            d = sub.get("default", root["$defs"].get(sub.get("$ref", "").rsplit("/", 1)[-1], {}).get("default"))
            inner = schema_defaults(sub if "properties" in sub else {}, root)
            out[key] = {**inner, **d} if isinstance(d, dict) else d
    return out


def test_a_minimal_config_gets_exactly_the_schema_defaults():
    got = resolve(MINIMAL)
    expected = {**schema_defaults(schema(), schema()), **MINIMAL,
                "dataset": {**schema_defaults(schema()["properties"]["dataset"], schema()), "name": "synthetic"},
                "layers": ["stem", "layer1", "layer2", "layer3", "layer4"]}   # resnet18's, filled in by resolve
    assert got == expected
    assert got["trak"]["lambda_reg"] == 0.0 and got["model"]["width"] == 64   # not the demo's 0.1 and 16
    assert got["trak"]["checkpoints"] == ["final"] and got["resources"]["default"] == {"mem_mb": 4000, "runtime": 60}
    demo = yaml.safe_load((REPO / "config.yaml").read_text())
    assert demo["trak"]["lambda_reg"] != got["trak"]["lambda_reg"]  # the check has teeth


def test_a_minimal_config_with_fewer_epochs_needs_no_unwritten_checkpoint():
    resolve({**MINIMAL, "train": {"epochs": 4}})   # the demo's trak.checkpoints: epoch_0006 must not leak


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_broken_images_are_named(tmp_path, damage):
    path = tmp_path / "img.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=95)
    raw = path.read_bytes()
    path.write_bytes(b"not an image at all" if damage == "garbage" else raw[: len(raw) // 2])
    with pytest.raises(ImageDecodeError, match=f"{path}: cannot decode image"):
        load_image(path, 32)


@pytest.mark.parametrize("kind", ["synthetic", "cifar10", "imagefolder"])
def test_data_stages_read_only_keys_of_the_dataset_slice(tmp_path, kind):
    """The data stages get dataset_slice's keys and nothing else (rules/common.smk): each
    dataset kind builds its base file and a probe set from the slice alone, so no stage can
    read a key the slice drops (cifar10 once read ``download``, which the slice dropped)."""
    from workflow.config import dataset_slice

    if kind == "cifar10":
        write_cifar(tmp_path / "cifar")
        dataset = {"name": "cifar10", "root": str(tmp_path / "cifar")}
        concept = {"name": "vehicles", "kind": "classes", "classes": ["automobile", "truck"]}
    elif kind == "imagefolder":
        write_tree(tmp_path / "tree")
        dataset = {"name": "imagefolder", "root": str(tmp_path / "tree")}
        concept = {"name": "thing", "kind": "folders", "positives": str(tmp_path / "tree" / "concept" / "positives"),
                   "negatives": str(tmp_path / "tree" / "concept" / "negatives")}
    else:
        dataset = {"name": "synthetic", "synthetic": {"n_train": 40, "n_test": 20}}
        concept = {"name": "hilo", "kind": "planted"}
    full = resolve({"experiment": "x", "dataset": dataset, "concepts": [concept]})
    sliced = {"seed": full["seed"], "dataset": dataset_slice(full)}
    assert set(sliced["dataset"]) < set(full["dataset"])            # the slice does drop keys
    data.build_base(sliced, tmp_path / "base.h5")
    data.build_probe_set({**sliced, "probe_set": {"size": 12, "heldout_fraction": 0.25}}, concept,
                         tmp_path / "base.h5", tmp_path / "probe.h5")
    with h5py.File(tmp_path / "probe.h5") as f:
        assert len(f["labels"]) == 12
    if kind == "cifar10":   # download: true reaches the stage; false is the slice's absence, read as false
        assert "download" not in sliced["dataset"]
        on = resolve({"experiment": "x", "dataset": {**dataset, "download": True}, "concepts": [concept]})
        assert dataset_slice(on)["download"] is True

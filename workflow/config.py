"""Config checks that run before any job: JSON schema plus paths and cross-key rules.

Errors are one line naming the key (``dataset.root``) or the file.
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml


class ConfigError(ValueError):
    pass


def _where(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def schema_errors(config: dict, schema: dict) -> list:
    """One-line messages for every schema violation, most specific first."""
    import jsonschema

    msgs = []
    for e in sorted(jsonschema.Draft202012Validator(schema).iter_errors(config), key=lambda e: list(map(str, e.path))):
        where = _where(e.absolute_path)
        if e.validator == "additionalProperties" and isinstance(e.instance, dict):
            for key in sorted(set(e.instance) - set(e.schema.get("properties", {}))):
                prefix = f"{where}." if e.absolute_path else ""
                msgs.append(f"{prefix}{key}: unknown key (allowed: {', '.join(sorted(e.schema['properties']))})")
        elif e.validator == "required":
            msgs.append(f"{where}: {e.message}")
        else:
            msgs.append(f"{where}: {e.message}")
    return msgs


def check(config: dict, schema_path) -> None:
    """Raise ConfigError on the first problem; call before snakemake's own ``validate``."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    msgs = schema_errors(config, schema)
    if msgs:
        raise ConfigError(f"config error: {msgs[0]}" + (f" (and {len(msgs) - 1} more)" if len(msgs) > 1 else ""))
    d = config["dataset"]
    if d["name"] in ("cifar10", "imagefolder"):
        root = d.get("root")
        if not root:
            raise ConfigError(f"config error: dataset.root: required for dataset {d['name']!r}")
        if not os.path.isdir(root) and not (d["name"] == "cifar10" and d.get("download")):
            raise ConfigError(f"config error: dataset.root: directory not found: {root}")
        if d["name"] == "cifar10" and d.get("image_size", 32) != 32:
            raise ConfigError("config error: dataset.image_size: cifar10 images are 32 px; set 32")
        if d["name"] == "imagefolder" and not os.path.isdir(os.path.join(root, "train")):
            raise ConfigError(f"config error: dataset.root: no train/ folder in {root}")
    check_trak(config)
    check_ablation(config)
    names = [c["name"] for c in config["concepts"]]
    if len(set(names)) != len(names):
        raise ConfigError(f"config error: concepts: duplicate concept names in {names}")
    for i, c in enumerate(config["concepts"]):
        where = f"concepts.{i} ({c['name']})"
        if c["kind"] == "classes" and not c.get("classes"):
            raise ConfigError(f"config error: {where}.classes: required for kind 'classes'")
        if c["kind"] == "planted" and d["name"] != "synthetic":
            raise ConfigError(f"config error: {where}.kind: 'planted' needs dataset.name synthetic")
        if c["kind"] == "folders":
            for key in ("positives", "negatives"):
                if not c.get(key):
                    raise ConfigError(f"config error: {where}.{key}: required for kind 'folders'")
                if not os.path.isdir(c[key]):
                    raise ConfigError(f"config error: {where}.{key}: directory not found: {c[key]}")


def check_trak(config: dict) -> None:
    t, tr = config.get("trak", {}), config.get("train", {})
    every, epochs = tr.get("checkpoint_every", 0), tr.get("epochs", 8)
    for name in t.get("checkpoints", []):
        if name.startswith("epoch_"):
            e = int(name.split("_")[1])
            if not every or e % every or e >= epochs:
                raise ConfigError(f"config error: trak.checkpoints: {name} is not saved by training "
                                  f"(train.checkpoint_every={every}, train.epochs={epochs})")
    if t.get("precision") == "float16" and t.get("device") != "cuda":
        raise ConfigError("config error: trak.precision: float16 needs trak.device cuda")


def check_ablation(config: dict) -> None:
    a, layers = config.get("ablation", {}), config.get("layers", [])
    for layer in a.get("layers", []):
        if layer != "location" and layers and layer not in layers:
            raise ConfigError(f"config error: ablation.layers: {layer} is not in layers {layers}")
    names = [c["name"] for c in config["concepts"]]
    for name in a.get("concepts") or []:
        if name not in names:
            raise ConfigError(f"config error: ablation.concepts: unknown concept {name!r} (have {names})")


def dataset_slice(config: dict) -> dict:
    """Only the dataset keys that affect the chosen dataset (others may change freely)."""
    d = config["dataset"]
    keep = {"synthetic": ("name", "image_size", "synthetic"),
            "cifar10": ("name", "image_size", "root"),
            "imagefolder": ("name", "image_size", "root", "subset_fraction", "test_fraction")}[d["name"]]
    return {k: d[k] for k in keep if k in d}

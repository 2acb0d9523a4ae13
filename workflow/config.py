"""The config: checked and completed before any job runs.

``resolve`` reports the first schema violation in one line naming the key, fills in
every default from config/schema.yaml (the only place defaults live), then checks the
rules that span keys and the paths. Torch-free, except for a ``torchvision:`` or ``timm:``
model (``check_model``).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import yaml

from .errors import ConfigError  # noqa: F401  (raised by every check; callers import it from here)
from .model.names import RESNET18_DEFAULT_LAYERS, RESNET18_LAYERS

SCHEMA = Path(__file__).resolve().parent / "schema.yaml"


def _where(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def schema() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


def schema_errors(config: dict, schema: dict) -> list:
    """One-line messages for every schema violation, sorted by key path."""
    import jsonschema

    msgs = []
    for e in sorted(jsonschema.Draft202012Validator(schema).iter_errors(config), key=lambda e: list(map(str, e.path))):
        where = _where(e.absolute_path)
        if e.validator == "additionalProperties" and isinstance(e.instance, dict):
            for key in sorted(set(e.instance) - set(e.schema.get("properties", {}))):
                prefix = f"{where}." if e.absolute_path else ""
                msgs.append(f"{prefix}{key}: unknown key (allowed: {', '.join(sorted(e.schema['properties']))})")
        else:
            msgs.append(f"{where}: {e.message}")
    return msgs


def _deref(node: dict, root: dict) -> dict:
    while "$ref" in node:
        node = root["$defs"][node["$ref"].rsplit("/", 1)[1]]
    return node


def with_defaults(config: dict, schema: dict) -> dict:
    """A copy of ``config`` with every missing key that has a schema default filled in,
    recursively (an object's own default, e.g. ``{}``, is completed from its properties)."""
    def fill(value, node):
        node = _deref(node, schema)
        if not isinstance(value, dict) or "properties" not in node:
            return value
        out = dict(value)
        for key, sub in node["properties"].items():
            # a default next to a $ref overrides the referenced definition's
            default = sub.get("default", _deref(sub, schema).get("default", fill))
            if key not in out and default is not fill:
                out[key] = copy.deepcopy(default)
            if key in out:
                out[key] = fill(out[key], sub)
        return out

    return fill(copy.deepcopy(config), schema)


def merge(base: dict, override: dict) -> dict:
    """``base`` updated by ``override`` recursively (mappings merge, other values replace)."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def resolve(config: dict) -> dict:
    """The checked config with the schema's defaults; ConfigError (one line) on the first problem."""
    s = schema()
    msgs = schema_errors(config, s)
    if msgs:
        raise ConfigError(f"config error: {msgs[0]}" + (f" (and {len(msgs) - 1} more)" if len(msgs) > 1 else ""))
    config = with_defaults(config, s)
    check_dataset(config)
    config = check_model(config)
    check_concepts(config)
    check_trak(config)
    check_ablation(config)
    check_lds(config)
    check_replay(config)
    return config


def check_replay(config: dict) -> None:
    """The metagradient replays torch's SGD step by step: it needs the sgd / onecycle recipe
    and no dropout draws."""
    used = {*config["attribution"]["estimators"], *config["ablation"]["estimators"],
            *(config["lds"]["estimators"] if config["lds"]["fractions"] else [])}
    if "metagradient" not in used:
        return
    t = config["train"]
    if t["optimizer"] != "sgd" or t["schedule"] != "onecycle":
        raise ConfigError(f"config error: train.optimizer: the metagradient estimator replays sgd with the onecycle "
                          f"schedule, not {t['optimizer']} / {t['schedule']}; drop it from the estimators")
    if config["model"]["keep_dropout"]:
        raise ConfigError("config error: model.keep_dropout: the metagradient estimator cannot replay dropout draws; "
                          "set it false or drop the estimator")


def check_dataset(config: dict) -> None:
    d = config["dataset"]
    if d["name"] in ("cifar10", "imagefolder"):
        root = d["root"]
        if not root:
            raise ConfigError(f"config error: dataset.root: required for dataset {d['name']!r}")
        if not os.path.isdir(root) and not (d["name"] == "cifar10" and d["download"]):
            raise ConfigError(f"config error: dataset.root: directory not found: {root}")
        if d["name"] == "cifar10" and d["image_size"] != 32:
            raise ConfigError("config error: dataset.image_size: cifar10 images are 32 px; set 32")
        if d["name"] == "imagefolder" and not os.path.isdir(os.path.join(root, "train")):
            raise ConfigError(f"config error: dataset.root: no train/ folder in {root}")
    if d["store_size"] is not None:
        if d["name"] != "imagefolder":
            raise ConfigError(f"config error: dataset.store_size: only for imagefolder ({d['name']} images are "
                              f"stored at image_size); remove it")
        if d["store_size"] < d["image_size"]:
            raise ConfigError(f"config error: dataset.store_size: {d['store_size']} is smaller than "
                              f"dataset.image_size {d['image_size']}")
    lo, hi = config["train"]["crop_scale"]
    if lo > hi:
        raise ConfigError(f"config error: train.crop_scale: [{lo}, {hi}] must be [low, high]")


def check_model(config: dict) -> dict:
    """resnet18's layer names (its default when unset); a zoo model (``torchvision:``,
    ``timm:``) is built on torch's meta device by ``model.zoo.complete``, which checks its
    name, kwargs and module paths and fills in its default layers (only then is torch imported)."""
    m = config["model"]
    if m["weights"] is not None and not os.path.isfile(m["weights"]):
        raise ConfigError(f"config error: model.weights: file not found: {m['weights']}")
    if m["arch"] != "resnet18":
        from .model.zoo import complete
        return complete(config)
    if m["kwargs"]:
        raise ConfigError("config error: model.kwargs: resnet18 takes none (its one knob is model.width)")
    if config["layers"] is None:
        return {**config, "layers": list(RESNET18_DEFAULT_LAYERS)}
    for layer in config["layers"]:
        if layer not in RESNET18_LAYERS:
            raise ConfigError(f"config error: layers: {layer!r} is not a layer of resnet18 (choose from "
                              f"{', '.join(RESNET18_LAYERS)}; module paths need a torchvision: or timm: model.arch)")
    return config


def check_concepts(config: dict) -> None:
    names = [c["name"] for c in config["concepts"]]
    if len(set(names)) != len(names):
        raise ConfigError(f"config error: concepts: duplicate concept names in {names}")
    for i, c in enumerate(config["concepts"]):
        where = f"concepts.{i} ({c['name']})"
        if c["kind"] == "classes" and not c.get("classes"):
            raise ConfigError(f"config error: {where}.classes: required for kind 'classes'")
        if c["kind"] == "planted" and config["dataset"]["name"] != "synthetic":
            raise ConfigError(f"config error: {where}.kind: 'planted' needs dataset.name synthetic")
        if c["kind"] == "folders":
            for key in ("positives", "negatives"):
                if not c.get(key):
                    raise ConfigError(f"config error: {where}.{key}: required for kind 'folders'")
                if not os.path.isdir(c[key]):
                    raise ConfigError(f"config error: {where}.{key}: directory not found: {c[key]}")


def check_trak(config: dict) -> None:
    t, tr = config["trak"], config["train"]
    every, epochs = tr["checkpoint_every"], tr["epochs"]
    for name in t["checkpoints"]:
        if name.startswith("epoch_"):
            e = int(name.split("_")[1])
            if not every or e % every or e >= epochs:
                raise ConfigError(f"config error: trak.checkpoints: {name} is not saved by training "
                                  f"(train.checkpoint_every={every}, train.epochs={epochs})")
    if t["precision"] == "float16" and t["device"] != "cuda":
        raise ConfigError("config error: trak.precision: float16 needs trak.device cuda")


def check_ablation(config: dict) -> None:
    a, layers = config["ablation"], config["layers"]
    for layer in a["layers"]:
        if layer != "location" and layer not in layers:
            raise ConfigError(f"config error: ablation.layers: {layer} is not in layers {layers}")
    names = [c["name"] for c in config["concepts"]]
    for name in a["concepts"] or []:
        if name not in names:
            raise ConfigError(f"config error: ablation.concepts: unknown concept {name!r} (have {names})")
    spawn, tr = a["spawn_epoch"], config["train"]
    if spawn and (not tr["checkpoint_every"] or spawn % tr["checkpoint_every"] or spawn >= tr["epochs"]):
        raise ConfigError(f"config error: ablation.spawn_epoch: {spawn} is not a saved checkpoint "
                          f"(train.checkpoint_every={tr['checkpoint_every']}, train.epochs={tr['epochs']})")


def lds_spawn_epoch(config: dict) -> int:
    """The spawn epoch of the LDS subsets' twins (lds.spawn_epoch, else ablation.spawn_epoch)."""
    spawn = config["lds"]["spawn_epoch"]
    return config["ablation"]["spawn_epoch"] if spawn is None else spawn


def check_lds(config: dict) -> None:
    lds, size = config["lds"], config["ensemble"]["size"]
    for m in lds["members"]:
        if m >= size:
            raise ConfigError(f"config error: lds.members: member {m} does not exist (ensemble.size={size})")
    spawn, tr = lds_spawn_epoch(config), config["train"]
    if spawn and (not tr["checkpoint_every"] or spawn % tr["checkpoint_every"] or spawn >= tr["epochs"]):
        raise ConfigError(f"config error: lds.spawn_epoch: {spawn} is not a saved checkpoint "
                          f"(train.checkpoint_every={tr['checkpoint_every']}, train.epochs={tr['epochs']})")
    if lds["fractions"] and lds["subsets"] < 3:
        raise ConfigError(f"config error: lds.subsets: {lds['subsets']} subsets cannot give a rank correlation; "
                          f"use at least 3")


def rule_resources(config: dict, family: str, device=None) -> dict:
    """A rule family's Snakemake resources from ``config["resources"]`` (its own entry over
    "default"): memory (MB) and wall time (min) that grow with the attempt, so a job
    retried after running out of memory or time asks for 2x, then 3x; one GPU when the
    stage's device is cuda (CPU rules ask for none). SLURM's plugin turns these into --mem,
    -t and --gpus."""
    r = {**config["resources"]["default"], **config["resources"].get(family, {})}
    mem, runtime = int(r["mem_mb"]), int(r["runtime"])
    out = {"mem_mb": lambda wildcards, attempt: mem * attempt,
           "runtime": lambda wildcards, attempt: runtime * attempt}
    if device == "cuda":
        out["gpu"] = 1
    return out


def dataset_slice(config: dict) -> dict:
    """Only the dataset keys that affect the chosen dataset (others may change freely).

    The data stages get this slice and nothing else, so every key they read is here; an
    optional key is absent when it has its default (the stages read it with that default)."""
    d = config["dataset"]
    keep = {"synthetic": ("name", "image_size", "synthetic"),
            "cifar10": ("name", "image_size", "root"),
            "imagefolder": ("name", "image_size", "root", "subset_fraction", "test_fraction")}[d["name"]]
    out = {k: d[k] for k in keep if k in d}
    if d["name"] == "imagefolder" and d.get("store_size") is not None:
        out["store_size"] = d["store_size"]          # absent when unset: older results stay valid
    if d["name"] == "cifar10" and d.get("download"):
        out["download"] = True                       # absent when false: a local tree's results stay valid
    return out

"""Models by name (``model.arch``): the registry of architecture families.

- ``resnet18``: the workflow's own width-scalable ResNet-18 (``resnet``), unchanged;
- ``torchvision:<name>``: any classifier of ``torchvision.models`` (``list_models()``);
- ``timm:<name>``: any model of timm (``timm.list_models()``).

Zoo networks are built without weights (nothing is ever downloaded), with the number of
classes of the data and ``model.kwargs`` passed to their constructor, and wrapped in
``classifier.Classifier`` (the training set's normalisation inside, activations at module
paths). ``model.weights`` names a local file to start training from. Dropout and
stochastic depth are switched off unless ``model.keep_dropout`` (then they draw from
torch's generator seeded per member: a twin that removes nothing is still its base run
bit for bit, but removals shift the draws).

``complete`` checks a config's model section before any job (one-line errors naming the
key) and fills in the family's default layers; it builds the network on the meta device,
so no memory is used for weights.
"""
from __future__ import annotations

import difflib
import logging

import torch
from torch import nn

from ..errors import ConfigError
from .classifier import Classifier, prefix_tokens
from .resnet import ScalableResNet18

log = logging.getLogger(__name__)
MAX_DEFAULT_LAYERS = 5


class Family:
    """One source of architectures: its names and how it builds one."""

    prefix = ""

    def names(self) -> list:
        raise NotImplementedError

    def construct(self, name: str, num_classes: int, kwargs: dict) -> nn.Module:
        raise NotImplementedError

    def stages(self, net: nn.Module):
        """The family's own list of stage modules (paths), or None for the generic rule."""
        return None


class Torchvision(Family):
    prefix = "torchvision"

    def names(self) -> list:
        from torchvision.models import list_models
        return list_models()

    def construct(self, name, num_classes, kwargs):
        from torchvision.models import get_model
        return get_model(name, weights=None, num_classes=num_classes, **kwargs)


class Timm(Family):
    prefix = "timm"

    def names(self) -> list:
        import timm
        return timm.list_models()

    def construct(self, name, num_classes, kwargs):
        import timm
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)

    def stages(self, net):
        info = getattr(net, "feature_info", None)
        if not info:
            return None
        return [f["module"] for f in (info.info if hasattr(info, "info") else info)]


FAMILIES = {f.prefix: f for f in (Torchvision(), Timm())}


def family_of(arch: str):
    """(Family, model name) of ``torchvision:<name>`` or ``timm:<name>``; ValueError otherwise."""
    prefix, _, name = arch.partition(":")
    if prefix not in FAMILIES or not name:
        raise ValueError(f"model.arch: {arch!r} is not resnet18, torchvision:<name> or timm:<name>")
    return FAMILIES[prefix], name


def arch_of(model_cfg: dict, num_classes: int, image_size: int, mean, std) -> dict:
    """The arch dict a model file stores (``build`` rebuilds the model from it). For
    ``resnet18`` it is the one this workflow always stored."""
    name = model_cfg.get("arch", "resnet18")
    if name == "resnet18":
        return {"arch": "resnet18", "num_classes": num_classes, "width": model_cfg["width"],
                "image_size": image_size, "mean": mean, "std": std}
    return {"arch": name, "num_classes": int(num_classes), "image_size": int(image_size),
            "mean": list(map(float, mean)), "std": list(map(float, std)),
            "kwargs": dict(model_cfg.get("kwargs") or {}), "keep_dropout": bool(model_cfg.get("keep_dropout"))}


def without_dropout(net: nn.Module) -> nn.Module:
    """Every dropout and stochastic-depth module of ``net`` set to drop nothing."""
    for m in net.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0
        elif hasattr(m, "drop_prob") and type(m).__name__ == "DropPath":   # timm's stochastic depth
            m.drop_prob = 0.0
        elif type(m).__name__ == "StochasticDepth":                         # torchvision's
            m.p = 0.0
    return net


def build(arch: dict) -> nn.Module:
    """The model an arch dict describes (random weights; ``load_weights`` or a checkpoint fill them)."""
    name = arch.get("arch", "resnet18")
    if name == "resnet18":
        return ScalableResNet18(arch["num_classes"], arch["width"], arch["image_size"],
                                arch.get("mean", (0.5,) * 3), arch.get("std", (0.25,) * 3))
    family, model_name = family_of(name)
    net = family.construct(model_name, arch["num_classes"], arch.get("kwargs") or {})
    if not arch.get("keep_dropout"):
        without_dropout(net)
    return Classifier(net, arch)


def load_weights(model: nn.Module, path) -> None:
    """Start from the weights in a local file (a state dict of the network, or of the
    wrapped model, or a checkpoint with ``state_dict``/``model``): every tensor whose
    name and shape match is copied; the rest (e.g. a classifier head for another number
    of classes, and resnet18's normalisation buffers, which belong to this training set)
    keeps its initialisation, and the log names them."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    net = model.net if isinstance(model, Classifier) else model
    own = net.state_dict()
    state = {k.removeprefix("net."): v for k, v in state.items()}
    used = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)
            and k not in ("pixel_mean", "pixel_std")}   # the normalisation is this training set's
    if not used:
        raise ValueError(f"model.weights: no tensor of {path} matches the network's names and shapes")
    net.load_state_dict(used, strict=False)
    kept = sorted(set(own) - set(used))
    log.info("model.weights: %d tensors from %s; %d keep their initialisation%s", len(used), path, len(kept),
             f" ({', '.join(kept[:8])}{', ...' if len(kept) > 8 else ''})" if kept else "")


def spread(names: list, most: int) -> list:
    """At most ``most`` of ``names``, evenly spaced, the last always kept (every k-th block)."""
    if len(names) <= most:
        return list(names)
    k = -(-len(names) // most)
    return [names[i] for i in range(len(names) - 1, -1, -k)][::-1]


def default_layers(family: Family, net: nn.Module) -> list:
    """The family's stages (timm's ``feature_info``), else ResNet's layer1..layer4, else the
    top-level modules with parameters less the classifier (descending while only one is
    left): at most ``MAX_DEFAULT_LAYERS``, evenly spaced, the deepest kept."""
    names = family.stages(net)
    if not names and all(hasattr(net, f"layer{i}") for i in range(1, 5)):
        names = [f"layer{i}" for i in range(1, 5)]
    if not names:
        prefix, module = "", net
        while True:
            children = [(n, m) for n, m in module.named_children() if any(True for _ in m.parameters())]
            body = children[:-1] if module is net else children
            if len(body) == 1 and any(True for _ in body[0][1].children()):
                prefix, module = f"{prefix}{body[0][0]}.", body[0][1]
                continue
            if len(body) == 2 and module is not net and len(list(body[0][1].children())) > len(list(body[1][1].children())):
                prefix, module = f"{prefix}{body[0][0]}.", body[0][1]   # blocks, then a final norm
                continue
            names = [prefix + n for n, _ in body]
            break
    return spread(names, MAX_DEFAULT_LAYERS)


def probe_build(arch: str, kwargs: dict, num_classes: int = 10) -> nn.Module:
    """The named network without memory for its weights (the meta device; the CPU if its
    constructor needs real tensors); ConfigError naming the key when it cannot be built."""
    try:
        family, name = family_of(arch)
    except ValueError as e:
        raise ConfigError(f"config error: {e}") from None
    known = family.names()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        raise ConfigError(f"config error: model.arch: {family.prefix} has no model {name!r}"
                          + (f" (did you mean {', '.join(close)}?)" if close else ""))
    try:
        with torch.device("meta"):
            return family.construct(name, num_classes, kwargs)
    except TypeError as e:
        raise ConfigError(f"config error: model.kwargs: {arch} rejects them: {e}") from None
    except Exception:   # a constructor that reads tensor values: build it for real
        try:
            return family.construct(name, num_classes, kwargs)
        except Exception as e:
            raise ConfigError(f"config error: model.kwargs: {arch} cannot be built with {kwargs}: "
                              f"{type(e).__name__}: {e}") from None


def available(net: nn.Module, depth: int = 2) -> list:
    return [n for n, _ in net.named_modules() if n and n.count(".") < depth]


def complete(config: dict) -> dict:
    """``config`` (resolved by ``workflow.config.resolve``) with its model section checked
    and ``layers`` filled in from the family's defaults when not given. Errors are one line
    and name the key."""
    arch = config["model"]["arch"]
    net = probe_build(arch, config["model"]["kwargs"])
    layers = config["layers"] if config["layers"] is not None else default_layers(family_of(arch)[0], net)
    paths = {n for n, _ in net.named_modules() if n}
    for layer in layers:
        if layer not in paths and layer not in ("input",):
            close = difflib.get_close_matches(layer, sorted(paths), n=3)
            raise ConfigError(f"config error: layers: {layer!r} is not a module of {arch}"
                              + (f" (closest: {', '.join(close)})" if close else "")
                              + f"; its modules: {', '.join(available(net))}")
    if config["activations"]["token_pool"] == "cls" and prefix_tokens(net) == 0:
        raise ConfigError(f"config error: activations.token_pool: {arch} has no class token; use mean")
    return {**config, "layers": list(layers)}

"""A torchvision or timm network as the workflow's model: the training set's normalisation
inside it, and its activations at named modules (``layer_outputs``), pooled by shape
(``pooled``).

The workflow's own ``resnet.ScalableResNet18`` has the same three methods; every stage
calls only these, so any network from the zoo (``zoo``) runs through every stage.

Pooling by output shape (``pool``):
- [B, C, H, W] feature maps: the spatial mean of each channel;
- [B, T, D] token sequences: the mean over the patch tokens (class and other prefix
  tokens left out), or the class token, by ``token_pool`` (``activations.token_pool``);
- [B, D]: as it is.
"""
from __future__ import annotations

import torch
from torch import nn

PSEUDO = ("input", "logits")


class _Enough(Exception):
    """Raised by a forward hook once every wanted layer has been seen: the rest of the
    network is not run (the outputs asked for do not depend on it)."""


def prefix_tokens(net: nn.Module) -> int:
    """How many tokens precede the patch tokens in the network's sequences (class,
    distillation and register tokens): timm's ``num_prefix_tokens``, 1 for torchvision's
    ViT (its ``class_token``), else 0."""
    if hasattr(net, "num_prefix_tokens"):
        return int(net.num_prefix_tokens)
    return 1 if isinstance(getattr(net, "class_token", None), torch.Tensor) else 0


def patch_count(net: nn.Module):
    """The number of patch tokens of a ViT (timm's ``patch_embed.num_patches``,
    torchvision's ``seq_length`` less its class token), or None."""
    n = getattr(getattr(net, "patch_embed", None), "num_patches", None)
    if n is None and hasattr(net, "seq_length"):
        n = int(net.seq_length) - prefix_tokens(net)
    return None if n is None else int(n)


def pool(h: torch.Tensor, token_pool: str = "mean", prefix: int = 0, patches=None) -> torch.Tensor:
    """[B, features] from a layer's output, by its shape (the module's docstring). A token
    sequence longer than ``patches`` starts with ``prefix`` class-like tokens."""
    if h.ndim == 4:
        return h.mean(dim=(2, 3))
    if h.ndim == 2:
        return h
    if h.ndim == 3:
        has_prefix = prefix > 0 and (patches is None or h.shape[1] > patches)
        if token_pool == "cls":
            if not has_prefix:
                raise ValueError("activations.token_pool cls: this layer's tokens have no class token; use mean")
            return h[:, 0]
        return h[:, prefix:].mean(dim=1) if has_prefix else h.mean(dim=1)
    raise ValueError(f"cannot pool a layer output of shape {tuple(h.shape)} (expected [B,C,H,W], [B,T,D] or [B,D])")


class Classifier(nn.Module):
    """``net`` (a zoo network over normalised images) with the per-channel normalisation of
    the training set applied inside (as buffers, so it adds no parameters). Inputs are
    floats in [0, 1], as for every model of the workflow. ``arch`` is what ``zoo.build``
    rebuilds it from; ``token_pool`` is set by the stage that pools (``zoo.load``)."""

    def __init__(self, net: nn.Module, arch: dict):
        super().__init__()
        self.net = net
        self.register_buffer("pixel_mean", torch.tensor(arch["mean"], dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(arch["std"], dtype=torch.float32).view(1, 3, 1, 1))
        self.arch = arch
        self.token_pool = "mean"
        self.prefix, self.patches = prefix_tokens(net), patch_count(net)
        self.paths = {name: m for name, m in net.named_modules() if name}

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.pixel_mean) / self.pixel_std

    def forward(self, x):
        return self.net(self.normalize(x))

    def layer_outputs(self, x: torch.Tensor, layers) -> dict:
        """The outputs of the named modules (paths in ``net``) for one forward pass, which
        stops after the last of them unless ``logits`` (the classifier's output) is asked
        for; ``input`` is the image batch itself."""
        wanted = list(dict.fromkeys(layers))
        unknown = [name for name in wanted if name not in PSEUDO and name not in self.paths]
        if unknown:
            raise ValueError(f"unknown layer(s) {unknown}: not modules of {self.arch['arch']}")
        out = {"input": x} if "input" in wanted else {}
        modules = [name for name in wanted if name not in PSEUDO]
        full = "logits" in wanted
        if not modules and not full:
            return out

        def hook(name):
            def capture(module, args, output):
                if name in out:
                    return
                if not isinstance(output, torch.Tensor):
                    raise ValueError(f"layer {name!r} of {self.arch['arch']} returns {type(output).__name__}, "
                                     f"not a tensor; choose another module path")
                out[name] = output
                if not full and all(m in out for m in modules):
                    raise _Enough
            return capture

        handles = [self.paths[name].register_forward_hook(hook(name)) for name in modules]
        try:
            logits = self.net(self.normalize(x))
            if full:
                out["logits"] = logits
        except _Enough:
            pass
        finally:
            for h in handles:
                h.remove()
        return out

    def pooled(self, x: torch.Tensor, layers) -> dict:
        """{layer: [B, features]}: each layer's output pooled by shape (``pool``); ``logits`` as is."""
        return {k: v if k == "logits" else pool(v, self.token_pool, self.prefix, self.patches)
                for k, v in self.layer_outputs(x, layers).items()}

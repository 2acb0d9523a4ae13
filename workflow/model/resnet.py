"""ResNet-18 from torchvision, with a width knob and a stem adapted to the image size."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from .names import RESNET18_LAYERS as LAYERS


class ScalableResNet18(ResNet):
    """torchvision's ResNet-18 with base width ``width`` (64 = the standard network).

    Images smaller than 64 px get the CIFAR stem (3x3 stride-1 conv, no max-pool);
    larger ones keep the ImageNet stem. Inputs are uint8-range floats scaled to [0, 1];
    the per-channel normalisation of the training set is applied inside the model
    (as buffers, so it adds no parameters).
    """

    def __init__(self, num_classes: int, width: int = 64, image_size: int = 32,
                 mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)):
        self._width = int(width)
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
        small = image_size < 64
        self.conv1 = (nn.Conv2d(3, width, 3, 1, 1, bias=False) if small
                      else nn.Conv2d(3, width, 7, 2, 3, bias=False))
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.bn1 = nn.BatchNorm2d(width)
        if small:
            self.maxpool = nn.Identity()
        self.fc = nn.Linear(8 * width * BasicBlock.expansion, num_classes)
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.arch = {"arch": "resnet18", "num_classes": int(num_classes), "width": int(width),
                     "image_size": int(image_size), "mean": list(map(float, mean)),
                     "std": list(map(float, std))}

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if planes == 64:  # first stage: torchvision starts from 64 input channels
            self.inplanes = self._width
        return super()._make_layer(block, planes * self._width // 64, blocks, stride, dilate)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.pixel_mean) / self.pixel_std

    def forward(self, x):
        return super().forward(self.normalize(x))

    def layer_outputs(self, x: torch.Tensor, layers) -> dict:
        """Spatial feature maps at the named layers (one partial forward pass); the pseudo-layer
        ``logits`` adds the classifier's output [B, classes]."""
        wanted = set(layers)
        unknown = wanted - set(LAYERS) - {"logits"}
        if unknown:
            raise ValueError(f"unknown layer(s) {sorted(unknown)}; choose from {LAYERS}")
        out = {}
        if "input" in wanted:
            out["input"] = x
        h = self.maxpool(self.relu(self.bn1(self.conv1(self.normalize(x)))))
        if "stem" in wanted:
            out["stem"] = h
        for name in ("layer1", "layer2", "layer3", "layer4"):
            if wanted <= out.keys():
                break
            h = getattr(self, name)(h)
            if name in wanted:
                out[name] = h
        if "logits" in wanted:
            out["logits"] = self.fc(torch.flatten(self.avgpool(h), 1))
        return out

    def pooled(self, x: torch.Tensor, layers) -> dict:
        """Per-channel spatial means at the named layers: {layer: [B, C_l]} (``logits`` as is)."""
        return {k: v.mean(dim=(2, 3)) if v.ndim == 4 else v for k, v in self.layer_outputs(x, layers).items()}


def to_input(images_uint8, size: int | None = None) -> torch.Tensor:
    """[N,H,W,3] uint8 (numpy or tensor) -> float [N,3,H,W] in [0, 1]; with ``size``, the
    central size x size view of images stored larger (``dataset.store_size``)."""
    t = torch.as_tensor(images_uint8)
    return centre_crop(t.permute(0, 3, 1, 2).float().div_(255.0), size)


def centre_crop(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """The central ``size`` x ``size`` pixels of [N,C,H,W] (``x`` itself if None or as large)."""
    if size is None or size >= x.shape[-1]:
        return x
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return x[..., top:top + size, left:left + size]


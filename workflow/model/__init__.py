"""Stages 2 and 8, model: the ensemble (resnet18, or any torchvision or timm classifier by
name), its training (base and ablated, paired with the base run) and its checkpoints."""

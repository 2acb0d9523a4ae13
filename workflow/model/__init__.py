"""Stages 2 and 8, model: the ResNet-18 ensemble, its training (base and ablated,
paired with the base run) and its checkpoints."""

"""Stage 3: per-channel pooled activations of every probe image at every probed layer."""
from __future__ import annotations

import logging

import numpy as np
import torch
from tqdm import tqdm

from .. import artifacts
from ..model import checkpoints
from ..model.resnet import to_input
from ..runtime import resolve_device

log = logging.getLogger(__name__)


@torch.no_grad()
def pooled_activations(model, images: np.ndarray, layers, device, batch_size: int = 256) -> dict:
    """{layer: float32 [N, C_l]}: each layer's output pooled by shape (``model.pooled``: the
    spatial mean of each channel of a feature map, the patch tokens' mean or the class token
    of a sequence); the pseudo-layer ``logits``: the classifier's output."""
    model.eval()
    out = {layer: [] for layer in layers}
    for s in tqdm(range(0, len(images), batch_size), desc="activations", mininterval=5):
        pooled = model.pooled(to_input(images[s:s + batch_size]).to(device), layers)
        for layer in layers:
            out[layer].append(pooled[layer].float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def extract(model_path, probe_sets: dict, out_paths: dict, cfg: dict) -> None:
    """For each concept of ``probe_sets`` ({concept: probe-set file}), write the pooled
    activations of its images for ``cfg['layers']`` to ``out_paths[concept]``; the model
    is loaded once."""
    device = resolve_device(cfg["activations"]["device"])
    model = checkpoints.load(model_path, "final", device, cfg.get("token_pool", "mean"))
    for concept, images_path in probe_sets.items():
        images = artifacts.probe_set(images_path)["images"]
        acts = pooled_activations(model, images, [*cfg["layers"], "logits"], device,
                                  cfg["activations"]["batch_size"])
        logits = acts.pop("logits")   # for the classification margin (the LDS stage)
        artifacts.write_activations(out_paths[concept], cfg, acts, logits=logits)
        log.info("%s: %s", concept, ", ".join(f"{layer} {a.shape}" for layer, a in acts.items()))


def activations_stage(job) -> None:
    extract(job.input["model"], job.input["probe_sets"], job.output["activations"], job.params)

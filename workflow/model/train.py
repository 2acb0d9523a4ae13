"""Stage 2: train one ensemble member (seeded) and save its checkpoints to HDF5."""
from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.nn.functional as F

from .. import artifacts
from ..runtime import resolve_device
from ..seeding import derive_seed, seed_everything
from . import checkpoints
from .resnet import build, to_input

log = logging.getLogger(__name__)


def augment(x: torch.Tensor, gen: torch.Generator, shift: int, flip: bool) -> torch.Tensor:
    """Random translations of up to ``shift`` px (reflect padding) and horizontal flips."""
    n, _, h, w = x.shape
    if shift > 0:
        padded = F.pad(x, (shift,) * 4, mode="reflect")
        ox = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
        oy = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
        x = torch.stack([padded[i, :, oy[i]:oy[i] + h, ox[i]:ox[i] + w] for i in range(n)])
    if flip:
        m = torch.rand(n, generator=gen) < 0.5
        x = torch.where(m[:, None, None, None], x.flip(3), x)
    return x


@torch.no_grad()
def predictions(model, images, device, batch_size=512) -> np.ndarray:
    model.eval()
    out = [model(to_input(images[s:s + batch_size]).to(device)).argmax(1).cpu().numpy()
           for s in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def accuracy(model, images, labels, device, batch_size=512) -> float:
    return float((predictions(model, images, device, batch_size) == labels).mean()) if len(labels) else 0.0


def make_model(info: dict, model_cfg: dict):
    arch = {"arch": model_cfg["arch"], "num_classes": info["num_classes"],
            "width": model_cfg["width"], "image_size": info["image_size"],
            "mean": info["pixel_mean"], "std": info["pixel_std"]}
    return build(arch)


def train_member(data_path, out_path, member: int, cfg: dict, train_indices=None) -> dict:
    """Train ensemble member ``member`` with the recipe ``cfg`` (keys: seed, model, train).

    ``train_indices`` restricts training to a subset of the train split (ablation).
    Returns the metrics stored with the checkpoint.
    """
    tcfg, seed = cfg["train"], derive_seed(cfg["seed"], "member", member)
    seed_everything(seed)
    device = resolve_device(tcfg["device"])
    info = artifacts.base_info(data_path)
    x_train, y_train = artifacts.base_split(data_path, "train", train_indices)
    x_test, y_test = artifacts.base_split(data_path, "test")
    model = make_model(info, cfg["model"]).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=tcfg["lr"], momentum=tcfg["momentum"],
                          weight_decay=tcfg["weight_decay"], nesterov=True)
    epochs, bs = tcfg["epochs"], tcfg["batch_size"]
    steps_per_epoch = max(1, int(np.ceil(len(y_train) / bs)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tcfg["lr"], total_steps=epochs * steps_per_epoch,
                                                pct_start=0.25, anneal_strategy="linear")
    gen = torch.Generator().manual_seed(seed)
    every = tcfg["checkpoint_every"]
    saved = {}
    log.info("member %d: %d train images, %d epochs, device %s, %d threads",
             member, len(y_train), epochs, device, torch.get_num_threads())
    for epoch in range(1, epochs + 1):
        model.train()
        t0, total, n = time.time(), 0.0, 0
        perm = torch.randperm(len(y_train), generator=gen).numpy()
        for s in range(0, len(perm), bs):
            idx = perm[s:s + bs]
            x = augment(to_input(x_train[idx]), gen, tcfg["augment_shift"], tcfg["augment_flip"]).to(device)
            y = torch.as_tensor(y_train[idx]).to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            n += len(idx)
        log.info("member %d epoch %d/%d loss %.4f (%.1fs)", member, epoch, epochs, total / n, time.time() - t0)
        if every and epoch % every == 0 and epoch != epochs:
            saved[epoch] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    test_correct = predictions(model, x_test, device) == y_test
    metrics = {"train_acc": accuracy(model, x_train, y_train, device),
               "test_acc": float(test_correct.mean()) if len(y_test) else 0.0,
               "final_loss": total / n, "n_train": int(len(y_train)), "seed": int(seed)}
    log.info("member %d: train acc %.4f, test acc %.4f", member, metrics["train_acc"], metrics["test_acc"])
    checkpoints.save(out_path, model, saved, metrics, cfg, arrays={"test_correct": test_correct})
    return metrics


def train_stage(job) -> None:
    """Base members train on the whole train split; an ablated condition's on its kept images."""
    keep = artifacts.ablation(job.input["ablation"])["keep"] if "ablation" in job.input else None
    train_member(job.input["data"], job.output["model"], int(job.wildcards["member"]), job.params,
                 train_indices=keep)

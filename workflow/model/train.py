"""Stages 2 and 8: train one ensemble member and save its checkpoints.

Paired retraining: every random draw of a member's run is made over the whole base
training set from the member's seed, epoch by epoch: the order (a permutation of all n
images) and each image's augmentation (shift and flip). A retrained twin of an ablated
condition replays exactly that stream with its removed images skipped: the same
initialisation, the same relative order of the images that remain, the same view of
every remaining image. Removing nothing reproduces the base run bit for bit.

Masked retraining (``ablation.retrain: masked``) keeps every image in its slot instead: the
batches are the base run's, and a removed image's loss is weighted 0 (``example_weights``;
the batch loss is then sum_i w_i l_i / B over the B images of the batch, removed ones
included, which equals the mean loss where every w_i is 1). BatchNorm's batch statistics
still include the removed images: they are inputs of the forward pass, not training
signal. That is the counterfactual a metagradient (``attribution.metagradient``) predicts:
training as a function of per-image loss weights, with everything else fixed.
"""
from __future__ import annotations

import logging
import math
import time
import warnings
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from .. import artifacts
from ..runtime import resolve_device
from ..seeding import derive_seed, seed_everything
from . import checkpoints
from .layout import use_channels_last
from .loader import ImageSource, prefetch
from .resnet import centre_crop, to_input
from .zoo import arch_of, build, load_weights

log = logging.getLogger(__name__)


def epoch_draws(gen: torch.Generator, n: int, shift: int):
    """One epoch's draws over all ``n`` base images: (order [n], x shift [n], y shift [n],
    flip [n]). Always the same number of draws, whatever a condition removes."""
    order = torch.randperm(n, generator=gen)
    ox = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    oy = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    return order, ox, oy, flip


def crop_draws(gen: torch.Generator, n: int) -> torch.Tensor:
    """One epoch's random-resized-crop draws over all ``n`` base images, made after
    ``epoch_draws`` (only when ``train.crop`` is random_resized, so the shift recipe's
    stream is unchanged): [4, n] uniforms for area, aspect ratio, x and y position."""
    return torch.rand((4, n), generator=gen)


def random_resized(x: torch.Tensor, draws: torch.Tensor, size: int, scale) -> torch.Tensor:
    """A crop of each [C, S, S] image covering ``scale`` (lo, hi) of its area with aspect
    ratio 3/4..4/3 (log-uniform), clipped to the image, placed uniformly, and resized to
    ``size`` x ``size`` by bilinear ROI averaging (torchvision's roi_align, 2x2 samples per
    output pixel): batched, on x's device. ``draws``: the images' ``crop_draws`` columns."""
    from torchvision.ops import roi_align

    n, side = x.shape[0], x.shape[-1]
    d = draws.to(device=x.device, dtype=torch.float32)
    area = (scale[0] + d[0] * (scale[1] - scale[0])) * side * side
    ratio = torch.exp(math.log(3 / 4) + d[1] * (math.log(4 / 3) - math.log(3 / 4)))
    w = torch.sqrt(area * ratio).clamp(max=side)
    h = torch.sqrt(area / ratio).clamp(max=side)
    x0, y0 = d[2] * (side - w), d[3] * (side - h)
    boxes = torch.stack([torch.arange(n, device=x.device, dtype=torch.float32), x0, y0, x0 + w, y0 + h], 1)
    return roi_align(x, boxes, output_size=(size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)


def batch_view(x: torch.Tensor, base_idx, draws, tcfg: dict, size: int) -> torch.Tensor:
    """The augmented view of a batch of base images ``base_idx`` ([B, 3, S, S] floats in [0, 1],
    ``to_input``'s output) under one epoch's ``draws`` = (ox, oy, flip, crop boxes or None):
    the same view in training and in a replay of it (``attribution.metagradient``)."""
    ox, oy, flip, boxes = draws
    flips = flip[base_idx] if tcfg["augment_flip"] else None
    if boxes is not None:
        return augment(random_resized(x, boxes[:, base_idx], size, tcfg["crop_scale"]), ox[base_idx], oy[base_idx],
                       flips, 0)
    return augment(centre_crop(x, size), ox[base_idx], oy[base_idx], flips, tcfg["augment_shift"])   # centre view


def weighted_loss(logits, y, weights, smoothing: float) -> torch.Tensor:
    """sum_i w_i l_i / B: the batch loss with per-example weights (``weights`` None: the mean)."""
    if weights is None:
        return F.cross_entropy(logits, y, label_smoothing=smoothing)
    per_example = F.cross_entropy(logits, y, label_smoothing=smoothing, reduction="none")
    return (per_example * weights.to(per_example.dtype)).sum() / len(y)


def kept_order(order: torch.Tensor, kept: np.ndarray) -> torch.Tensor:
    """The base order with the images not in ``kept`` (a bool mask over base indices) dropped."""
    return order[torch.as_tensor(kept)[order]]


def augment(x: torch.Tensor, ox: torch.Tensor, oy: torch.Tensor, flip, shift: int) -> torch.Tensor:
    """Translate each image by (ox - shift, oy - shift) px (reflect padding) and flip it
    horizontally where ``flip``; batched, no per-image Python. ``flip`` None: no flips."""
    n, _, h, w = x.shape
    if shift > 0:
        padded = F.pad(x, (shift,) * 4, mode="reflect")
        rows = (oy.to(x.device)[:, None] + torch.arange(h, device=x.device))[:, :, None]   # [n, h, 1]
        cols = (ox.to(x.device)[:, None] + torch.arange(w, device=x.device))[:, None, :]   # [n, 1, w]
        x = padded[torch.arange(n, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    if flip is not None:
        x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(3), x)
    return x.contiguous()


@torch.no_grad()
def predictions(model, source, device, batch_size=512):
    """(predicted class, label) of every image of an ``ImageSource``, in index order."""
    model.eval()
    pred, labels = [], []
    for x, y in prefetch(source.in_order(batch_size)):
        pred.append(model(to_input(torch.from_numpy(x).to(device))).argmax(1).cpu().numpy())
        labels.append(y)
    if not pred:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(pred), np.concatenate(labels)


def make_model(info: dict, model_cfg: dict):
    """A fresh model of ``model_cfg`` (``model.arch`` by name, ``zoo``) for the data of ``info``,
    started from ``model.weights`` when given."""
    model = build(arch_of(model_cfg, info["num_classes"], info["image_size"], info["pixel_mean"], info["pixel_std"]))
    if model_cfg.get("weights"):
        load_weights(model, model_cfg["weights"])
    return model


def parameter_groups(model, weight_decay: float, decay_norms: bool = True):
    """What the optimizer decays: every parameter (``decay_norms``), or all but BatchNorm
    weights and biases and every bias (one-dimensional parameters)."""
    if decay_norms:
        return list(model.parameters())
    params = list(model.parameters())
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def sgd(groups, tcfg: dict):
    """The workflow's recipe: Nesterov momentum (``train.momentum``)."""
    return torch.optim.SGD(groups, lr=tcfg["lr"], momentum=tcfg["momentum"], weight_decay=tcfg["weight_decay"],
                           nesterov=True)


def adamw(groups, tcfg: dict):
    """The transformers' recipe: betas 0.9 / 0.999, decoupled weight decay."""
    return torch.optim.AdamW(groups, lr=tcfg["lr"], betas=(0.9, 0.999), weight_decay=tcfg["weight_decay"])


def onecycle(opt, tcfg: dict, total_steps: int):
    """Linear one-cycle over the learning rate, and the momentum or Adam's beta1 (``warmup_fraction``)."""
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tcfg["lr"], total_steps=total_steps,
                                               pct_start=warmup_fraction(total_steps), anneal_strategy="linear")


def cosine(opt, tcfg: dict, total_steps: int):
    """Linear warm-up over ``train.warmup`` of the steps, then cosine decay to 0 (``cosine_factor``)."""
    warmup = min(total_steps - 1, max(1, round(tcfg["warmup"] * total_steps))) if total_steps > 1 else 0
    return torch.optim.lr_scheduler.LambdaLR(opt, partial(cosine_factor, total=total_steps, warmup=warmup))


OPTIMIZERS = {"sgd": sgd, "adamw": adamw}        # train.optimizer (the schema's enum)
SCHEDULES = {"onecycle": onecycle, "cosine": cosine}   # train.schedule


def make_optimizer(model, tcfg: dict):
    """``train.optimizer`` (``OPTIMIZERS``; sgd when absent) over ``parameter_groups``."""
    return OPTIMIZERS[tcfg.get("optimizer", "sgd")](parameter_groups(model, tcfg["weight_decay"],
                                                                       tcfg["decay_norms"]), tcfg)


def make_schedule(opt, tcfg: dict, total_steps: int):
    """``train.schedule`` (``SCHEDULES``; onecycle when absent) over ``total_steps`` steps."""
    return SCHEDULES[tcfg.get("schedule", "onecycle")](opt, tcfg, total_steps)


def cosine_factor(step: int, total: int, warmup: int) -> float:
    """The learning rate of ``step`` relative to train.lr: (step + 1) / warmup during the
    warm-up, then 0.5 (1 + cos(pi t)) with t going from 0 to 1 over the remaining steps."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def step_schedule(tcfg: dict, total: int) -> tuple:
    """(learning rate [total], momentum [total]) of each step of the recipe, read off torch's
    own optimizer and scheduler (one-cycle cycles the momentum too; for adamw the momentum
    is beta1)."""
    opt = make_optimizer(torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(1))]), {**tcfg, "decay_norms": True})
    sched = make_schedule(opt, tcfg, total)
    lr, mu = [], []
    for _ in range(total):
        group = opt.param_groups[0]
        lr.append(group["lr"])
        mu.append(group["momentum"] if "momentum" in group else group["betas"][0])
        opt.step()
        sched.step()
    return lr, mu


def optimizer_buffers(model, opt) -> dict:
    """The optimizer's state per parameter as CPU tensors, to resume a run there: {param:
    momentum buffer} for sgd (the format model files always had), {"param:key": tensor}
    (Adam's step and moments) for the others."""
    out = {}
    for k, p in model.named_parameters():
        state = opt.state[p]
        if isinstance(opt, torch.optim.SGD):
            if "momentum_buffer" in state:
                out[k] = state["momentum_buffer"].detach().cpu().clone()
            continue
        for key, v in state.items():
            out[f"{k}:{key}"] = torch.as_tensor(v).detach().cpu().clone()
    return out


def restore_optimizer(model, opt, buffers: dict, device) -> None:
    """Put ``optimizer_buffers``' output (numpy arrays, from a model file) back into ``opt``."""
    params = dict(model.named_parameters())
    for name, value in buffers.items():
        param, _, key = name.partition(":")
        t = torch.from_numpy(value)
        opt.state[params[param]][key or "momentum_buffer"] = t if key == "step" else t.to(device)


def warmup_fraction(total_steps: int) -> float:
    """OneCycleLR's ``pct_start``: a quarter of the steps, as always, from 8 steps up.

    OneCycleLR ends its warm-up at step ``pct_start * total_steps - 1`` and divides by that
    number, so a quarter of exactly 4 steps (a tiny recipe: 2 epochs of 2 batches) raises
    ZeroDivisionError. Below 8 steps the warm-up ends half a step in (one step at the
    initial rate, then the linear anneal), which is defined for every step count.
    """
    if total_steps >= 8:
        return 0.25
    return 1.5 / total_steps if total_steps >= 2 else 0.5


def spawn_schedule(epochs: int, spawn_epoch: int, steps_base: int, steps_twin: int) -> tuple:
    """(total scheduler steps, steps already taken) of a twin that resumes its base run after
    ``spawn_epoch`` epochs of ``steps_base`` steps and trains the rest with ``steps_twin``."""
    return spawn_epoch * steps_base + (epochs - spawn_epoch) * steps_twin, spawn_epoch * steps_base


def train_member(data_path, out_path, member: int, cfg: dict, train_indices=None, spawn=None, mem_mb=None,
                 example_weights=None) -> dict:
    """Train ensemble member ``member`` with the recipe ``cfg`` (keys: seed, model, train).

    ``train_indices`` (sorted base indices) restricts training to a subset of the train
    split (an ablated condition), paired with the base run as the module describes.
    ``spawn`` = (base model file, epoch E): start from the base member's weights and
    optimizer state after epoch E instead of from scratch (``ablation.spawn_epoch``); the
    draws of epochs 1..E are replayed so epochs E+1.. see the base run's stream.
    ``mem_mb``: the job's memory; the kept images are held on the GPU when they fit half
    its free memory, else in RAM when they fit a quarter of ``mem_mb``
    (``loader.ImageSource``), else read batch by batch. ``example_weights`` [n_base] (masked
    retraining; exclusive with ``train_indices``): every image keeps its slot and its loss
    is weighted (0 removes it); a batch whose weights are all 1 takes the plain mean loss,
    so weights of 1 reproduce the base run bit for bit. On CUDA, batches not gathered on
    the device are pinned and copied asynchronously, then converted and augmented on the device, with cuDNN
    autotuning, under bf16 autocast when ``train.precision`` is bf16. The model and its
    batches are channels_last on CUDA when ``train.memory_format`` is auto or
    channels_last; the CPU always trains contiguous (``layout`` says why).
    Returns the metrics stored with the checkpoint.
    """
    tcfg, seed = cfg["train"], derive_seed(cfg["seed"], "member", member)
    seed_everything(seed)
    device = resolve_device(tcfg["device"])
    info = artifacts.base_info(data_path)
    n_base = info["n_train"]
    keep = np.arange(n_base) if train_indices is None else np.asarray(train_indices, np.int64)
    if len(keep) and (np.any(np.diff(keep) <= 0) or keep[0] < 0 or keep[-1] >= n_base):
        raise ValueError(f"train_indices must be sorted, unique base indices in 0..{n_base - 1}")
    kept = np.zeros(n_base, bool)
    kept[keep] = True
    weights = None
    if example_weights is not None:
        if train_indices is not None:
            raise ValueError("train_member: give train_indices or example_weights, not both")
        weights = torch.as_tensor(np.asarray(example_weights, np.float64), dtype=torch.float32)
        if weights.shape != (n_base,):
            raise ValueError(f"example_weights must have one weight per base image ({n_base})")
    train_src = ImageSource(data_path, "train", keep, mem_mb, device=device)
    test_src = ImageSource(data_path, "test", None, mem_mb)
    cuda = device.type == "cuda"
    model = make_model(info, cfg["model"]).to(device)
    channels_last = use_channels_last(tcfg["memory_format"], device.type)
    if cuda:
        torch.backends.cudnn.benchmark = True
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and tcfg["precision"] == "bf16")
    opt = make_optimizer(model, tcfg)
    smoothing = float(tcfg["label_smoothing"])
    epochs, bs = tcfg["epochs"], tcfg["batch_size"]
    steps_per_epoch = max(1, int(np.ceil(len(train_src) / bs)))
    start, total_steps, done_steps = 0, epochs * steps_per_epoch, 0
    if spawn is not None:
        start = int(spawn[1])
        total_steps, done_steps = spawn_schedule(epochs, start, max(1, int(np.ceil(n_base / bs))), steps_per_epoch)
    sched = make_schedule(opt, tcfg, total_steps)
    gen = torch.Generator().manual_seed(seed)
    shift = tcfg["augment_shift"]
    crops, size = tcfg["crop"] == "random_resized", info["image_size"]
    if spawn is not None:
        resume(model, opt, sched, spawn[0], start, done_steps, device)
        for _ in range(start):
            epoch_draws(gen, n_base, shift)
            if crops:
                crop_draws(gen, n_base)
    every = tcfg["checkpoint_every"]
    saved, momentum = {}, {}
    log.info("member %d: %d train images (%s), epochs %d..%d, device %s, %d threads", member, len(train_src),
             "held on " + str(train_src.device) if train_src.on_device else
             "held in RAM" if train_src.held else "read per batch", start + 1, epochs, device,
             torch.get_num_threads())

    def batches(order):
        for s in range(0, len(order), bs):
            base_idx = order[s:s + bs]
            if train_src.on_device:   # gathered on the GPU: nothing to copy or prefetch
                yield (base_idx, *train_src.device_batch(base_idx.numpy()))
                continue
            xb, yb = train_src.batch(base_idx.numpy())
            x, y = torch.from_numpy(xb), torch.from_numpy(yb)
            yield base_idx, (x.pin_memory() if cuda else x), (y.pin_memory() if cuda else y)

    for epoch in range(start + 1, epochs + 1):
        model.train()
        t0, total, n = time.time(), torch.zeros((), device=device), 0
        order, ox, oy, flip = epoch_draws(gen, n_base, shift)
        boxes = crop_draws(gen, n_base) if crops else None
        order = kept_order(order, kept)
        for base_idx, x, y in (batches(order) if train_src.on_device else prefetch(batches(order))):
            x = batch_view(to_input(x.to(device, non_blocking=True)), base_idx, (ox, oy, flip, boxes), tcfg, size)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            w = None if weights is None or bool((weights[base_idx] == 1).all()) else weights[base_idx].to(device)
            with autocast:
                loss = weighted_loss(model(x), y, w, smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach().float() * len(y)
            n += len(y)
        total = float(total) / n                   # one sync per epoch
        log.info("member %d epoch %d/%d loss %.4f (%.1fs)", member, epoch, epochs, total, time.time() - t0)
        if every and epoch % every == 0 and epoch != epochs:
            saved[epoch] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            momentum[epoch] = optimizer_buffers(model, opt)
    pred, y_test = predictions(model, test_src, device, bs)   # eval batches as large as training ones
    test_correct = pred == y_test
    metrics = {"test_acc": float(test_correct.mean()) if len(y_test) else 0.0,
               "final_loss": total, "n_train": int(len(train_src) if weights is None else (weights != 0).sum()),
               "seed": int(seed)}
    train_src.close()
    test_src.close()
    log.info("member %d: test acc %.4f", member, metrics["test_acc"])
    checkpoints.save(out_path, model, saved, metrics, cfg, arrays={"test_correct": test_correct}, momentum=momentum)
    return metrics


def resume(model, opt, sched, base_path, epoch: int, steps: int, device) -> None:
    """Load the base member's weights and momentum after ``epoch`` and step the schedule ``steps`` times."""
    name = f"epoch_{epoch:04d}"
    _, state = artifacts.model_state(base_path, name)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    restore_optimizer(model, opt, artifacts.optimizer_state(base_path, name), device)
    with warnings.catch_warnings():   # stepping the schedule alone is intended here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(steps):
            sched.step()


def train_stage(job) -> None:
    """Base members train on the whole train split; an ablated condition's on its kept images."""
    keep = artifacts.ablation(job.input["ablation"])["keep"] if "ablation" in job.input else None
    spawn = (job.input["spawn"], job.params["spawn_epoch"]) if "spawn" in job.input else None
    weights = None
    if keep is not None and job.params.get("retrain", "skip") == "masked":   # removed images keep their slots
        weights = np.zeros(artifacts.base_info(job.input["data"])["n_train"])
        weights[keep], keep = 1.0, None
    train_member(job.input["data"], job.output["model"], int(job.wildcards["member"]), job.params,
                 train_indices=keep, spawn=spawn, mem_mb=job.mem_mb, example_weights=weights)

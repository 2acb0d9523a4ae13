"""Exact attribution through the replayed training run: the metagradient (MAGIC's idea).

Paired retraining makes training a deterministic function of per-image loss weights w
(``model.train``, masked mode): w = 1 is the base run, w_i = 0 removes image i while every
batch, order and augmentation draw stays the base run's. For a readout R of the trained
model (a concept probe's mean output on its targets, evaluated as validate does: eval mode,
BatchNorm's running statistics), this module computes dR/dw_i for every training image i,
exactly, by reverse-mode differentiation through every optimiser step from the spawn epoch
E (``ablation.spawn_epoch``; 0 = from initialisation) to the end.

One training step maps the state s = (parameters theta, momentum buffers b, BatchNorm
running statistics r) to the next, replaying ``torch.optim.SGD`` (Nesterov, weight decay
per parameter group) under the one-cycle schedule (learning rate and momentum per step):

    L(theta; w) = sum_i w_i l_i(theta) / B             (batch of B, train-mode BatchNorm)
    d = grad L + wd theta;  b' = mu b + d;  theta' = theta - lr (d + mu b')
    r' = (1 - m) r + m (batch mean, unbiased batch variance at each BatchNorm's input)

The adjoint a = dR/ds runs backwards: a_t = a_{t+1}^T ds_{t+1}/ds_t, one vector-Jacobian
product of the step (a double backward through the network); the same product gives
dR/dw_i = a_{t+1}^T ds_{t+1}/dw_i for the batch's images, all at once, since w enters the
step as a tensor. Memory is one epoch: the states at each epoch's start are kept from a
first replay; each epoch's steps are recomputed from its start before running backwards
through them. Several readouts share the recomputation; each pays its own backward passes.

The result is exact for the replayed arithmetic. What it predicts is the linearisation
R(w) ~ R(1) + sum_i (w_i - 1) dR/dw_i: removing a set S predicts a change of
-sum_{i in S} dR/dw_i under masked retraining. ``replay`` computes R(w) for any w by the
same arithmetic (the finite-difference tests' ground truth); in float32 it is the training
stage's masked twin bit for bit (tested): the same loss, torch.optim.SGD's operations in
its order, torch's own running-statistics update where no graph is built.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch
from torch.func import functional_call

from .. import artifacts
from ..model import checkpoints
from ..model.loader import ImageSource
from ..model.resnet import to_input
from ..model.train import batch_view, crop_draws, epoch_draws, make_model, step_schedule, weighted_loss
from ..seeding import derive_seed, seed_everything

log = logging.getLogger(__name__)


class Recipe:
    """The base run of one member, as replayable steps: its draws, schedule and batches from
    epoch ``start`` (its state saved after that epoch) to the end."""

    def __init__(self, data_path, cfg: dict, member: int, start: int, device="cpu", mem_mb=None):
        self.tcfg, self.start = cfg["train"], int(start)
        self.device = torch.device(device)
        self.info = artifacts.base_info(data_path)
        self.n = self.info["n_train"]
        self.source = ImageSource(data_path, "train", None, mem_mb)
        bs, epochs = self.tcfg["batch_size"], self.tcfg["epochs"]
        self.spe = max(1, -(-self.n // bs))
        seed = derive_seed(cfg["seed"], "member", member)
        gen = torch.Generator().manual_seed(seed)
        crops = self.tcfg["crop"] == "random_resized"
        self.draws = []
        for epoch in range(1, epochs + 1):
            d = epoch_draws(gen, self.n, self.tcfg["augment_shift"])
            boxes = crop_draws(gen, self.n) if crops else None
            if epoch > self.start:
                self.draws.append((d[0], (d[1], d[2], d[3], boxes)))
        self.lr, self.mu = step_schedule(self.tcfg, epochs * self.spe)   # one-cycle cycles the momentum too
        self.groups = self.tcfg["weight_decay"], self.tcfg["decay_norms"]

    def steps(self, epoch_index: int):
        """(global step, base indices, input views [B,3,S,S], labels) of one replayed epoch."""
        order, draws = self.draws[epoch_index]
        bs, size = self.tcfg["batch_size"], self.info["image_size"]
        first = (self.start + epoch_index) * self.spe
        for j, s in enumerate(range(0, self.n, bs)):
            idx = order[s:s + bs]
            xb, yb = self.source.batch(idx.numpy())
            x = batch_view(to_input(torch.from_numpy(xb)).to(self.device), idx, draws, self.tcfg, size)
            yield first + j, idx, x, torch.from_numpy(yb).to(self.device)

    @property
    def epochs(self) -> int:
        return len(self.draws)

    def close(self):
        self.source.close()


class State:
    """theta, momentum and BatchNorm running statistics as lists of tensors, in the model's order."""

    def __init__(self, params: dict, momentum: dict, running: dict):
        self.params, self.momentum, self.running = params, momentum, running

    def tensors(self) -> list:
        return [*self.params.values(), *self.momentum.values(), *self.running.values()]

    def like(self, tensors) -> "State":
        it = iter(tensors)
        return State(*({k: next(it) for k in d} for d in (self.params, self.momentum, self.running)))

    def detach(self) -> "State":
        return self.like([t.detach() for t in self.tensors()])


class Network:
    """The model as a function of a ``State``, with BatchNorm's running statistics made
    differentiable: in training mode each BatchNorm's input gives the batch statistics of
    the running update; in eval mode the normalisation uses the state's statistics."""

    def __init__(self, model, dtype=torch.float32):
        self.model = model.to(dtype)
        self.dtype = dtype
        self.bns = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
        self.param_names = [k for k, _ in model.named_parameters()]
        self.fixed = {k: v for k, v in model.named_buffers() if not k.endswith(RUNNING)}
        self.captured, self.eval_stats = {}, None
        self.caller = Caller(self.model)
        for name, m in self.bns.items():
            m.register_forward_pre_hook(self._capture(name))
            m.register_forward_hook(self._normalise(name))

    def _capture(self, name):
        def hook(module, inputs):
            if module.training:
                x = inputs[0]
                self.captured[name] = (x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True))
        return hook

    def _normalise(self, name):
        def hook(module, inputs, output):
            if module.training or self.eval_stats is None:
                return output
            mean, var, w, b = self.eval_stats[name]
            shape = (1, -1, 1, 1)
            return (inputs[0] - mean.view(shape)) / torch.sqrt(var.view(shape) + module.eps) * w.view(shape) + \
                b.view(shape)
        return hook

    def state_of(self, model_state: dict, momentum: dict) -> State:
        """A ``State`` from a stored checkpoint ({name: array}) and its momentum buffers."""
        def t(a):
            return torch.as_tensor(np.asarray(a)).to(self.dtype)
        params = {k: t(model_state[k]) for k in self.param_names}
        mom = {k: t(momentum[k]) if k in momentum else torch.zeros_like(params[k]) for k in self.param_names}
        running = {f"{n}.{s}": t(model_state[f"{n}.{s}"]) for n in self.bns for s in RUNNING}
        return State(params, mom, running)

    def train_logits(self, state: State, x):
        """Train-mode logits; fills ``captured`` with each BatchNorm's batch statistics."""
        self.model.train()
        self.captured = {}
        self.updated = {k: v.detach().clone() for k, v in state.running.items()}   # torch's own update lands here
        return functional_call(self.model, {**state.params, **self.updated, **self.fixed}, (x,))

    def evaluated(self, state: State):
        """A callable ``model`` for readouts: eval mode, the state's (differentiable) weights and statistics."""
        net = self

        class Evaluated:
            def __call__(self, x):
                return self.run(lambda m: m(x))

            def pooled(self, x, layers):
                return self.run(lambda m: m.pooled(x, layers))

            def layer_outputs(self, x, layers):
                return self.run(lambda m: m.layer_outputs(x, layers))

            def run(self, fn):
                net.model.eval()
                net.eval_stats = {n: (state.running[f"{n}.running_mean"], state.running[f"{n}.running_var"],
                                      state.params[f"{n}.weight"], state.params[f"{n}.bias"]) for n in net.bns}
                # the modules' own normalisation reads detached statistics; the hooks replace it
                values = {**state.params, **{k: v.detach() for k, v in state.running.items()}, **net.fixed}
                try:
                    return functional_call(net.caller, {f"model.{k}": v for k, v in values.items()}, (fn,))
                finally:
                    net.eval_stats = None
        return Evaluated()


RUNNING = ("running_mean", "running_var")


class Caller(torch.nn.Module):
    """``forward(fn) = fn(model)``: any method of the model under ``functional_call``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, fn):
        return fn(self.model)


def step(net: Network, recipe: Recipe, state: State, t: int, x, y, w, create_graph: bool) -> State:
    """One SGD step (``torch.optim.SGD`` with Nesterov momentum and the recipe's weight decay)
    of the batch (x, y) with loss weights ``w`` [B] at global step ``t``."""
    tcfg = recipe.tcfg
    logits = net.train_logits(state, x)
    plain = not w.requires_grad and bool((w == 1).all())     # the training stage's own loss, bit for bit
    loss = weighted_loss(logits, y, None if plain else w, float(tcfg["label_smoothing"]))
    params = list(state.params.values())
    grads = torch.autograd.grad(loss, params, create_graph=create_graph)
    lr, mu = recipe.lr[t], recipe.mu[t]
    wd, decay_norms = recipe.groups
    new_p, new_b = {}, {}
    for (k, p), g in zip(state.params.items(), grads):   # torch.optim.SGD's operations, in its order
        d = g.add(p, alpha=wd) if (decay_norms or p.ndim > 1) and wd else g
        b = state.momentum[k].mul(mu).add(d)
        new_b[k] = b
        new_p[k] = p.add(d.add(b, alpha=mu), alpha=-lr)
    if not create_graph:             # torch's own running update: the training stage's values, bit for bit
        return State(*({k: v.detach() for k, v in d.items()} for d in (new_p, new_b, net.updated)))
    new_r = {}
    for name, m in net.bns.items():
        mean, var = net.captured[name]
        new_r[f"{name}.running_mean"] = (1 - m.momentum) * state.running[f"{name}.running_mean"] + m.momentum * mean
        new_r[f"{name}.running_var"] = (1 - m.momentum) * state.running[f"{name}.running_var"] + m.momentum * var
    return State(new_p, new_b, new_r)


def batch_weights(weights, idx, dtype, device):
    return torch.as_tensor(np.asarray(weights)[idx.numpy()], dtype=dtype, device=device)


def run_epochs(net, recipe, state: State, weights, keep_epoch_starts: bool = False):
    """Replay every epoch from ``state`` with loss weights ``weights`` [n]; returns the final
    state (and the state at each epoch's start)."""
    starts = []
    for e in range(recipe.epochs):
        if keep_epoch_starts:
            starts.append(state)
        for t, idx, x, y in recipe.steps(e):
            state = run_step(net, recipe, state, t, idx, x, y, weights, False)[0]
    return (state, starts) if keep_epoch_starts else state


def start_state(net: Network, model_path, start: int, data_path=None, cfg=None, member: int = 0) -> State:
    """The base member's state after epoch ``start``; 0: its initialisation, which is not
    stored, rebuilt as the training stage draws it from the member's seed (zero momentum:
    torch's first step sets the buffer to the gradient, which is mu * 0 + d)."""
    if start == 0:
        seed_everything(derive_seed(cfg["seed"], "member", member))
        init = make_model(artifacts.base_info(data_path), cfg["model"])
        return net.state_of({k: v.numpy() for k, v in init.state_dict().items()}, {})
    name = f"epoch_{start:04d}"
    _, st = artifacts.model_state(model_path, name)
    return net.state_of(st, artifacts.optimizer_state(model_path, name))


def readout_value(net: Network, state: State, readout) -> torch.Tensor:
    return readout(net.evaluated(state))


def replay(net: Network, recipe: Recipe, state: State, weights, readouts: dict) -> dict:
    """{key: R(w)}: each readout of the model trained from ``state`` with loss weights ``weights``."""
    final = run_epochs(net, recipe, state, weights)
    with torch.no_grad():
        return {k: float(readout_value(net, final, r)) for k, r in readouts.items()}


def metagradients(net: Network, recipe: Recipe, state: State, readouts: dict, progress=None) -> tuple:
    """({key: dR/dw [n] float64} at w = 1, {key: R(1)}) for every readout ``readouts`` {key:
    fn(model) -> scalar tensor}, through every step of ``recipe`` from ``state``."""
    ones = np.ones(recipe.n)
    final, starts = run_epochs(net, recipe, state, ones, keep_epoch_starts=True)
    adjoint, values = {}, {}
    for key, r in readouts.items():
        leaves = final.like([v.detach().requires_grad_(True) for v in final.tensors()])
        with differentiating():
            value = readout_value(net, leaves, r)
            grads = torch.autograd.grad(value, leaves.tensors(), allow_unused=True)
        adjoint[key] = [torch.zeros_like(v) if g is None else g for v, g in zip(leaves.tensors(), grads)]
        values[key] = float(value.detach())
    out = {key: np.zeros(recipe.n, np.float64) for key in readouts}
    for e in reversed(range(recipe.epochs)):
        states, batches = [starts[e]], list(recipe.steps(e))
        for t, idx, x, y in batches[:-1]:          # the epoch's states, recomputed from its start
            states.append(run_step(net, recipe, states[-1], t, idx, x, y, ones, False)[0])
        for (t, idx, x, y), s in zip(reversed(batches), reversed(states)):
            with differentiating():
                new, inputs, w = run_step(net, recipe, s, t, idx, x, y, ones, True)
            outputs = new.tensors()
            keys = list(readouts)
            for i, key in enumerate(keys):
                with differentiating():
                    grads = torch.autograd.grad(outputs, [*inputs.tensors(), w], grad_outputs=adjoint[key],
                                                retain_graph=i < len(keys) - 1, allow_unused=True)
                adjoint[key] = [torch.zeros_like(v) if g is None else g
                                for v, g in zip(inputs.tensors(), grads[:-1])]
                out[key][idx.numpy()] += grads[-1].detach().double().cpu().numpy()
        if progress is not None:
            progress(e)
    return out, values


def differentiating():
    """The context of every backward the metagradient builds or runs: PyTorch's native CPU
    convolutions instead of oneDNN's. Under oneDNN's AVX2 kernels (CPUs without AVX-512)
    these backward passes corrupted the heap and killed the job (double free, SIGSEGV);
    the replayed forward steps keep the training stage's kernels, so the trajectory the
    derivative is taken along is the training run's, bit for bit."""
    return torch.backends.mkldnn.flags(enabled=False)


def run_step(net, recipe, state: State, t, idx, x, y, weights, create_graph: bool):
    """(next state, the step's input state as graph leaves, its batch weights as a leaf)."""
    leaves = state.like([v.detach().requires_grad_(True) for v in state.tensors()])
    w = batch_weights(weights, idx, net.dtype, x.device).requires_grad_(create_graph)
    with torch.enable_grad():
        new = step(net, recipe, leaves, t, x.to(net.dtype), y, w, create_graph)
    return new, leaves, w


def member_scores(model_path, data_path, cfg: dict, member: int, start: int, readouts: dict, device="cpu",
                  mem_mb=None) -> dict:
    """{key: dR/dw [n]} of member ``member`` (its base model file ``model_path``) from its state
    after epoch ``start`` to the end, for each readout {key: fn(model) -> scalar}."""
    begin = time.process_time()
    net = Network(checkpoints.load(model_path, "final", device, cfg.get("token_pool", "mean")))
    recipe = Recipe(data_path, cfg, member, start, device, mem_mb)
    state = start_state(net, model_path, start, data_path, cfg, member)
    scores, values = metagradients(net, recipe, state, readouts,
                                   progress=lambda e: log.info("member %d: epoch %d back (%d readouts, %.0f CPU s)",
                                                               member, recipe.start + e + 1, len(readouts),
                                                               time.process_time() - begin))
    recipe.close()
    log.info("member %d: readouts at w = 1: %s", member, values)
    return scores


"""The estimator registry: every way the workflow attributes a concept to training images.

An estimator turns what the score stage holds for each model checkpoint m of the base
ensemble into per-target scores [T, n] (and the same for the held-out negatives scored
beside the targets), in the format ``artifacts.write_scores`` writes for TRAK. Ablation,
validate, the LDS stage and the report read every estimator's scores the same way.

What the score stage hands each estimator, per checkpoint m (``Checkpoint``):

- ``x``: the training images' projected gradients of TRAK's margin output, phi_m(i) [n, k]
  (the stored features);
- ``x_inv``: X_m (X_m^T X_m + lam I)^-1 [n, k] (TRAK's preconditioned features);
- ``out_to_loss``: 1 - p_m(y_i | x_i) [n];
- ``g``: {target set: projected gradients of the readout g_m(t) [T + Tn, k]}, with the same
  projection (empty where no estimator of the job reads gradients; ``rows`` then gives each
  target set's number of rows);
- ``lr_weight``: the sum of the learning rates of the steps the checkpoint closes (TracIn);
- ``acts``/``target_acts``: pooled activations of the training images and of the targets at
  each probed layer (final checkpoints only: the similarity baseline);
- ``final``: the member's final model, the readouts as functions and the training data
  (final checkpoints only: EK-FAC, which computes its own gradients and curvature);
- ``replay``: the member's base model file, the training data and recipe, and the readouts
  as functions (final checkpoints only: the metagradient, which replays the training run).

Formulas (means over models m; c = the probe target; i = a training image):

- ``trak``: mean_m[x_inv_m g_m(c)]_i * mean_m out_to_loss_m(i) (traker's ensemble rule);
- ``grad_dot``: mean_m phi_m(i) . g_m(c) (no preconditioner);
- ``grad_cos``: mean_m cos(phi_m(i), g_m(c));
- ``tracin``: mean over members of sum over checkpoints of lr_weight_m * out_to_loss_m(i) *
  phi_m(i) . g_m(c): TracIn-CP, since the training loss's gradient is -(1 - p) times the
  margin's gradient;
- ``ekfac``: -mean_m g_m(c)^T (G_m + lam I)^-1 grad L_m(i) on each member's final model,
  with G_m the EK-FAC approximation of the Fisher of its Linear and Conv2d weights, from
  kronfluence (``ekfac.py``): unprojected gradients;
- ``metagradient``: mean_m dR_m/dw_i, the exact derivative of the readout R (the probe's
  mean output on the targets; on the negatives for their row) with respect to image i's
  loss weight, through member m's replayed training from ``ablation.spawn_epoch`` to the
  end (``metagradient.py``): the aggregate readouts only, so every target's row is the
  same (as every negative's). Scored at each concept's location layer and the layers
  ``ablation.layers`` names; its files at other layers say they are unscored;
- ``similarity``: cos(a(i), mean of the targets' a) at the probed layer (a: pooled
  activations of the final model), mean over members; the negatives' row uses the
  negatives' mean;
- ``hardest``: mean_m out_to_loss_m(i), the same for every target (how badly the
  ensemble fits each image);
- ``random``: seeded standard normal noise per (target, image): the null.

Numpy float64 arithmetic on what the stage hands over (TRAK's products run on CUDA where
``trak.device`` says so).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..seeding import rng as seeded_rng


class Estimator:
    """One estimator's running state over the checkpoints of the base ensemble.
    ``uses``: what it reads ("gradients", "activations", "out_to_loss" or "nothing")."""

    name = ""
    uses = "nothing"
    formula = ""

    def __init__(self, seed: int = 0):
        self.seed, self.acc, self.n_models, self.seconds = seed, {}, 0, 0.0

    def add(self, ck: "Checkpoint") -> None:
        start = time.process_time()
        self._add(ck)
        self.n_models += 1
        self.seconds += time.process_time() - start

    def _add(self, ck: "Checkpoint") -> None:
        pass

    def _sum(self, key, value) -> None:
        self.acc[key] = value if key not in self.acc else self.acc[key] + value

    def scores(self, key, n_targets: int, n_train: int) -> tuple:
        """(per_target [T, n], per_negative [Tn, n] or None) for the target set ``key`` whose
        first ``n_targets`` rows are the targets and the rest the negatives."""
        start = time.process_time()
        both = self._scores(key, n_train)
        self.seconds += time.process_time() - start
        if both is None:
            return None, None
        return both[:n_targets], (both[n_targets:] if len(both) > n_targets else None)

    def _scores(self, key, n_train: int):
        raise NotImplementedError


class Checkpoint:
    """What one model checkpoint contributes (see the module docstring)."""

    def __init__(self, member: int, ckpt: str, x, x_inv, out_to_loss, g: dict, lr_weight: float = 1.0,
                 acts: dict | None = None, target_acts: dict | None = None, rows: dict | None = None,
                 final: dict | None = None, replay: dict | None = None):
        self.member, self.ckpt = member, ckpt
        # the member's final model, its readouts and the training data (final checkpoints only,
        # where an estimator reads the model itself): {"model", "readouts", "train", "size",
        # "batch_size", "device"}
        self.final = final
        # the member's training run to replay (final checkpoints only, where an estimator
        # differentiates through it): {"model_path", "data_path", "cfg", "start", "readouts", "device"}
        self.replay = replay
        self.x, self.x_inv, self.out_to_loss, self.g = x, x_inv, np.asarray(out_to_loss, np.float64), g
        self.lr_weight, self.acts, self.target_acts = lr_weight, acts, target_acts
        # {target set: rows}; given where no estimator needs the gradients (then ``g`` is empty)
        self.rows = {key: len(v) for key, v in g.items()} if rows is None else rows


def _f64(a) -> np.ndarray:
    return np.asarray(a, np.float64)


def _rows_normalised(a) -> np.ndarray:
    a = _f64(a)
    norm = np.linalg.norm(a, axis=1, keepdims=True)
    return a / np.where(norm > 0, norm, 1.0)


class Ensemble:
    """TRAK's ensemble rule, one model at a time: ``add(x_xtx_inv_m [n,k], {key: g_m [T,k]},
    out_to_loss_m [n])`` per model m, then ``scores(key)`` -> [T, n] =
    (mean_m X_m(X_m^T X_m)^-1 g_m) * mean_m out_to_loss_m. Only the running sums
    ([n, T] per key) are held, never a second model's features. ``device`` cuda: the
    products run there (float64); else numpy float64."""

    def __init__(self, device=None):
        self.device = torch.device(device) if device is not None else None
        self.cuda = self.device is not None and self.device.type == "cuda"
        self.acc, self.otl, self.n = {}, None, 0

    def _float64(self, a):
        """``a`` as float64 where the products run: a CUDA tensor, else a numpy array."""
        if self.cuda:
            return torch.as_tensor(np.asarray(a)).to(self.device, torch.float64)
        return np.asarray(a, np.float64)

    def add(self, x, grads: dict, out_to_loss) -> None:
        x = self._float64(x)
        for key, g in grads.items():
            kernel = x @ self._float64(g).T
            self.acc[key] = kernel if key not in self.acc else self.acc[key] + kernel
        self.otl = np.asarray(out_to_loss, np.float64) if self.otl is None else self.otl + out_to_loss
        self.n += 1

    def scores(self, key) -> np.ndarray:
        acc = self.acc[key]
        if self.cuda:
            acc = acc.cpu().numpy()
        return ((acc / self.n) * (self.otl / self.n)[:, None]).T


def combine(parts) -> np.ndarray:
    """TRAK's ensemble rule over models m: parts = [(x_xtx_inv_m [n,k], target_grads_m [T,k],
    out_to_loss_m [n]), ...] -> scores [T, n] (``Ensemble`` with one target set).

    ``parts`` may be a generator: one model's features are held in memory at a time.
    """
    ens = Ensemble()
    for x, g, o in parts:
        ens.add(x, {0: g}, o)
    return ens.scores(0)


class Trak(Estimator):
    name, uses = "trak", "gradients"
    formula = "mean_m[X_m (X_m^T X_m + lam I)^-1 g_m(c)]_i * mean_m (1 - p_m(y_i))"

    def __init__(self, seed: int = 0, device=None):
        super().__init__(seed)
        self.ens = Ensemble(device)

    def _add(self, ck):
        self.ens.add(ck.x_inv, ck.g, ck.out_to_loss)

    def _scores(self, key, n_train):
        return self.ens.scores(key)


class GradDot(Estimator):
    name, uses = "grad_dot", "gradients"
    formula = "mean_m phi_m(i) . g_m(c)"
    normalise = False        # grad_cos: both sides to unit length first

    def _add(self, ck):
        prepare = _rows_normalised if self.normalise else _f64
        x = prepare(ck.x)
        for key, g in ck.g.items():
            self._sum(key, x @ prepare(g).T)

    def _scores(self, key, n_train):
        return (self.acc[key] / self.n_models).T


class GradCos(GradDot):
    name = "grad_cos"
    formula = "mean_m cos(phi_m(i), g_m(c))"
    normalise = True


class MeanOverMembers(Estimator):
    """Sums over checkpoints within a member, then the mean over members."""

    def __init__(self, seed: int = 0):
        super().__init__(seed)
        self.members = set()

    def add(self, ck):
        super().add(ck)
        self.members.add(ck.member)

    def _scores(self, key, n_train):
        if key not in self.acc:      # similarity's margin: no activations to compare
            return None
        return (self.acc[key] / len(self.members)).T


class TracIn(MeanOverMembers):
    name, uses = "tracin", "gradients"
    formula = "mean_members sum_checkpoints eta_m (1 - p_m(y_i)) phi_m(i) . g_m(c)"

    def _add(self, ck):
        x = _f64(ck.x) * (ck.lr_weight * ck.out_to_loss)[:, None]
        for key, g in ck.g.items():
            self._sum(key, x @ _f64(g).T)


class Similarity(MeanOverMembers):
    name, uses = "similarity", "activations"
    formula = "mean_members cos(a_m(i), mean_t a_m(t)) at the probed layer"

    def _add(self, ck):
        if ck.acts is None:          # activations come with each member's final checkpoint only
            return
        for key, (layer, n_targets) in ck.target_acts["keys"].items():
            a = _rows_normalised(ck.acts[layer])
            t = _f64(ck.target_acts[key])
            rows = [t[:n_targets].mean(0)] + ([t[n_targets:].mean(0)] if len(t) > n_targets else [])
            means = _rows_normalised(np.stack(rows))
            cos = a @ means.T                                                    # [n, 1 or 2]
            self._sum(key, np.concatenate([np.repeat(cos[:, :1], n_targets, 1),
                                           np.repeat(cos[:, 1:], len(t) - n_targets, 1)], 1))


class Ekfac(MeanOverMembers):
    """EK-FAC influence (kronfluence) of each member's final model: ``ekfac.influence``."""
    name, uses = "ekfac", "model"
    formula = "-mean_members g_m(c)^T (G_m + lam I)^-1 grad L_m(i), G_m the EK-FAC Fisher (kronfluence)"

    def _add(self, ck):
        if ck.final is None:         # the final model comes with each member's last checkpoint only
            return
        from .ekfac import influence

        f = ck.final
        for key, s in influence(f["model"], f["train"], f["readouts"], self.seed, f["batch_size"],
                                cpu=f["device"].type == "cpu", size=f["size"]).items():
            self._sum(key, s.T)


class Metagradient(MeanOverMembers):
    """The readouts' exact derivatives through each member's replayed training: ``metagradient``."""
    name, uses = "metagradient", "replay"
    formula = "mean_members dR_m/dw_i through member m's replayed training from ablation.spawn_epoch (masked)"

    def _add(self, ck):
        if ck.replay is None:        # the run is replayed once per member, with its last checkpoint
            return
        from .metagradient import member_scores

        r = ck.replay
        readouts = {(key, side): fn for key, sides in r["readouts"].items() for side, (fn, _) in sides.items()}
        got = member_scores(r["model_path"], r["data_path"], r["cfg"], ck.member, r["start"], readouts, r["device"])
        for key, sides in r["readouts"].items():
            rows = [np.repeat(got[(key, side)][:, None], count, 1) for side, (_, count) in sides.items()]
            self._sum(key, np.concatenate(rows, 1))


class Hardest(Estimator):
    name, uses = "hardest", "out_to_loss"
    formula = "mean_m (1 - p_m(y_i)), the same for every target"

    def __init__(self, seed: int = 0):
        super().__init__(seed)
        self.otl, self.rows = None, {}

    def _add(self, ck):
        self.otl = ck.out_to_loss if self.otl is None else self.otl + ck.out_to_loss
        self.rows.update(ck.rows)

    def scores(self, key, n_targets, n_train):
        start = time.process_time()
        per_target = np.broadcast_to(self.otl / self.n_models, (n_targets, n_train)).copy()
        self.seconds += time.process_time() - start
        return per_target, None        # one score per image: it predicts no change of the selectivity


class Random(Estimator):
    name, uses = "random", "nothing"
    formula = "seeded standard normal noise per (target, image): the null"

    def __init__(self, seed: int = 0):
        super().__init__(seed)
        self.rows = {}

    def _add(self, ck):
        self.rows.update(ck.rows)

    def _scores(self, key, n_train):
        return seeded_rng(self.seed, "estimator", "random", *map(str, key)).standard_normal((self.rows[key], n_train))


REGISTRY = {cls.name: cls for cls in (Trak, GradDot, GradCos, TracIn, Ekfac, Metagradient, Similarity, Hardest,
                                       Random)}
NAMES = tuple(REGISTRY)
DEFAULT = "trak"


def make(name: str, seed: int = 0, device=None) -> Estimator:
    """A fresh estimator; ``device`` (cuda) runs TRAK's products there."""
    if name not in REGISTRY:
        raise ValueError(f"attribution.estimators: unknown estimator {name!r} (have {', '.join(NAMES)})")
    return Trak(seed, device) if name == "trak" else REGISTRY[name](seed)


RAW_GRADIENTS = ("grad_dot", "grad_cos", "tracin")   # read the unpreconditioned features


def needs(names, what: str, raw: bool = False) -> bool:
    """Whether any of ``names`` uses ``what`` (``raw``: the unpreconditioned gradients)."""
    if raw:
        return any(n in RAW_GRADIENTS for n in names)
    return any(REGISTRY[n].uses == what for n in names)


def lr_weights(checkpoints, epochs: int, steps_per_epoch: int, tcfg: dict) -> dict:
    """{checkpoint: the sum of the learning rates of the steps since the previous checkpoint
    in ``checkpoints``}, replaying the training recipe's schedule (``model.train``):
    TracIn-CP's step weights. ``tcfg``: the recipe (lr, and optimizer and schedule when set)."""
    from ..model.train import step_schedule

    rates, _ = step_schedule({"momentum": 0.9, "weight_decay": 0.0, **tcfg}, epochs * steps_per_epoch)
    ends = {c: (epochs if c == "final" else int(c.split("_")[1])) * steps_per_epoch for c in checkpoints}
    out, previous = {}, 0
    for c in sorted(checkpoints, key=lambda c: ends[c]):
        out[c] = float(np.sum(rates[previous:ends[c]]))
        previous = ends[c]
    return out

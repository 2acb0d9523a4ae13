"""Stage 4: linear concept probes and the L1-path probing-sparsity measure.

Dense probe: standardise (fit on the probe set's train split), then L2 logistic
regression with C picked by stratified cross-validation on the train split. Accuracy is
balanced accuracy on the held-out split.

Sparsity: walk an L1 regularisation path (C from sklearn's ``l1_min_c`` upward, log
spaced); k is the smallest number of non-zero channels of a path probe whose held-out
balanced accuracy reaches ``threshold`` x the dense probe's. If no point reaches it, k is
the number of channels and ``reached`` is False. The path's solver (liblinear) shuffles
with a seed derived from the config's seed, the member, the layer and the concept, so the
same activations always give the same k.
"""
from __future__ import annotations

import logging
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.svm import l1_min_c

from .. import artifacts
from ..seeding import derive_seed

log = logging.getLogger(__name__)


def standardise(x_train: np.ndarray):
    mean = x_train.mean(0)
    scale = x_train.std(0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    return mean, scale


def fit_dense(x_tr, y_tr, Cs, seed: int, max_iter: int = 2000):
    """Standardised L2 logistic probe, C chosen by 5-fold CV. Returns a dict of arrays."""
    mean, scale = standardise(x_tr)
    z = (x_tr - mean) / scale
    folds = StratifiedKFold(n_splits=min(5, int(np.bincount(y_tr).min())), shuffle=True, random_state=seed)
    best_C, best = Cs[0], -np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if len(Cs) > 1:
            for C in Cs:
                score = cross_val_score(LogisticRegression(C=C, max_iter=max_iter), z, y_tr, cv=folds,
                                        scoring="balanced_accuracy").mean()
                if score > best + 1e-12:
                    best_C, best = C, score
        clf = LogisticRegression(C=best_C, max_iter=max_iter).fit(z, y_tr)
    return {"coef": clf.coef_[0].astype(np.float64), "intercept": float(clf.intercept_[0]),
            "mean": mean, "scale": scale, "C": float(best_C)}


def decision_function(probe: dict, x: np.ndarray) -> np.ndarray:
    return ((x - probe["mean"]) / probe["scale"]) @ probe["coef"] + probe["intercept"]


def balanced_accuracy(probe: dict, x, y) -> float:
    return float(balanced_accuracy_score(y, (decision_function(probe, x) > 0).astype(int)))


def sparsity(x_tr, y_tr, x_te, y_te, mean, scale, dense_acc: float, threshold: float,
             n_points: int = 30, span: float = 1e3, max_iter: int = 2000, seed: int = 0) -> dict:
    """Smallest channel count k on the L1 path reaching ``threshold * dense_acc`` held-out."""
    z_tr, z_te = (x_tr - mean) / scale, (x_te - mean) / scale
    c0 = l1_min_c(z_tr, y_tr, loss="log")
    Cs = c0 * np.logspace(0, np.log10(span), n_points)
    nnz, accs = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for C in Cs:
            clf = LogisticRegression(C=C, l1_ratio=1.0, solver="liblinear", max_iter=max_iter,
                                     intercept_scaling=100.0, random_state=seed).fit(z_tr, y_tr)
            nnz.append(int(np.count_nonzero(clf.coef_[0])))
            accs.append(float(balanced_accuracy_score(y_te, clf.predict(z_te))))
    nnz, accs = np.array(nnz), np.array(accs)
    ok = (accs >= threshold * dense_acc) & (nnz > 0)
    reached = bool(ok.any())
    k = int(nnz[ok].min()) if reached else int(x_tr.shape[1])
    return {"k": k, "reached": reached, "path_C": Cs, "path_nnz": nnz, "path_acc": accs}


def fit_concept(probe_set_path, activation_paths: dict, out_path, cfg: dict, concept: str) -> None:
    """Probes for one concept: every member (``activation_paths``: member -> file) x layer."""
    pcfg = cfg["probes"]
    ps = artifacts.probe_set(probe_set_path, images=False)
    y, held = ps["labels"], ps["heldout"]
    layers = list(cfg["layers"])
    members = sorted(activation_paths)
    fits = {}
    for m in members:
        acts = artifacts.activations(activation_paths[m])
        for layer in layers:
            x = acts[layer].astype(np.float64)
            dense = fit_dense(x[~held], y[~held], pcfg["Cs"], cfg["seed"], pcfg["max_iter"])
            acc = balanced_accuracy(dense, x[held], y[held])
            sp = sparsity(x[~held], y[~held], x[held], y[held], dense["mean"], dense["scale"], acc,
                          pcfg["sparsity_threshold"], pcfg["path_points"], pcfg["path_span"], pcfg["max_iter"],
                          seed=derive_seed(cfg["seed"], "sparsity-path", concept, m, layer))
            fits[(m, layer)] = {"probe": dense, "path": sp, "heldout_bal_acc": acc,
                                "train_bal_acc": balanced_accuracy(dense, x[~held], y[~held]),
                                "sparsity_k": sp["k"], "sparsity_reached": sp["reached"], "n_channels": x.shape[1]}
            log.info("member %s %-7s acc %.3f (C=%g) sparsity k=%d/%d%s", m, layer, acc, dense["C"], sp["k"],
                     x.shape[1], "" if sp["reached"] else " (not reached)")
    artifacts.write_probes(out_path, cfg, layers, members, fits, heldout_counts=np.bincount(y[held], minlength=2))


def probes_stage(job) -> None:
    """``input``: the concept's probe set and {member: activations file}."""
    acts = {int(m): p for m, p in job.input["activations"].items()}
    fit_concept(job.input["probe_set"], acts, job.output["probes"], job.params, job.wildcards["concept"])

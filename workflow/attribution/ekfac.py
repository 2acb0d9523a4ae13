"""EK-FAC influence of training images on a readout, through kronfluence.

kronfluence (Bae, Grosse et al.) is the maintained implementation of the EK-FAC influence
functions of Grosse et al. (2023): the Gauss-Newton Hessian of each Linear and Conv2d
layer is approximated by a Kronecker product of activation and gradient covariances whose
eigenbasis is kept and whose eigenvalues are refitted (eigenvalue-corrected K-FAC). We call
it, and do not re-implement it; docs/method.md says why kronfluence rather than dattri.

For one model, a training loss (summed cross-entropy; the Fisher's labels are sampled from
the model with a seeded generator, so the factors are the same bytes on every run) and a
readout f (a concept probe's output at a layer, or the classification margin), kronfluence
computes for every query q and training image i

    s(q, i) = grad f(q)^T (G + lam I)^-1 grad L(i)

with G the EK-FAC curvature and lam its damping heuristic (0.1 x the mean eigenvalue). To
first order, removing image i changes f(q) by s(q, i) / n; the registry's convention is
TRAK's (a positive score supports the readout: removing the image lowers it), so this
module returns -s. Only Linear and Conv2d weights are tracked (kronfluence's scope):
BatchNorm's scale and shift are left out, and the docs say so.

Memory: one block of training images is read at a time (``BlockDataset``); the
preconditioned query gradients of one target set ([rows, parameters] floats) are held
while the training set streams past them.
"""
from __future__ import annotations

import copy
import logging
import tempfile
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from .. import artifacts
from ..model.resnet import to_input

log = logging.getLogger(__name__)

#: kronfluence's damping: None = its heuristic, 0.1 x the mean eigenvalue of the curvature
DAMPING = None


class BlockDataset(torch.utils.data.Dataset):
    """(image tensor, label) of the training set, read from the base file one block at a
    time (the loaders here read in order, so each block is read once per pass)."""

    def __init__(self, data_path, block: int = 256):
        self.path, self.block = data_path, block
        self.size = artifacts.base_info(data_path)["image_size"]
        reader = artifacts.BaseReader(data_path, "train")
        self.n, self.labels = reader.shape[0], np.asarray(reader.labels, np.int64)
        reader.close()
        self.reader, self.cached = None, (None, None)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        start = (i // self.block) * self.block
        if self.cached[0] != start:
            if self.reader is None:
                self.reader = artifacts.BaseReader(self.path, "train")
            idx = np.arange(start, min(self.n, start + self.block))
            self.cached = (start, to_input(self.reader.read(idx), self.size))
        return self.cached[1][i - start], torch.tensor(self.labels[i])


class Readouts:
    """The query side: {target set: (fn(model, x[, aux]) -> [B], images uint8 [Q, ...], aux or None)}."""

    def __init__(self, readouts: dict, size: int | None = None):
        self.readouts, self.size = readouts, size

    def dataset(self, key):
        fn, images, aux = self.readouts[key]
        x = to_input(images, self.size)
        extra = torch.zeros(len(x), dtype=torch.int64) if aux is None else torch.as_tensor(np.asarray(aux, np.int64))
        return torch.utils.data.TensorDataset(x, extra)


def task_for(readouts: dict, seed: int):
    """A kronfluence Task: summed cross-entropy as the training loss (labels sampled from the
    model with a seeded generator for the true Fisher), and the readout of the current
    target set as the measurement (``task.key`` selects it)."""
    from kronfluence.task import Task

    class ReadoutTask(Task):
        def __init__(self):
            self.key, self.generator = None, torch.Generator().manual_seed(int(seed))

        def compute_train_loss(self, batch, model, sample=False):
            x, y = batch
            logits = model(x)
            if sample:
                with torch.no_grad():
                    probs = torch.softmax(logits.detach().double(), -1).cpu()
                    y = torch.multinomial(probs, 1, generator=self.generator).squeeze(1).to(logits.device)
            return F.cross_entropy(logits, y, reduction="sum")

        def compute_measurement(self, batch, model):
            x, aux = batch
            fn = readouts[self.key][0]
            return (fn(model, x) if readouts[self.key][2] is None else fn(model, x, aux)).sum()

    return ReadoutTask()


def influence(model, train, readouts: dict, seed: int, batch_size: int = 64, cpu: bool = True,
              damping=DAMPING, size: int | None = None) -> dict:
    """{target set: -s [Q, n] float64}: EK-FAC influence of every training image (``train``:
    a Dataset of (image tensor, label), e.g. ``BlockDataset``) on each query row of each
    target set (the module docstring's s, in TRAK's sign). ``readouts``: {target set: (fn,
    uint8 images, aux or None)}; ``size``: the images' centre view. ``model`` is not
    modified (kronfluence wraps a copy)."""
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments

    torch.manual_seed(int(seed))
    task = task_for(readouts, seed)
    wrapped = prepare_model(copy.deepcopy(model).eval(), task)
    queries = Readouts(readouts, size)
    out = {}
    with tempfile.TemporaryDirectory(prefix="ekfac-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)       # kronfluence's torch.cuda.amp calls
        analyzer = Analyzer("ekfac", wrapped, task, cpu=cpu, disable_tqdm=True, output_dir=tmp,
                            log_level=logging.WARNING)
        analyzer.fit_all_factors("factors", train, per_device_batch_size=batch_size,
                                 factor_args=FactorArguments(strategy="ekfac"), overwrite_output_dir=True)
        for n, key in enumerate(readouts):
            task.key = key
            analyzer.compute_pairwise_scores(
                f"scores{n}", "factors", queries.dataset(key), train,
                per_device_query_batch_size=len(readouts[key][1]), per_device_train_batch_size=batch_size,
                score_args=ScoreArguments(damping_factor=damping), overwrite_output_dir=True)
            out[key] = -analyzer.load_pairwise_scores(f"scores{n}")["all_modules"].double().cpu().numpy()
            log.info("ekfac %s: %d queries x %d training images", key, *out[key].shape)
    return out

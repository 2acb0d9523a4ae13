"""Model checkpoints in HDF5: /final/<param> plus optional /epoch_NNNN/<param> groups."""
from __future__ import annotations

import json

import numpy as np
import torch

from . import h5io
from .models import build


def _write_state(group, state: dict):
    for k, v in state.items():
        group.create_dataset(k, data=v.detach().cpu().numpy())


def save(path, model, intermediate: dict, metrics: dict, config: dict, arrays=None):
    """Write the final weights, intermediate ``{epoch: state_dict}``, metrics (attributes)
    and per-example ``arrays`` (datasets under /metrics, e.g. test_correct) atomically."""
    with h5io.atomic_h5(path, config, arch=json.dumps(model.arch), metrics=json.dumps(metrics)) as f:
        for k, v in metrics.items():
            f.attrs[k] = v
        for k, v in (arrays or {}).items():
            f.create_dataset(f"metrics/{k}", data=v)
        _write_state(f.create_group("final"), model.state_dict())
        for epoch, state in sorted(intermediate.items()):
            _write_state(f.create_group(f"epoch_{epoch:04d}"), state)
        f.attrs["checkpoints"] = json.dumps([f"epoch_{e:04d}" for e in sorted(intermediate)] + ["final"])


def names(path) -> list:
    with h5io.read(path) as f:
        return json.loads(f.attrs["checkpoints"])


def load(path, which: str = "final", device="cpu"):
    """Rebuild the model stored in ``path`` with the weights of checkpoint ``which``."""
    with h5io.read(path) as f:
        arch = json.loads(f.attrs["arch"])
        if which not in f:
            raise KeyError(f"{path}: no checkpoint {which!r} (have {json.loads(f.attrs['checkpoints'])})")
        state = {k: torch.from_numpy(np.array(v)) for k, v in f[which].items()}
    model = build(arch)
    model.load_state_dict(state)
    return model.to(device).eval()


def metrics(path) -> dict:
    with h5io.read(path) as f:
        return json.loads(f.attrs["metrics"])

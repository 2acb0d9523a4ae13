"""Model checkpoints as torch modules: the bridge between ``artifacts`` model files
(numpy arrays) and torch modules (``zoo.build``)."""
from __future__ import annotations

import torch

from .. import artifacts
from .zoo import build


def save(path, model, intermediate: dict, metrics: dict, config: dict, arrays=None, momentum=None) -> None:
    """Write the final weights, intermediate ``{epoch: state_dict}``, metrics, per-example
    ``arrays`` (e.g. test_correct) and the optimizer's ``{epoch: {param: momentum}}`` atomically."""
    def numpy(state):
        return {k: v.detach().cpu().numpy() for k, v in state.items()}

    states = {f"epoch_{e:04d}": numpy(s) for e, s in intermediate.items()}
    states["final"] = numpy(model.state_dict())
    buffers = {f"epoch_{e:04d}": numpy(b) for e, b in (momentum or {}).items()}
    artifacts.write_model(path, config, model.arch, states, metrics, arrays, buffers)


def load(path, which: str = "final", device="cpu", token_pool: str = "mean"):
    """Rebuild the model stored in ``path`` with the weights of checkpoint ``which`` (eval
    mode); ``token_pool`` (``activations.token_pool``) is how its ``pooled`` pools token sequences."""
    arch, state = artifacts.model_state(path, which)
    model = build(arch)
    model.token_pool = token_pool
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return model.to(device).eval()

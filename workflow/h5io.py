"""HDF5 helpers: atomic writes (temporary name, then rename) and provenance attributes."""
from __future__ import annotations

import contextlib
import json
import os
import platform
from pathlib import Path

import h5py


def versions() -> dict:
    """Versions of the libraries that determine the numbers in a file."""
    out = {"python": platform.python_version()}
    for mod in ("numpy", "h5py", "torch", "torchvision", "sklearn", "trak"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "unknown")
        except Exception:  # pragma: no cover - optional modules
            pass
    from . import __version__

    out["concept_attribution"] = __version__
    return out


@contextlib.contextmanager
def atomic_h5(path, config=None, **attrs):
    """Open ``path`` for writing under a temporary name; rename only on success.

    A killed or failing job leaves at most a ``.<name>.tmp-<pid>`` file behind, never a
    file at ``path`` that looks finished. ``config`` (the rule's config slice) and the
    library versions are stored as JSON attributes; extra ``attrs`` are stored as given.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["config"] = json.dumps(config if config is not None else {}, sort_keys=True)
            f.attrs["versions"] = json.dumps(versions(), sort_keys=True)
            for k, v in attrs.items():
                f.attrs[k] = v
            yield f
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read(path):
    """Open an HDF5 file read-only with a clear error if it is missing."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: HDF5 file not found")
    return h5py.File(path, "r")


def json_attr(f, key, default=None):
    return json.loads(f.attrs[key]) if key in f.attrs else default

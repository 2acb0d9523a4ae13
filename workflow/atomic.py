"""Atomic file writes and safe reads: the only place that opens output files.

Every writer puts the file under a temporary name next to its target and renames it only
when complete, so a killed job never leaves a file that looks finished. HDF5 readers
detect a truncated or unreadable file before its data is used and name it, with the
command that rebuilds it. Torch-free.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
from pathlib import Path

import h5py


class CorruptFileError(OSError):
    """An intermediate exists but cannot be read; the message names it and how to rebuild it."""


def rebuild_hint(path) -> str:
    """How to rebuild ``path`` and what depends on it: a command to type as printed."""
    from .rerun import command

    return f"rebuild it and everything downstream of it with: {command(path)}"


def versions() -> dict:
    """Versions of the libraries that determine the numbers in a file."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("numpy", "h5py", "torch", "torchvision", "scikit-learn", "traker", "concept-attribution"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:  # pragma: no cover - optional distributions
            pass
    torch = sys.modules.get("torch")
    if torch is not None:
        # torch picks its CPU kernels by the CPU's vector ISA (AVX2, AVX512, ...), and
        # trained weights differ between them: the same bytes need the same capability.
        out["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    if "timm" in sys.modules:   # a timm model was built (model.arch timm:<name>): its code defines the network
        out["timm"] = md.version("timm")
    return out


@contextlib.contextmanager
def _tmp(path):
    """A temporary path next to ``path``, renamed onto it when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def h5(path, config=None, **attrs):
    """An HDF5 file open for writing, stored at ``path`` only on success.

    ``config`` (the rule's config slice) and the library versions are stored as JSON
    attributes; extra ``attrs`` are stored as given.
    """
    with _tmp(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["config"] = json.dumps(config if config is not None else {}, sort_keys=True)
        f.attrs["versions"] = json.dumps(versions(), sort_keys=True)
        for k, v in attrs.items():
            f.attrs[k] = v
        yield f


def write_text(path, text: str) -> None:
    with _tmp(path) as tmp:
        Path(tmp).write_text(text)


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2))


def save_figure(fig, path, dpi: int = 110) -> None:
    """``fig.savefig`` under a temporary name (the format follows ``path``'s suffix)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    with _tmp(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=fmt)


def copy(src, dst) -> None:
    with _tmp(dst) as tmp:
        Path(tmp).write_bytes(Path(src).read_bytes())


def read_h5(path):
    """An HDF5 file open read-only; a missing file or one that cannot be opened (truncated,
    not HDF5) raises an error that names it and says how to rebuild it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: HDF5 file not found")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise CorruptFileError(f"{path}: corrupt or truncated HDF5 file, not used ({e}); {rebuild_hint(path)}") from e


@contextlib.contextmanager
def reading(path):
    """``read_h5`` as a context manager whose dataset reads also name the file on failure."""
    f = read_h5(path)
    try:
        yield f
    except (OSError, KeyError) as e:
        if isinstance(e, CorruptFileError):
            raise
        raise CorruptFileError(f"{path}: unreadable or incomplete HDF5 file, not used ({e}); "
                               f"{rebuild_hint(path)}") from e
    finally:
        f.close()


def read_json(path):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise CorruptFileError(f"{path}: corrupt JSON, not used ({e}); {rebuild_hint(path)}") from e


def json_attr(f, key, default=None):
    return json.loads(f.attrs[key]) if key in f.attrs else default


def attr(v):
    """HDF5 attribute -> plain python value (comparable, readable in messages)."""
    return v.item() if hasattr(v, "item") else (v.decode() if isinstance(v, bytes) else v)

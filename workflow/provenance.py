"""Code digests: a rule's params carry the digest of the code its stage runs, so a code
change reruns exactly the rules whose code changed (Snakemake cannot see into imports).

The code a stage runs is its module's import closure inside this package, found by
reading the import statements (nothing is imported), plus the command line that runs it.
"""
from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
NAME = PACKAGE.name
ENTRY = (f"{NAME}.__main__", f"{NAME}.cli", f"{NAME}.stages", f"{NAME}.runtime")


def module_file(module: str) -> Path | None:
    """The source file of a dotted module of this package, or None for other packages."""
    parts = module.split(".")
    if parts[0] != NAME:
        return None
    p = PACKAGE.joinpath(*parts[1:])
    if p.is_dir():
        return p / "__init__.py"
    f = p.with_suffix(".py")
    return f if f.exists() else None


def _resolve(module: str, level: int, current: str, is_package: bool) -> str:
    if level == 0:
        return module or ""
    base = current.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


@lru_cache(maxsize=None)
def direct_imports(module: str) -> tuple:
    """Modules of this package that ``module`` imports (at any depth of its code)."""
    path = module_file(module)
    if path is None:
        return ()
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node.module, node.level, module, is_package)
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            # a package import also runs the __init__ of each parent package
            for i in range(1, len(parts) + 1):
                candidate = ".".join(parts[:i])
                if candidate != module and module_file(candidate) is not None:
                    found.add(candidate)
    return tuple(sorted(found))


def closure(*modules: str) -> list:
    """Every module of this package that importing ``modules`` may run, sorted."""
    seen, todo = set(), [m for m in modules if module_file(m) is not None]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(direct_imports(m))
        parts = m.split(".")  # importing a.b.c runs a/__init__ and a/b/__init__ first
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
    return sorted(seen)


def digest_files(files) -> str:
    h = hashlib.sha256()
    for f in sorted(set(files)):
        h.update(str(f.relative_to(PACKAGE)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def stage_digest(stage: str) -> str:
    """sha256 (first 16 hex) of the source a stage runs: its import closure and the entry point."""
    from .stages import STAGES

    module = STAGES[stage][0]
    return digest_files(module_file(m) for m in closure(module, *ENTRY))

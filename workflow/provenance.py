"""Code digests: a rule's params carry the digest of the modules it runs, so a code
change reruns exactly the rules whose code changed (Snakemake cannot see into imports)."""
import hashlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def code_digest(*modules: str) -> str:
    """sha256 (first 16 hex) over the source of the named modules of this package.

    Names are dotted paths relative to the package, e.g. ``"train"`` or ``"datasets.synthetic"``;
    a name that is a subpackage covers all of its ``.py`` files.
    """
    h = hashlib.sha256()
    for name in sorted(set(modules)):
        p = PACKAGE.joinpath(*name.split("."))
        files = sorted(p.rglob("*.py")) if p.is_dir() else [p.with_suffix(".py")]
        for f in files:
            h.update(str(f.relative_to(PACKAGE)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]

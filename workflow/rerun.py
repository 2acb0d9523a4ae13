"""The command that reruns the workflow as the user invoked it, for error messages.

A corrupt intermediate must be rebuilt together with everything downstream of it, and a
plain rerun does not do that when the final outputs are up to date. The Snakefile records
the user's own command line (``record``) in the environment its jobs inherit; a job that
finds a corrupt file prints ``command(path)``: that command plus ``--forcerun <path>``,
which reruns the job that makes the file and every job after it. Torch-free.
"""
from __future__ import annotations

import os
import shlex
import sys

ENV = "CONCEPT_ATTRIBUTION_COMMAND"
FALLBACK = ["snakemake", "--cores", "all"]
#: options that make a run plan or force work rather than do it (dropped from the recorded command)
_DROP_FLAGS = {"-n", "--dry-run", "--dryrun", "-f", "--force", "-F", "--forceall"}
_DROP_WITH_VALUES = {"-R", "--forcerun"}


def clean(argv: list) -> list:
    """``argv`` without dry-run flags and without earlier --forcerun/--force options and their values."""
    out, skipping = [], False
    for tok in argv:
        if skipping and not tok.startswith("-"):
            continue
        skipping = False
        if tok in _DROP_FLAGS or tok.startswith("--forcerun="):
            continue
        if tok in _DROP_WITH_VALUES:
            skipping = True
            continue
        out.append(tok)
    return out


def record(argv: list) -> None:
    """Remember the user's Snakemake command line for this run's jobs (the main process only);
    ``python -m snakemake`` is recorded as such (its argv[0] is the package's __main__.py)."""
    argv = list(argv)
    if argv and argv[0].endswith("__main__.py"):
        argv = [sys.executable, "-m", "snakemake", *argv[1:]]
    os.environ[ENV] = shlex.join(clean(argv))


def command(path) -> str:
    """The command that rebuilds ``path`` and everything downstream of it."""
    base = os.environ.get(ENV) or shlex.join(FALLBACK)
    return f"{base} --forcerun {shlex.quote(str(path))}"

"""The command line the rules run: ``python -m workflow <stage> --params JSON --files JSON``.

``--params`` is the rule's config slice, ``--files`` its named inputs, outputs and
wildcards. With ``--log FILE`` everything the stage prints or logs (progress bars
included) goes to that file; the console gets the stage's result text and, on failure,
one line naming the problem (the traceback is in the log).
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from .stages import STAGES, Job

log = logging.getLogger("workflow")


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m workflow", description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=sorted(STAGES))
    p.add_argument("--params", required=True, help="config slice as JSON")
    p.add_argument("--files", default="{}", help="JSON {input: {...}, output: {...}, wildcards: {...}}")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mem-mb", type=int, default=None, help="the job's memory request; data-holding stages fit it")
    p.add_argument("--log", help="write all output here; the console gets the result and errors only")
    return p.parse_args(argv)


def _redirect(log_path):
    """Point fds 1 and 2 at ``log_path``; return a stream to the original console."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    console = os.fdopen(os.dup(2), "w", buffering=1)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return console


def run(job: Job):
    """Import the stage's module and run it; returns its result text (or None)."""
    module, function, _ = STAGES[job.stage]
    return getattr(importlib.import_module(module), function)(job)


def main(argv=None) -> int:
    a = parse(argv)
    console = _redirect(a.log) if a.log else sys.stderr
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from . import runtime

    runtime.configure(a.threads, uses_torch=STAGES[a.stage][2])
    files = json.loads(a.files)
    job = Job(a.stage, json.loads(a.params), files.get("input", {}), files.get("output", {}),
              files.get("wildcards", {}), a.threads, a.mem_mb)
    t0 = time.time()
    try:
        text = run(job)
    except Exception as e:  # one line for the console, the traceback for the log
        traceback.print_exc()
        where = f" (log: {a.log})" if a.log else ""   # before the message, which may end in a command to copy
        print(f"{a.stage} failed{where}: {type(e).__name__}: {e}", file=console)
        return 1
    if text:
        print(text)
        if a.log:
            print(text, file=console)
    log.info("%s done in %.1fs", a.stage, time.time() - t0)
    return 0

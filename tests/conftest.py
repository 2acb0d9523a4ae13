import faulthandler
import os
import subprocess
import sys
import threading
from pathlib import Path

import h5py
import pytest
import yaml

from workflow.config import schema, with_defaults

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def completed(cfg: dict) -> dict:
    """A test's partial config completed with the schema's defaults, as the workflow does."""
    return with_defaults(cfg, schema())


def snakemake_cmd(workdir, *args, configfile=None) -> list:
    """The command line that runs the repo's Snakefile with the local profile on a config
    (default: ``workdir/config.yaml``)."""
    return [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--profile", str(REPO / "profiles" / "default"),
            "--configfile", str(configfile or Path(workdir) / "config.yaml"), *args]


def run_snakemake(workdir, *args, check=True, timeout=600, configfile=None, **kw):
    """Run the repo's Snakefile with ``workdir`` as working directory (results/ land there)."""
    proc = subprocess.run(snakemake_cmd(workdir, *args, configfile=configfile), cwd=workdir, capture_output=True,
                          text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar(root, per_batch=20, n_test=40):
    """A CIFAR-10 tree in torchvision's python-pickle layout (random pixels, labels i % 10)."""
    import pickle

    import numpy as np

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": [i % 10 for i in range(n)]}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": CIFAR_NAMES}, fh)
    return batch


def pytest_report_header(config):
    import torch

    return f"torch {torch.__version__}, CPU kernels {torch.backends.cpu.get_cpu_capability()}"


TINY = yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())


def write_config(workdir, cfg):
    Path(workdir, "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The whole DAG on tests/configs/tiny.yaml, run locally with 2 cores (shared by the
    end-to-end tests and the SLURM comparison)."""
    wd = tmp_path_factory.mktemp("tiny")
    write_config(wd, TINY)
    run_snakemake(wd, "--cores", "2")
    return wd


def numbers(wd, conditions=("base",)) -> dict:
    """The numbers a run ends with: weights of every member, every probe accuracy and
    sparsity, and (for base) every TRAK score, per condition."""
    out = {}
    concepts = [c["name"] for c in TINY["concepts"]]
    for cond in conditions:
        res = Path(wd, "results", TINY["experiment"], cond)
        for m in range(TINY["ensemble"]["size"]):
            with h5py.File(res / "models" / f"m{m}.h5") as f:
                for k, v in f["final"].items():
                    out[f"{cond}/m{m}/{k}"] = v[()]
        for c in concepts:
            with h5py.File(res / "probes" / f"{c}.h5") as f:
                out[f"{cond}/{c}/acc"] = f["heldout_bal_acc"][()]
                out[f"{cond}/{c}/k"] = f["sparsity_k"][()]
            if cond == "base":
                for layer in TINY["layers"]:
                    with h5py.File(res / "trak" / "scores" / c / f"{layer}.h5") as f:
                        out[f"{c}/{layer}/scores"] = f["per_target"][()]
    return out


# -- time limits (pytest-timeout; pytest.ini sets the default) ----------------------------------
# Every test has a limit: an ordinary one pytest.ini's ``timeout``, an end-to-end one (marker
# e2e or slurm) E2E_TIMEOUT. SIGALRM fails a test stuck in Python by name and the run goes on.
# A test stuck inside a native kernel (a spinning oneDNN loop never returns to Python, so the
# alarm's handler never runs) is caught by a watchdog GRACE seconds later: it prints the
# test's name and every thread's stack, then ends the run with exit code 1.
E2E_TIMEOUT = 1200
GRACE = 30
_watchdog = {}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("timeout") is None and (item.get_closest_marker("e2e")
                                                            or item.get_closest_marker("slurm")):
            item.add_marker(pytest.mark.timeout(E2E_TIMEOUT))


def _stuck(item, timeout):
    capman = item.config.pluginmanager.getplugin("capturemanager")
    if capman is not None:      # back to the real stdout/stderr (pytest captures fds 1 and 2)
        capman.suspend_global_capture(in_=True)
    sys.stderr.write(f"\nTIMEOUT: {item.nodeid} is still running {GRACE} s past its {timeout:g} s limit, stuck "
                     f"outside Python (a native kernel?); stacks of every thread:\n")
    sys.stderr.flush()
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    os._exit(1)


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item, settings):
    if settings.timeout and settings.timeout > 0:
        timer = threading.Timer(settings.timeout + GRACE, _stuck, (item, settings.timeout))
        timer.daemon = True
        timer.start()
        _watchdog[item.nodeid] = timer
    return None      # pytest-timeout's own SIGALRM timer is set as well


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_cancel_timer(item):
    timer = _watchdog.pop(item.nodeid, None)
    if timer is not None:
        timer.cancel()
    return None

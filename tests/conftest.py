import subprocess
import sys
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

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def run_snakemake(workdir, *args, check=True, timeout=600, **kw):
    """Run the repo's Snakefile with ``workdir`` as working directory (results/ land there)."""
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--profile", str(REPO / "profiles" / "default"),
           "--configfile", str(Path(workdir) / "config.yaml"), *args]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture
def tiny_config_text():
    return (REPO / "tests" / "configs" / "tiny.yaml").read_text()

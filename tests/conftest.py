import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


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

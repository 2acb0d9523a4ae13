"""The SLURM profile: per-rule resources from the imagenet preset's dry run, and (as root,
marker ``slurm``) the tiny config through a real single-node SLURM started on this machine."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, SNAKEMAKE, TINY, numbers, write_config

GPU_RULES = {"train", "activations", "featurize", "score"}


def fake_imagenet(tmp_path) -> Path:
    """An empty ImageFolder tree and concept folders standing in for ImageNet, and the
    preset pointed at them."""
    for d in ("imagenet/train/n01440764", "imagenet/val/n01440764", "hilo/positives", "hilo/negatives"):
        (tmp_path / d).mkdir(parents=True)
    cfg = yaml.safe_load((REPO / "config" / "imagenet10p.yaml").read_text())
    cfg["dataset"]["root"] = str(tmp_path / "imagenet")
    hilo = next(c for c in cfg["concepts"] if c["name"] == "hilo")
    hilo.update(positives=str(tmp_path / "hilo/positives"), negatives=str(tmp_path / "hilo/negatives"))
    path = tmp_path / "imagenet10p.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def rule_resources(dry_run: str) -> dict:
    """{rule: [resource dict per job]} from `snakemake -n` output."""
    out = {}
    for block in re.split(r"\n(?=rule \w+:)", dry_run):
        m = re.match(r"rule (\w+):", block)
        r = re.search(r"^\s+resources: (.*)$", block, re.M)
        if m and r:
            pairs = dict(kv.split("=", 1) for kv in r.group(1).split(", ") if "=" in kv)
            out.setdefault(m.group(1), []).append(pairs)
    return out


def test_imagenet_preset_dry_run_asks_gpus_for_gpu_rules_only(tmp_path):
    cfg = fake_imagenet(tmp_path)
    proc = subprocess.run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--profile", str(REPO / "profiles" / "slurm"),
                           "--configfile", str(cfg), "-n"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = rule_resources(proc.stdout)
    preset = yaml.safe_load(cfg.read_text())
    assert GPU_RULES <= set(res) and {"probes", "ablate", "base_data", "compare", "report_html"} <= set(res)
    for rule, jobs in res.items():
        for r in jobs:
            if rule in GPU_RULES:
                assert r.get("gpu") == "1", (rule, r)
            else:
                assert "gpu" not in r and "gres" not in r, (rule, r)
            assert r["slurm_partition"] and "runtime" in r and "mem_mb" in r
    # memory and wall time come from the preset's resources, per rule family
    assert res["train"][0]["mem_mb"] == str(preset["resources"]["train"]["mem_mb"])
    assert res["train"][0]["runtime"] == str(preset["resources"]["train"]["runtime"])
    assert res["probes"][0]["mem_mb"] == str(preset["resources"]["probes"]["mem_mb"])
    # a job's threads (SLURM's --cpus-per-task) are the preset's, not capped by this host's cores
    assert os.cpu_count() < preset["threads"]["train"]
    threads = re.findall(r"^rule train:\n(?:    .*\n)*?    threads: (\d+)", proc.stdout, re.M)
    assert threads and set(threads) == {str(preset["threads"]["train"])}, threads
    # sharded featurization: one job per (member, shard), covering every checkpoint; one score job
    t = preset["trak"]
    assert len(res["featurize"]) == preset["ensemble"]["size"] * t["shards"]
    assert len(res["gather_features"]) == preset["ensemble"]["size"] and len(res["score"]) == 1


def test_memory_and_wall_time_grow_with_the_attempt():
    from workflow.config import rule_resources

    cfg = {"resources": {"default": {"mem_mb": 4000, "runtime": 60}, "train": {"mem_mb": 48000}}}
    r = rule_resources(cfg, "train", device="cuda")
    assert [r["mem_mb"](None, a) for a in (1, 2, 3)] == [48000, 96000, 144000]
    assert [r["runtime"](None, a) for a in (1, 2)] == [60, 120] and r["gpu"] == 1
    assert "gpu" not in rule_resources(cfg, "probes", device="cpu")


LOCAL_SLURM = REPO / "scripts" / "local-slurm.sh"


@pytest.fixture(scope="module")
def local_slurm(tmp_path_factory):
    """A real single-node SLURM (slurmctld, slurmd, munged) for the module, stopped after."""
    if os.geteuid() != 0:
        pytest.skip("SLURM test needs root to install and start a local SLURM: run `make test` as root, or "
                    "`sudo scripts/local-slurm.sh up` and then `pytest -m slurm` as root")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("SLURM test needs Debian's apt-get (to install slurm-wlm and munge) or SLURM installed")
    state = tmp_path_factory.mktemp("local-slurm")
    env = {**os.environ, "LOCAL_SLURM_DIR": str(state)}
    up = subprocess.run([str(LOCAL_SLURM), "up"], env=env, capture_output=True, text=True, timeout=600)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield {**env, "SLURM_CONF": str(state / "slurm.conf")}
    finally:
        down = subprocess.run([str(LOCAL_SLURM), "down"], env=env, capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr


@pytest.mark.slurm
@pytest.mark.e2e
def test_tiny_config_through_real_slurm_equals_local_run(local_slurm, tiny_run, tmp_path):
    write_config(tmp_path, TINY)
    # the verdicts need every retrained condition (the part of the DAG that is most of its jobs);
    # the LDS twins, the other estimators' scoring and the report are the same rules again
    verdicts = "results/tiny/compare/verdicts.txt"
    proc = subprocess.run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), verdicts, "--profile",   # the target before
                           str(REPO / "profiles" / "slurm-local"), "--configfile", str(tmp_path / "config.yaml")],
                          cwd=tmp_path, env=local_slurm, capture_output=True, text=True, timeout=1500)   # --configfile's list
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    # every job went through SLURM: a job id per submitted job, a SLURM log per job id,
    # and SLURM itself reports them finished
    ids = re.findall(r"submitted with SLURM jobid (\d+)", out)
    n_jobs = int(re.search(r"^total\s+(\d+)$", out, re.M).group(1))
    assert len(ids) == len(set(ids)) == n_jobs, out[-3000:]
    logs = {p.stem for p in (tmp_path / ".snakemake" / "slurm_logs").rglob("*.log")}
    assert set(ids) <= logs
    squeue = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i %T"], env=local_slurm, capture_output=True,
                            text=True, timeout=60).stdout
    states = dict(line.split() for line in squeue.splitlines())
    assert all(states.get(i) == "COMPLETED" for i in ids), squeue
    # ... and the results equal a local --cores run of the same config
    conditions = ["base", "top-hilo", "random", "oracle-hilo"]
    a, b = numbers(tiny_run, conditions), numbers(tmp_path, conditions)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert (tiny_run / verdicts).read_text() == (tmp_path / verdicts).read_text()

# Shared helpers: paths, config slices (passed as params so an edit reruns exactly
# the affected jobs) and the command that runs a stage of the workflow package.
import json
import os
import re

from snakemake.settings.types import DeploymentMethod
from workflow.ablation import conditions as ablation_conditions
from workflow.config import dataset_slice
from workflow.provenance import code_digest

RESULTS = f"results/{config['experiment']}"
LOGS = f"logs/{config['experiment']}"
CONCEPTS = [c["name"] for c in config["concepts"]]
MEMBERS = list(range(config["ensemble"]["size"]))
ABLATIONS = ablation_conditions(config)  # condition name -> {kind, concept, layer}
CONDITIONS = ["base", *ABLATIONS]

TRAK_CKPTS = config["trak"]["checkpoints"]
SHARDS = list(range(config["trak"]["shards"]))
LAYERS = config["layers"]

wildcard_constraints:
    ckpt=r"final|epoch_\d{4}",
    shard=r"\d+",
    layer="|".join(LAYERS),
    concept="|".join(CONCEPTS),
    member=r"\d+",
    condition="|".join(map(re.escape, CONDITIONS)),

# Jobs run `python -m workflow <stage>`: make the package importable and, unless
# --use-conda supplies each rule's own python, put this interpreter first on PATH.
# (Environment variables set here reach local jobs and, since cluster jobs re-read
# the Snakefile, jobs on SLURM too.)
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, [workflow.basedir, os.getenv("PYTHONPATH")])))
if DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method:
    os.environ.update(PATH=os.pathsep.join([os.path.dirname(sys.executable), os.getenv("PATH", "")]))


def as_json(obj):
    """Canonical JSON of a config slice (stable key order: no spurious reruns)."""
    return json.dumps(obj, sort_keys=True)


def data_params():
    return {"seed": config["seed"], "dataset": dataset_slice(config)}


def concept_params(name):
    concept = next(c for c in config["concepts"] if c["name"] == name)
    return {**data_params(), "probe_set": config["probe_set"], "concepts": [concept]}


def train_params():
    return {"seed": config["seed"], "model": config["model"], "train": config["train"]}


def activation_params():
    return {"layers": config["layers"], "activations": config["activations"]}


def probe_params():
    return {"seed": config["seed"], "layers": config["layers"], "probes": config["probes"], "members": MEMBERS}


def trak_params(*keys):
    """The named keys of config["trak"]; layer_dim only where the factored projector
    can be chosen, so editing it reruns nothing else."""
    t = config["trak"]
    if t["projector"] not in ("factored", "auto"):
        keys = tuple(k for k in keys if k != "layer_dim")
    return {"seed": config["seed"], "trak": {k: t[k] for k in keys}}


FEATURIZE_KEYS = ("proj_dim", "proj_seed", "projector", "layer_dim", "device", "shards", "precision",
                  "checkpoints", "batch_size")


def ablation_params(condition):
    """Only what decides this condition's removed set: a fraction edit reruns top-k and
    random sets, not the oracle."""
    spec, a = ABLATIONS[condition], config["ablation"]
    size = {"fraction": a["fraction"], "top_k": a["top_k"]}
    if spec["kind"] == "top":
        return {"spec": spec, **size, "layers": LAYERS if spec["layer"] == "location" else [spec["layer"]]}
    if spec["kind"] == "random":
        return {"spec": spec, **size, "seed": config["seed"]}
    return {"spec": spec}


def rule_resources(family, device=None):
    """Memory (MB) and wall time (min) of a rule family from config["resources"] (its own
    entry over "default"), and one GPU when the stage's device is cuda. CPU rules ask for
    no GPU at all. On SLURM the plugin turns these into --mem, -t and --gpus."""
    r = {"mem_mb": 4000, "runtime": 60, **config["resources"].get("default", {}),
         **config["resources"].get(family, {})}
    out = {"mem_mb": r["mem_mb"], "runtime": r["runtime"]}
    if device == "cuda":
        out["gpu"] = 1
    return out


# Input functions of the rules (lint: functions live here, rules in their own files).


def train_inputs(w):
    data = [f"{RESULTS}/data/base.h5"]
    return data if w.condition == "base" else data + [f"{RESULTS}/ablation/{w.condition}.h5"]


def ablate_inputs(w):
    spec = ABLATIONS[w.condition]
    inputs = [f"{RESULTS}/data/base.h5"]
    if spec["kind"] == "top":
        layers = LAYERS if spec["layer"] == "location" else [spec["layer"]]
        inputs.append(f"{RESULTS}/base/probes/{spec['concept']}.h5")  # the location
        inputs += [f"{RESULTS}/base/trak/scores/{spec['concept']}/{layer}.h5" for layer in layers]
    elif spec["kind"] == "oracle":
        inputs.append(f"{RESULTS}/data/probe_{spec['concept']}.h5")  # the ground truth
    return inputs


def named(files):
    """Named inputs/outputs as plain JSON (str or list of str per name)."""
    return {k: v if isinstance(v, str) else list(v) for k, v in files.items()}

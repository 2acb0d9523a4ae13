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
    t = config["trak"]
    return {"seed": config["seed"], "trak": {k: t[k] for k in keys}}


FEATURIZE_KEYS = ("proj_dim", "proj_seed", "projector", "device", "shards", "precision", "checkpoints",
                  "batch_size")


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

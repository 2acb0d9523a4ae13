# Shared helpers: paths, config slices (passed as params so an edit reruns exactly
# the affected jobs) and the command that runs a stage of the workflow package.
import json
import shlex

from snakemake.settings.types import DeploymentMethod
from workflow.config import dataset_slice
from workflow.provenance import code_digest

RESULTS = f"results/{config['experiment']}"
LOGS = f"logs/{config['experiment']}"
CONCEPTS = [c["name"] for c in config["concepts"]]
MEMBERS = list(range(config["ensemble"]["size"]))
CONDITIONS = ["base"]

wildcard_constraints:
    concept="|".join(CONCEPTS),
    member=r"\d+",
    condition="|".join(CONDITIONS),

# With --use-conda the rule's environment provides `python`; otherwise use ours.
_PY = ("python" if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
       else shlex.quote(sys.executable))
STAGE = f"PYTHONPATH={shlex.quote(workflow.basedir)}${{PYTHONPATH:+:$PYTHONPATH}} {_PY} -m workflow"


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

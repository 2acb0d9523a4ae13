# Shared helpers: paths, config slices (passed as params so an edit reruns exactly the
# affected jobs), code digests, and the one way a rule hands its files to its stage.
import json
import re
import sys
import os
import string

from snakemake.settings.types import DeploymentMethod
from workflow.ablation.sets import conditions as ablation_conditions, estimator_of, lds_conditions
from workflow.config import dataset_slice, lds_spawn_epoch, rule_resources as config_rule_resources
from workflow.provenance import stage_digest

RESULTS = f"results/{config['experiment']}"
LOGS = f"logs/{config['experiment']}"
CONCEPTS = [c["name"] for c in config["concepts"]]
MEMBERS = list(range(config["ensemble"]["size"]))
ABLATIONS = ablation_conditions(config)  # condition name -> {kind, concept, layer}
CONDITIONS = ["base", *ABLATIONS]
LDS_SUBSETS = lds_conditions(config)     # the LDS stage's random subsets (trained for lds.members only)
LDS_MEMBERS = config["lds"]["members"]
DESIGNS = {**ABLATIONS, **LDS_SUBSETS}   # every removed set ablate builds

# every estimator whose scores some stage reads: TRAK first, then the others (one job each)
ESTIMATORS = list(dict.fromkeys(["trak", *config["attribution"]["estimators"], *config["ablation"]["estimators"],
                                 *(config["lds"]["estimators"] if LDS_SUBSETS else [])]))
OTHER_ESTIMATORS = ESTIMATORS[1:]

TRAK_CKPTS = config["trak"]["checkpoints"]
SHARDS = list(range(config["trak"]["shards"]))
LAYERS = config["layers"]

wildcard_constraints:
    ckpt=r"final|epoch_\d{4}",
    shard=r"\d+",
    layer="|".join(map(re.escape, LAYERS)),
    concept="|".join(CONCEPTS),
    member=r"\d+",
    condition="|".join(map(re.escape, [*CONDITIONS, *LDS_SUBSETS])),
    estimator=r"[a-z_]+",

# Jobs run `python -m workflow <stage>` from the installed package. Unless --use-conda
# supplies each rule's own python, put this interpreter first on PATH so jobs use the
# environment Snakemake runs in (also on SLURM, where jobs re-read this file).
if DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method:
    os.environ.update(PATH=os.pathsep.join([os.path.dirname(sys.executable), os.getenv("PATH", "")]))


def as_json(obj):
    """Canonical JSON of a config slice (stable key order: no spurious reruns)."""
    return json.dumps(obj, sort_keys=True)


# -- files by name ----------------------------------------------------------------------------
# A rule's files form a tree: a name maps to a path, or to a dict keyed by what its files
# differ in (member, checkpoint, concept, layer, condition). Snakemake gets the tree
# flattened (a list per name); the stage gets the same tree as JSON (--files), so no file
# is ever found by its position in a list.


class _Keep(dict):
    def __missing__(self, key):
        return f"{{{key}}}"


def partial(pattern, **values):
    """Fill some wildcards of ``pattern`` and keep the others, e.g. {condition}."""
    return string.Formatter().vformat(pattern, (), _Keep(values))


def keyed(pattern, **axes):
    """{value: path} over one axis, nested in the order given for several:
    keyed(p, member=[0, 1], ckpt=["final"]) -> {"0": {"final": ...}, "1": {"final": ...}}."""
    (name, values), *rest = axes.items()
    return {str(v): keyed(partial(pattern, **{name: v}), **dict(rest)) if rest else partial(pattern, **{name: v})
            for v in values}


def leaves(tree):
    if isinstance(tree, dict):
        return [p for v in tree.values() for p in leaves(v)]
    return [tree]


def fill(tree, w):
    """Every path of ``tree`` with the job's wildcards filled in."""
    if isinstance(tree, dict):
        return {k: fill(v, w) for k, v in tree.items()}
    return tree.format(**dict(w.items()))


def flat(tree):
    """The tree as Snakemake's named files: a path, or a list of paths, per name."""
    return {name: sub if isinstance(sub, str) else leaves(sub) for name, sub in tree.items()}


def tree_of(source, w):
    return source(w) if callable(source) else fill(source, w)


def inputs(source):
    """``input: unpack(inputs(source))`` for a tree or a function of the wildcards returning one."""
    return lambda w: flat(tree_of(source, w))


def stage_files(inputs_source, outputs_tree):
    """``params: files=...``: the job's files as a tree, with its wildcards."""
    def files(w):
        return json.dumps({"input": tree_of(inputs_source, w), "output": fill(outputs_tree, w),
                           "wildcards": dict(w.items())})
    return files


def stage_cmd(stage):
    """The shell command of a rule: its stage, config slice, files, threads and log."""
    return (f"python -m workflow {stage} --params {{params.cfg:q}} --files {{params.files:q}} "
            f"--threads {{threads}} --mem-mb {{resources.mem_mb}} --log {{log:q}}")


# Scheduling: the chain from the base models to the ablated sets (base training, probe
# sets, base activations, probes and summary, TRAK features and scores, ablation sets) is
# the critical path of a run; its jobs go first when
# cores or cluster slots are short, so retrained twins start as early as possible instead
# of waiting behind base probes or random-removal twins. Order only: no result changes.
CRITICAL = 10


def critical_path_priority(wildcards):
    return CRITICAL if wildcards.condition == "base" else 0


def code_digest(stage):
    """The digest of the code ``stage`` runs (its import closure): a code edit reruns its jobs."""
    return stage_digest(stage)


# -- config slices ----------------------------------------------------------------------------


def data_params():
    return {"seed": config["seed"], "dataset": dataset_slice(config)}


def concept_params(name):
    concept = next(c for c in config["concepts"] if c["name"] == name)
    return {**data_params(), "probe_set": config["probe_set"], "concepts": [concept]}


def spawn_epoch(condition):
    """The epoch an ablated or LDS twin resumes its base member after (0: from scratch)."""
    return lds_spawn_epoch(config) if condition in LDS_SUBSETS else config["ablation"]["spawn_epoch"]


def recipe():
    """config["train"] less the keys the recipe does not use (editing them retrains nothing);
    the optimizer and schedule keys only when not the default sgd / onecycle, so results
    made before they existed stay valid."""
    train = dict(config["train"])
    if train["crop"] == "shift":
        del train["crop_scale"]
    if train["optimizer"] == "sgd":
        del train["optimizer"]
    else:
        del train["momentum"]                        # adamw has no momentum knob
    if train["schedule"] == "onecycle":
        del train["schedule"], train["warmup"]
    return train


ZOO = config["model"]["arch"] != "resnet18"


def model_slice():
    """config["model"] less what does not change the model: width for a zoo model, and the
    optional keys at their defaults (a resnet18 run's slice is the one it always was)."""
    m = dict(config["model"])
    if ZOO:
        del m["width"]
    for key, default in (("kwargs", {}), ("weights", None), ("keep_dropout", False)):
        if m[key] == default:
            del m[key]
    return m


def pooling():
    """activations.token_pool where it can matter (zoo models; resnet18 has no token sequences)."""
    return {"token_pool": config["activations"]["token_pool"]} if ZOO else {}


def train_params(w):
    """The recipe; an ablated twin also gets the spawn epoch (base runs do not depend on it)."""
    params = {"seed": config["seed"], "model": model_slice(), "train": recipe()}
    if w.condition != "base":
        params["spawn_epoch"] = spawn_epoch(w.condition)
        if config["ablation"]["retrain"] != "skip":          # skip twins keep their params (and files)
            params["retrain"] = config["ablation"]["retrain"]
    return params


def activation_params():
    acts = {k: v for k, v in config["activations"].items() if k != "token_pool"}
    return {"layers": config["layers"], "activations": acts, **pooling()}


def probe_params():
    return {"seed": config["seed"], "layers": config["layers"], "probes": config["probes"], "members": MEMBERS}


def trak_params(*keys):
    """The named keys of config["trak"]; layer_dim only where the factored projector
    can be chosen, so editing it reruns nothing else."""
    t = config["trak"]
    keys = tuple(k for k in keys if k != "layer_dim" or t["projector"] in ("factored", "auto"))
    out = {"seed": config["seed"], "trak": {k: t[k] for k in keys}}
    out["trak"].setdefault("layer_dim", None)  # the stage reads it; absent means unused
    return out


def score_params(estimator):
    """The config slice of one estimator's scoring job: TRAK's as it always was; another
    estimator adds its name (and, for TracIn, the recipe's schedule: its step weights)."""
    out = {**trak_params(*FEATURIZE_KEYS, "lambda_reg", "max_targets", "top_fraction"),
           "members": MEMBERS, "layers": LAYERS, **pooling()}
    if estimator != "trak":
        out["estimators"] = [estimator]
    if estimator == "tracin":
        out["train"] = {k: v for k, v in recipe().items() if k in ("epochs", "batch_size", "lr", "optimizer",
                                                                   "schedule", "warmup")}
    if estimator == "metagradient":                  # it replays the base run: the whole recipe
        out.update(model=model_slice(), train=recipe(),
                   metagradient={"spawn_epoch": config["ablation"]["spawn_epoch"],
                                 "layers": config["ablation"]["layers"]})
    return out


FEATURIZE_KEYS = ("proj_dim", "proj_seed", "projector", "layer_dim", "device", "shards", "precision",
                  "checkpoints", "batch_size")


def ablation_params(condition):
    """Only what decides this condition's removed set (its design carries its size): a
    fraction edit rebuilds the sets of that size, not the oracle."""
    design = DESIGNS[condition]
    if design["kind"] in ("top", "bottom"):
        return {"design": design, "layers": LAYERS if design["layer"] == "location" else [design["layer"]]}
    if design["kind"] in ("random", "matched", "subset"):
        return {"design": design, "seed": config["seed"]}
    return {"design": design}


def rule_resources(family, device=None):
    """Memory and wall time growing with the attempt, and a GPU for cuda stages:
    ``workflow.config.rule_resources``."""
    return config_rule_resources(config, family, device)


# -- input functions (lint: functions live here, rules in their own files) --------------------


def train_inputs(w):
    files = {"data": BASE}
    if config["model"]["weights"]:
        files["weights"] = config["model"]["weights"]
    if w.condition != "base":
        files["ablation"] = f"{RESULTS}/ablation/{w.condition}.h5"
        if spawn_epoch(w.condition):
            files["spawn"] = f"{RESULTS}/base/models/m{w.member}.h5"
    return files


def scores_of(estimator, condition="base"):
    """The per-(concept, layer) scores pattern of ``estimator`` ({concept}, {layer} left):
    TRAK's where they always were, the others' under attribution/<estimator>/."""
    pattern = SCORES if estimator == "trak" else partial(EST_SCORES, estimator=estimator)
    return partial(pattern, condition=condition)


def margin_scores_of(estimator, condition="base"):
    """The per-concept margin scores pattern of ``estimator`` ({concept} left): every
    estimator's under attribution/<estimator>/, made by rule score_margin."""
    return partial(MARGIN_SCORES, estimator=estimator, condition=condition)


def ablate_inputs(w):
    design = DESIGNS[w.condition]
    files = {"data": BASE}
    if design["kind"] in ("top", "bottom"):
        layers = LAYERS if design["layer"] == "location" else [design["layer"]]
        files["probes"] = f"{RESULTS}/base/probes/{design['concept']}.h5"  # the location
        files["scores"] = keyed(partial(scores_of(estimator_of(design)), concept=design["concept"]), layer=layers)
    elif design["kind"] in ("oracle", "matched"):
        files["probe_set"] = f"{RESULTS}/data/probe_{design['concept']}.h5"  # the ground truth
        if design["kind"] == "matched":
            files["top"] = f"{RESULTS}/ablation/{design['top']}.h5"          # its k' and layer
    return files

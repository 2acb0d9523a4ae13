"""The registry of stages: the name a rule runs -> the function that runs it.

Each function takes one ``Job`` (named inputs and outputs, wildcards, the rule's config
slice, threads). Torch-free and import-free: ``provenance`` reads it to digest each
stage's code, and the command line imports a stage's module only when it runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# stage -> (module, function, uses torch)
STAGES = {
    "base": ("workflow.data.build", "base_stage", False),
    "probe-set": ("workflow.data.build", "probe_set_stage", False),
    "train": ("workflow.model.train", "train_stage", True),
    "activations": ("workflow.probing.activations", "activations_stage", True),
    "probes": ("workflow.probing.probes", "probes_stage", False),
    "summary": ("workflow.probing.summary", "summary_stage", False),
    "featurize": ("workflow.attribution.features", "featurize_stage", True),
    "gather": ("workflow.attribution.features", "gather_stage", True),
    "score": ("workflow.attribution.scores", "score_stage", True),
    "estimate": ("workflow.attribution.scores", "score_stage", True),
    "score-margin": ("workflow.attribution.scores", "score_stage", True),
    "trak-report": ("workflow.attribution.report", "trak_report_stage", False),
    "ablate": ("workflow.ablation.sets", "ablate_stage", False),
    "validate": ("workflow.validation.validate", "validate_stage", False),
    "lds": ("workflow.validation.lds", "lds_stage", False),
    "compare": ("workflow.report.compare", "compare_stage", False),
    "report": ("workflow.report.html", "report_stage", False),
}


@dataclass
class Job:
    """What a rule hands its stage: every file by name, never by position.

    ``input``/``output`` values are a path, a list of paths, or a dict keyed by what the
    files differ in (e.g. ``{"0": {"final": path}}`` for member 0's final checkpoint),
    built by one helper in rules/common.smk.
    """
    stage: str
    params: dict
    input: dict = field(default_factory=dict)
    output: dict = field(default_factory=dict)
    wildcards: dict = field(default_factory=dict)
    threads: int = 1
    mem_mb: int | None = None   # the job's memory request (None: not bounded)

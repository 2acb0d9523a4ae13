# concept-attribution: which training images taught a network a concept at a layer?
# Stages (docs/method.md): data -> train -> activations -> probes -> summary
#                          -> TRAK featurize (sharded) -> gather -> score -> trak_report
#                          -> ablate -> train/activations/probes again per condition
#                          -> validate (the counterfactual check) -> compare -> report_html;
#                          lds: random subsets retrained -> the estimators' LDS on the concept readout.
# The workflow package must be installed (`make venv` does it: pip install -e .).
import sys
from pathlib import Path

import yaml

from snakemake.utils import min_version
from workflow.config import merge, resolve
from workflow import rerun

min_version("9.0")

# The demo's config.yaml is used only when no --configfile is given: a user's config is
# never completed from the demo's values, only from the schema's defaults. --config
# overrides apply on top either way.
if not workflow.config_settings.configfiles:
    config.update(merge(yaml.safe_load(Path(workflow.basedir, "config.yaml").read_text()), dict(config)))
# One-line errors naming the key or path, before any job starts; then the schema's defaults.
_resolved = resolve(config)
config.clear()
config.update(_resolved)
# Jobs inherit the user's command line: a corrupt intermediate's error prints it with
# --forcerun <file>, which rebuilds the file and everything downstream of it.
if workflow.is_main_process:
    rerun.record(sys.argv)


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/activations.smk"
include: "rules/probes.smk"
include: "rules/summary.smk"
include: "rules/trak.smk"
include: "rules/ablate.smk"
include: "rules/validate.smk"
include: "rules/lds.smk"
include: "rules/report.smk"


localrules:
    all,
    summary,


rule all:
    default_target: True
    input:
        rules.summary.input,
        f"{RESULTS}/base/trak/enrichment.json",
        f"{RESULTS}/compare/verdicts.txt",
        expand(f"{RESULTS}/validate/{{concept}}.txt", concept=CONCEPTS),
        expand(f"{RESULTS}/lds/{{concept}}.txt", concept=CONCEPTS if LDS_SUBSETS else []),
        f"{RESULTS}/report/index.html",

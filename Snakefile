# concept-attribution: which training images taught a network a concept at a layer?
# Stages (../shared/SPEC.md): data -> train -> activations -> probes -> summary
#                             -> TRAK featurize (sharded) -> gather -> score -> trak_report
#                             -> ablate -> train/activations/probes again per condition
#                             -> compare -> report_html.
import sys

sys.path.insert(0, workflow.basedir)

from snakemake.utils import min_version, validate
from workflow.config import check as check_config

min_version("9.0")


configfile: "config.yaml"


# One-line errors naming the key or path, before any job starts; then fill defaults.
check_config(config, f"{workflow.basedir}/config/schema.yaml")
validate(config, "config/schema.yaml", set_default=True)


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/activations.smk"
include: "rules/probes.smk"
include: "rules/summary.smk"
include: "rules/trak.smk"
include: "rules/ablate.smk"
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
        f"{RESULTS}/report/index.html",

# Stage 1: base train/test sets and one probe set per concept.


rule base_data:
    output:
        f"{RESULTS}/data/base.h5",
    params:
        cfg=lambda w: as_json(data_params()),
        code=code_digest("data", "datasets", "h5io", "seeding"),
    resources:
        **rule_resources("data"),
    log:
        f"{LOGS}/base_data.log",
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m workflow base --params {params.cfg:q} --output {output:q} > {log:q} 2>&1"


rule probe_set:
    input:
        f"{RESULTS}/data/base.h5",
    output:
        f"{RESULTS}/data/probe_{{concept}}.h5",
    params:
        cfg=lambda w: as_json(concept_params(w.concept)),
        code=code_digest("data", "datasets", "h5io", "seeding"),
    resources:
        **rule_resources("data"),
    log:
        f"{LOGS}/probe_set/{{concept}}.log",
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m workflow probe-set --params {params.cfg:q} --concept {wildcards.concept} "
        "--input {input:q} --output {output:q} > {log:q} 2>&1"

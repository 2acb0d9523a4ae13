# Stage 1: base train/test sets and one probe set per concept.

BASE = f"{RESULTS}/data/base.h5"
PROBE_SET = f"{RESULTS}/data/probe_{{concept}}.h5"


rule base_data:
    output:
        data=BASE,
    params:
        cfg=lambda w: as_json(data_params()),
        files=stage_files({}, {"data": BASE}),
        code=code_digest("base"),
    threads: config["threads"]["data"]
    resources:
        **rule_resources("data"),
    log:
        f"{LOGS}/base_data.log",
    conda:
        "../envs/torch.yaml"
    shell:
        stage_cmd("base")


rule probe_set:
    input:
        unpack(inputs({"base": BASE})),
    output:
        probe_set=PROBE_SET,
    params:
        cfg=lambda w: as_json(concept_params(w.concept)),
        files=stage_files({"base": BASE}, {"probe_set": PROBE_SET}),
        code=code_digest("probe-set"),
    priority: CRITICAL
    resources:
        **rule_resources("data"),
    log:
        f"{LOGS}/probe_set/{{concept}}.log",
    conda:
        "../envs/torch.yaml"
    shell:
        stage_cmd("probe-set")

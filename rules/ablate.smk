# Stage 7: the ablated training set of every non-base condition (top-k, random, oracle).

ABLATION = f"{RESULTS}/ablation/{{condition}}.h5"


rule ablate:
    input:
        unpack(inputs(ablate_inputs)),
    output:
        ablation=ABLATION,
    params:
        cfg=lambda w: as_json(ablation_params(w.condition)),
        files=stage_files(ablate_inputs, {"ablation": ABLATION}),
        code=code_digest("ablate"),
    priority: CRITICAL
    resources:
        **rule_resources("ablate"),
    log:
        f"{LOGS}/ablation/{{condition}}.log",
    conda:
        "../envs/sklearn.yaml"
    shell:
        stage_cmd("ablate")

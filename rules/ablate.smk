# Stage 7: the ablated training set of every non-base condition (top-k, random, oracle).


rule ablate:
    input:
        ablate_inputs,
    output:
        f"{RESULTS}/ablation/{{condition}}.h5",
    params:
        cfg=lambda w: as_json(ablation_params(w.condition)),
        code=code_digest("ablation", "summary", "probes", "h5io", "seeding"),
    resources:
        **rule_resources("ablate"),
    log:
        f"{LOGS}/ablation/{{condition}}.log",
    conda:
        "../envs/sklearn.yaml"
    shell:
        "python -m workflow ablate --params {params.cfg:q} --condition {wildcards.condition} "
        "--input {input:q} --output {output:q} > {log:q} 2>&1"

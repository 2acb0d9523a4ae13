# Stage 4: dense probe + L1-path sparsity per (concept, member, layer); one file per concept.


rule probes:
    input:
        probe_set=f"{RESULTS}/data/probe_{{concept}}.h5",
        acts=expand(f"{RESULTS}/{{{{condition}}}}/activations/m{{member}}/{{{{concept}}}}.h5", member=MEMBERS),
    output:
        f"{RESULTS}/{{condition}}/probes/{{concept}}.h5",
    params:
        cfg=lambda w: as_json(probe_params()),
        code=code_digest("probes", "h5io"),
    threads: config["threads"]["probes"]
    resources:
        **rule_resources("probes"),
    log:
        f"{LOGS}/{{condition}}/probes/{{concept}}.log",
    conda:
        "../envs/sklearn.yaml"
    shell:
        "python -m workflow probes --params {params.cfg:q} "
        "--input {input.probe_set:q} {input.acts:q} --output {output:q} > {log:q} 2>&1"

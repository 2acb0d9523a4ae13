# Stage 4: dense probe + L1-path sparsity per (concept, member, layer); one file per concept.

PROBES = f"{RESULTS}/{{condition}}/probes/{{concept}}.h5"
PROBE_INPUTS = {"probe_set": PROBE_SET, "activations": keyed(ACTIVATIONS, member=MEMBERS)}


rule probes:
    input:
        unpack(inputs(PROBE_INPUTS)),
    output:
        probes=PROBES,
    params:
        cfg=lambda w: as_json(probe_params()),
        files=stage_files(PROBE_INPUTS, {"probes": PROBES}),
        code=code_digest("probes"),
    threads: config["threads"]["probes"]
    priority: critical_path_priority
    resources:
        **rule_resources("probes"),
    log:
        f"{LOGS}/{{condition}}/probes/{{concept}}.log",
    conda:
        "../envs/sklearn.yaml"
    shell:
        stage_cmd("probes")

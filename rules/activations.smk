# Stage 3: pooled activations, one job per (condition, member, probe set).

ACTIVATIONS = f"{RESULTS}/{{condition}}/activations/m{{member}}/{{concept}}.h5"
ACTIVATION_INPUTS = {"model": MODEL, "probe_set": PROBE_SET}


rule activations:
    input:
        unpack(inputs(ACTIVATION_INPUTS)),
    output:
        activations=ACTIVATIONS,
    params:
        cfg=lambda w: as_json(activation_params()),
        files=stage_files(ACTIVATION_INPUTS, {"activations": ACTIVATIONS}),
        code=code_digest("activations"),
    threads: config["threads"]["activations"]
    resources:
        **rule_resources("activations", device=config["activations"]["device"]),
    log:
        f"{LOGS}/{{condition}}/activations/m{{member}}_{{concept}}.log",
    conda:
        "../envs/torch.yaml"
    shell:
        stage_cmd("activations")

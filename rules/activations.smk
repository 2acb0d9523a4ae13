# Stage 3: pooled activations, one job per (condition, member): the model is loaded once
# and run on every concept's probe set (one file per probe set).

ACTIVATIONS = f"{RESULTS}/{{condition}}/activations/m{{member}}/{{concept}}.h5"
ACTIVATION_INPUTS = {"model": MODEL, "probe_sets": keyed(PROBE_SET, concept=CONCEPTS)}
ACTIVATION_OUTPUTS = {"activations": keyed(ACTIVATIONS, concept=CONCEPTS)}


rule activations:
    input:
        unpack(inputs(ACTIVATION_INPUTS)),
    output:
        **flat(ACTIVATION_OUTPUTS),
    params:
        cfg=lambda w: as_json(activation_params()),
        files=stage_files(ACTIVATION_INPUTS, ACTIVATION_OUTPUTS),
        code=code_digest("activations"),
    threads: config["threads"]["activations"]
    priority: critical_path_priority
    resources:
        **rule_resources("activations", device=config["activations"]["device"]),
    log:
        f"{LOGS}/{{condition}}/activations/m{{member}}.log",
    conda:
        "../envs/torch.yaml"
    shell:
        stage_cmd("activations")

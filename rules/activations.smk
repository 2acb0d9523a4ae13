# Stage 3: pooled activations, one job per (condition, member, probe set).


rule activations:
    input:
        model=f"{RESULTS}/{{condition}}/models/m{{member}}.h5",
        images=f"{RESULTS}/data/probe_{{concept}}.h5",
    output:
        f"{RESULTS}/{{condition}}/activations/m{{member}}/{{concept}}.h5",
    params:
        cfg=lambda w: as_json(activation_params()),
        code=code_digest("activations", "models", "checkpoints", "h5io"),
    threads: config["threads"]["activations"]
    resources:
        **rule_resources("activations", device=config["activations"]["device"]),
    log:
        f"{LOGS}/{{condition}}/activations/m{{member}}_{{concept}}.log",
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m workflow activations --params {params.cfg:q} --threads {threads} "
        "--input {input.model:q} {input.images:q} --output {output:q} > {log:q} 2>&1"

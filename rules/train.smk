# Stages 2 and 8: one job per (condition, member). "base" trains on the whole train split;
# every ablated condition on its kept indices, with the same recipe and the same seeds.


rule train:
    input:
        train_inputs,
    output:
        f"{RESULTS}/{{condition}}/models/m{{member}}.h5",
    params:
        cfg=lambda w: as_json(train_params()),
        code=code_digest("train", "models", "checkpoints", "imagesets", "h5io", "seeding"),
    threads: config["threads"]["train"]
    resources:
        **rule_resources("train", device=config["train"]["device"]),
    log:
        f"{LOGS}/{{condition}}/train/m{{member}}.log",
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m workflow train --params {params.cfg:q} --member {wildcards.member} --threads {threads} "
        "--input {input:q} --output {output:q} > {log:q} 2>&1"

# Stages 2 and 8: one job per (condition, member). "base" trains on the whole train split;
# every ablated condition on its kept indices, with the same recipe and the same seeds.

MODEL = f"{RESULTS}/{{condition}}/models/m{{member}}.h5"


rule train:
    input:
        unpack(inputs(train_inputs)),
    output:
        model=MODEL,
    params:
        cfg=lambda w: as_json(train_params(w)),
        files=stage_files(train_inputs, {"model": MODEL}),
        code=code_digest("train"),
    threads: config["threads"]["train"]
    priority: critical_path_priority
    resources:
        **rule_resources("train", device=config["train"]["device"]),
    log:
        f"{LOGS}/{{condition}}/train/m{{member}}.log",
    conda:
        "../envs/torch.yaml"
    shell:
        stage_cmd("train")

# Stage 2: one job per ensemble member (and, later, per training condition).


rule train:
    input:
        f"{RESULTS}/data/base.h5",
    output:
        f"{RESULTS}/{{condition}}/models/m{{member}}.h5",
    params:
        cfg=lambda w: as_json(train_params()),
        code=code_digest("train", "models", "checkpoints", "imagesets", "h5io", "seeding"),
    threads: config["threads"]["train"]
    log:
        f"{LOGS}/{{condition}}/train/m{{member}}.log",
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m workflow train --params {params.cfg:q} --member {wildcards.member} --threads {threads} "
        "--input {input:q} --output {output:q} > {log:q} 2>&1"

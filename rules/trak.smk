# Stages 5-6: TRAK features of the training set (sharded), gathered per model checkpoint,
# then scores whose target is each concept probe at each layer, and a first-look report.


rule featurize:
    input:
        model=f"{RESULTS}/{{condition}}/models/m{{member}}.h5",
        data=f"{RESULTS}/data/base.h5",
    output:
        f"{RESULTS}/{{condition}}/trak/features/m{{member}}/{{ckpt}}/shard{{shard}}.h5",
    params:
        cfg=lambda w: as_json(trak_params(*FEATURIZE_KEYS)),
        code=code_digest("trak_features", "projectors", "factored", "models", "checkpoints", "imagesets", "h5io"),
    threads: config["threads"]["trak"]
    resources:
        **rule_resources("featurize", device=config["trak"]["device"]),
    log:
        f"{LOGS}/{{condition}}/featurize/m{{member}}_{{ckpt}}_shard{{shard}}.log",
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m workflow featurize --params {params.cfg:q} --member {wildcards.member} "
        "--checkpoint {wildcards.ckpt} --shard {wildcards.shard} --threads {threads} "
        "--input {input.model:q} {input.data:q} --output {output:q} > {log:q} 2>&1"


rule gather_features:
    input:
        expand(f"{RESULTS}/{{{{condition}}}}/trak/features/m{{{{member}}}}/{{{{ckpt}}}}/shard{{shard}}.h5",
               shard=SHARDS),
    output:
        f"{RESULTS}/{{condition}}/trak/features/m{{member}}_{{ckpt}}.h5",
    params:
        cfg=lambda w: as_json(trak_params(*FEATURIZE_KEYS, "lambda_reg")),
        code=code_digest("trak_features", "h5io"),
    resources:
        **rule_resources("gather"),
    log:
        f"{LOGS}/{{condition}}/gather/m{{member}}_{{ckpt}}.log",
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m workflow gather --params {params.cfg:q} --input {input:q} --output {output:q} > {log:q} 2>&1"


rule score:
    input:
        probe_set=f"{RESULTS}/data/probe_{{concept}}.h5",
        probes=f"{RESULTS}/{{condition}}/probes/{{concept}}.h5",
        models=expand(f"{RESULTS}/{{{{condition}}}}/models/m{{member}}.h5", member=MEMBERS),
        features=expand(f"{RESULTS}/{{{{condition}}}}/trak/features/m{{member}}_{{ckpt}}.h5",
                        member=MEMBERS, ckpt=TRAK_CKPTS),
    output:
        scores=f"{RESULTS}/{{condition}}/trak/scores/{{concept}}/{{layer}}.h5",
        enrichment=f"{RESULTS}/{{condition}}/trak/scores/{{concept}}/{{layer}}.json",
    params:
        cfg=lambda w: as_json({**trak_params(*FEATURIZE_KEYS, "lambda_reg", "max_targets", "top_fraction"),
                               "members": MEMBERS}),
        code=code_digest("trak_scores", "trak_features", "probe_function", "projectors", "factored", "probes",
                         "models", "checkpoints", "h5io"),
    threads: config["threads"]["trak"]
    resources:
        **rule_resources("score", device=config["trak"]["device"]),
    log:
        f"{LOGS}/{{condition}}/score/{{concept}}_{{layer}}.log",
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m workflow score --params {params.cfg:q} --concept {wildcards.concept} --layer {wildcards.layer} "
        "--threads {threads} --input {input.probe_set:q} {input.probes:q} {input.models:q} {input.features:q} "
        "--output {output.scores:q} {output.enrichment:q} > {log:q} 2>&1"


rule trak_report:
    input:
        summary=f"{RESULTS}/{{condition}}/summary.json",
        data=f"{RESULTS}/data/base.h5",
        scores=expand(f"{RESULTS}/{{{{condition}}}}/trak/scores/{{concept}}/{{layer}}.h5",
                      concept=CONCEPTS, layer=LAYERS),
        enrichment=expand(f"{RESULTS}/{{{{condition}}}}/trak/scores/{{concept}}/{{layer}}.json",
                          concept=CONCEPTS, layer=LAYERS),
    output:
        table=f"{RESULTS}/{{condition}}/trak/enrichment.json",
        text=f"{RESULTS}/{{condition}}/trak/enrichment.txt",
        grids=expand(f"{RESULTS}/{{{{condition}}}}/trak/top_bottom_{{concept}}.png", concept=CONCEPTS),
    params:
        cfg=lambda w: as_json({"concepts": CONCEPTS, "layers": LAYERS}),
        code=code_digest("trak_report", "ablation", "h5io"),
    resources:
        **rule_resources("report"),
    log:
        f"{LOGS}/{{condition}}/trak_report.log",
    conda:
        "../envs/sklearn.yaml"
    shell:
        "python -m workflow trak-report --params {params.cfg:q} "
        "--input {input.summary:q} {input.data:q} {input.scores:q} {input.enrichment:q} "
        "--output {output.table:q} {output.text:q} {output.grids:q} 2> {log:q} | tee -a {log:q}"

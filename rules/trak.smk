# Stages 5-6: TRAK features of the training set, one job per (member, shard) covering every
# checkpoint (the images are read once for all of them), gathered per member; then one
# score job per condition: each model's features are read once for every (concept, layer)
# target, whose probe is each concept probe at each layer; and a first-look report.

SHARD = f"{RESULTS}/{{condition}}/trak/features/m{{member}}/{{ckpt}}/shard{{shard}}.h5"
FEATURES = f"{RESULTS}/{{condition}}/trak/features/m{{member}}_{{ckpt}}.h5"
SCORES = f"{RESULTS}/{{condition}}/trak/scores/{{concept}}/{{layer}}.h5"
ENRICHMENT = f"{RESULTS}/{{condition}}/trak/scores/{{concept}}/{{layer}}.json"

FEATURIZE_INPUTS = {"model": MODEL, "data": BASE}
FEATURIZE_OUTPUTS = {"shards": keyed(SHARD, ckpt=TRAK_CKPTS)}


rule featurize:
    input:
        unpack(inputs(FEATURIZE_INPUTS)),
    output:
        **flat(FEATURIZE_OUTPUTS),
    params:
        cfg=lambda w: as_json(trak_params(*FEATURIZE_KEYS)),
        files=stage_files(FEATURIZE_INPUTS, FEATURIZE_OUTPUTS),
        code=code_digest("featurize"),
    threads: config["threads"]["trak"]
    priority: CRITICAL
    resources:
        **rule_resources("featurize", device=config["trak"]["device"]),
    log:
        f"{LOGS}/{{condition}}/featurize/m{{member}}_shard{{shard}}.log",
    conda:
        "../envs/torch.yaml"
    shell:
        stage_cmd("featurize")


GATHER_INPUTS = {"shards": keyed(SHARD, ckpt=TRAK_CKPTS, shard=SHARDS)}
GATHER_OUTPUTS = {"features": keyed(FEATURES, ckpt=TRAK_CKPTS)}


rule gather_features:
    input:
        unpack(inputs(GATHER_INPUTS)),
    output:
        **flat(GATHER_OUTPUTS),
    params:
        cfg=lambda w: as_json(trak_params(*FEATURIZE_KEYS, "lambda_reg")),
        files=stage_files(GATHER_INPUTS, GATHER_OUTPUTS),
        code=code_digest("gather"),
    priority: CRITICAL
    resources:
        **rule_resources("gather"),
    log:
        f"{LOGS}/{{condition}}/gather/m{{member}}.log",
    conda:
        "../envs/torch.yaml"
    shell:
        stage_cmd("gather")


SCORE_INPUTS = {"probe_sets": keyed(PROBE_SET, concept=CONCEPTS), "probes": keyed(PROBES, concept=CONCEPTS),
                "models": keyed(MODEL, member=MEMBERS),
                "features": keyed(FEATURES, member=MEMBERS, ckpt=TRAK_CKPTS)}
SCORE_OUTPUTS = {"scores": keyed(SCORES, concept=CONCEPTS, layer=LAYERS),
                 "enrichment": keyed(ENRICHMENT, concept=CONCEPTS, layer=LAYERS),
                 "cost": f"{RESULTS}/{{condition}}/trak/cost.json"}


rule score:
    input:
        unpack(inputs(SCORE_INPUTS)),
    output:
        **flat(SCORE_OUTPUTS),
    params:
        cfg=lambda w: as_json(score_params("trak")),
        files=stage_files(SCORE_INPUTS, SCORE_OUTPUTS),
        code=code_digest("score"),
    threads: config["threads"]["trak"]
    priority: CRITICAL
    resources:
        **rule_resources("score", device=config["trak"]["device"]),
    log:
        f"{LOGS}/{{condition}}/score.log",
    conda:
        "../envs/torch.yaml"
    shell:
        stage_cmd("score")


# The other estimators of the registry (workflow/attribution/estimators.py), one job each:
# adding one to the config runs its job alone. Same inputs as TRAK's, plus the base file
# (the similarity baseline reads the training images' activations).
EST_SCORES = f"{RESULTS}/{{condition}}/attribution/{{estimator}}/{{concept}}/{{layer}}.h5"
EST_ENRICHMENT = f"{RESULTS}/{{condition}}/attribution/{{estimator}}/{{concept}}/{{layer}}.json"
ESTIMATE_INPUTS = {**SCORE_INPUTS, "data": BASE}
ESTIMATE_OUTPUTS = {"scores": keyed(EST_SCORES, concept=CONCEPTS, layer=LAYERS),
                    "enrichment": keyed(EST_ENRICHMENT, concept=CONCEPTS, layer=LAYERS),
                    "cost": f"{RESULTS}/{{condition}}/attribution/{{estimator}}/cost.json"}


rule estimate:
    input:
        unpack(inputs(ESTIMATE_INPUTS)),
    output:
        **flat(ESTIMATE_OUTPUTS),
    params:
        cfg=lambda w: as_json(score_params(w.estimator)),
        files=stage_files(ESTIMATE_INPUTS, ESTIMATE_OUTPUTS),
        code=code_digest("estimate"),
    threads: config["threads"]["trak"]
    resources:
        **rule_resources("score", device=config["trak"]["device"]),
    log:
        f"{LOGS}/{{condition}}/estimate_{{estimator}}.log",
    conda:
        "../envs/torch.yaml"
    shell:
        stage_cmd("estimate")


# Every estimator's scores of the targets' classification margin (TRAK's own output
# function): the LDS stage's second readout, comparable with the literature. A job of its
# own, so only a run that asks for the LDS computes the margin's target gradients.
MARGIN_SCORES = f"{RESULTS}/{{condition}}/attribution/{{estimator}}/{{concept}}/classification_margin.h5"
MARGIN_INPUTS = {"probe_sets": keyed(PROBE_SET, concept=CONCEPTS), "models": keyed(MODEL, member=MEMBERS), "data": BASE,
                 "features": keyed(FEATURES, member=MEMBERS, ckpt=TRAK_CKPTS)}
MARGIN_OUTPUTS = {"margin": keyed(MARGIN_SCORES, concept=CONCEPTS),
                  "cost": f"{RESULTS}/{{condition}}/attribution/{{estimator}}/margin_cost.json"}


rule score_margin:
    input:
        unpack(inputs(MARGIN_INPUTS)),
    output:
        **flat(MARGIN_OUTPUTS),
    params:
        cfg=lambda w: as_json({**score_params(w.estimator), "estimators": [w.estimator], "readout": "margin"}),
        files=stage_files(MARGIN_INPUTS, MARGIN_OUTPUTS),
        code=code_digest("score-margin"),
    threads: config["threads"]["trak"]
    resources:
        **rule_resources("score", device=config["trak"]["device"]),
    log:
        f"{LOGS}/{{condition}}/score_margin_{{estimator}}.log",
    conda:
        "../envs/torch.yaml"
    shell:
        stage_cmd("score-margin")


TRAK_REPORT_INPUTS = {"summary": SUMMARY, "data": BASE, "probe_sets": keyed(PROBE_SET, concept=CONCEPTS),
                      "scores": keyed(SCORES, concept=CONCEPTS, layer=LAYERS),
                      "enrichment": keyed(ENRICHMENT, concept=CONCEPTS, layer=LAYERS)}
TRAK_REPORT_OUTPUTS = {"table": f"{RESULTS}/{{condition}}/trak/enrichment.json",
                       "text": f"{RESULTS}/{{condition}}/trak/enrichment.txt",
                       "grids": keyed(f"{RESULTS}/{{condition}}/trak/top_bottom_{{concept}}.png", concept=CONCEPTS)}


rule trak_report:
    input:
        unpack(inputs(TRAK_REPORT_INPUTS)),
    output:
        **flat(TRAK_REPORT_OUTPUTS),
    params:
        cfg=lambda w: as_json({"concepts": CONCEPTS, "layers": LAYERS}),
        files=stage_files(TRAK_REPORT_INPUTS, TRAK_REPORT_OUTPUTS),
        code=code_digest("trak-report"),
    resources:
        **rule_resources("report"),
    log:
        f"{LOGS}/{{condition}}/trak_report.log",
    conda:
        "../envs/sklearn.yaml"
    shell:
        stage_cmd("trak-report")

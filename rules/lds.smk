# Attribution quality: the LDS of each estimator on the concept readout, one job per concept
# (random subsets removed, each trained as a paired twin of the lds.members; base probe fixed).

LDS = f"{RESULTS}/lds/{{concept}}"
LDS_ESTIMATORS = config["lds"]["estimators"]
LDS_INPUTS = {
    "probe_set": PROBE_SET,
    "probes": partial(PROBES, condition="base"),
    "activations": keyed(ACTIVATIONS, condition=["base", *LDS_SUBSETS], member=LDS_MEMBERS),
    "ablations": keyed(ABLATION, condition=list(LDS_SUBSETS)),
    "scores": {e: keyed(scores_of(e), layer=LAYERS) for e in LDS_ESTIMATORS},
    "margin": {e: margin_scores_of(e) for e in LDS_ESTIMATORS},
}
LDS_OUTPUTS = {"h5": f"{LDS}.h5", "json": f"{LDS}.json", "txt": f"{LDS}.txt"}


rule lds:
    input:
        unpack(inputs(LDS_INPUTS)),
    output:
        **LDS_OUTPUTS,
    params:
        cfg=lambda w: as_json({"seed": config["seed"], "confidence": config["compare"]["confidence"],
                               "designs": LDS_SUBSETS, "members": LDS_MEMBERS,
                               "estimators": config["lds"]["estimators"]}),
        files=stage_files(LDS_INPUTS, LDS_OUTPUTS),
        code=code_digest("lds"),
    resources:
        **rule_resources("report"),
    log:
        f"{LOGS}/lds/{{concept}}.log",
    conda:
        "../envs/sklearn.yaml"
    shell:
        stage_cmd("lds")

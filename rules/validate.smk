# Stage 10: the counterfactual check of the attribution, one job per concept (every
# condition, member and validated layer), and the removal curves.

VALIDATE_INPUTS = {
    "probe_set": PROBE_SET,
    "probes": partial(PROBES, condition="base"),
    "activations": keyed(ACTIVATIONS, condition=CONDITIONS, member=MEMBERS),
    "summaries": keyed(SUMMARY, condition=CONDITIONS),
    "scores": keyed(partial(SCORES, condition="base"), layer=LAYERS),
    "ablations": keyed(ABLATION, condition=CONDITIONS[1:]),
}
VALIDATE_OUTPUTS = {"json": f"{RESULTS}/validate/{{concept}}.json", "txt": f"{RESULTS}/validate/{{concept}}.txt"}


rule validate:
    input:
        unpack(inputs(VALIDATE_INPUTS)),
    output:
        **VALIDATE_OUTPUTS,
    params:
        cfg=lambda w: as_json({"confidence": config["compare"]["confidence"], "designs": ABLATIONS,
                               "measure": config["compare"]["validate_measure"],
                               "margin_fraction": config["compare"]["margin_fraction"],
                               "margin_absolute": config["compare"]["margin_absolute"],
                               "layers": config["ablation"]["layers"]}),
        files=stage_files(VALIDATE_INPUTS, VALIDATE_OUTPUTS),
        code=code_digest("validate"),
    resources:
        **rule_resources("report"),
    log:
        f"{LOGS}/validate/{{concept}}.log",
    conda:
        "../envs/sklearn.yaml"
    shell:
        stage_cmd("validate")

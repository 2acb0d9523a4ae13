# Stage 9: compare every condition with the base ensemble, then the HTML report.

COMPARE_INPUTS = {
    "summaries": keyed(SUMMARY, condition=CONDITIONS),
    "ablations": keyed(ABLATION, condition=CONDITIONS[1:]),
    "models": keyed(MODEL, condition=CONDITIONS, member=MEMBERS),
    "probe_sets": keyed(PROBE_SET, concept=CONCEPTS),
}
COMPARE_OUTPUTS = {"json": f"{RESULTS}/compare/compare.json", "txt": f"{RESULTS}/compare/verdicts.txt"}


rule compare:
    input:
        unpack(inputs(COMPARE_INPUTS)),
    output:
        json=COMPARE_OUTPUTS["json"],
        txt=report(COMPARE_OUTPUTS["txt"], caption="../captions/verdicts.rst", category="Verdicts"),
    params:
        cfg=lambda w: as_json({"seed": config["seed"], "conditions": CONDITIONS,
                               **{k: config["compare"][k] for k in ("confidence", "max_test_acc_drop")},
                               "members": MEMBERS, "concepts": CONCEPTS}),
        files=stage_files(COMPARE_INPUTS, COMPARE_OUTPUTS),
        code=code_digest("compare"),
    resources:
        **rule_resources("report"),
    log:
        f"{LOGS}/compare.log",
    conda:
        "../envs/sklearn.yaml"
    shell:
        stage_cmd("compare")


REPORT = f"{RESULTS}/report"
REPORT_INPUTS = {
    "compare": COMPARE_OUTPUTS["json"],
    "summaries": keyed(SUMMARY, condition=CONDITIONS),
    "probe_sets": keyed(PROBE_SET, concept=CONCEPTS),
    "scores": keyed(partial(SCORES, condition="base"), concept=CONCEPTS, layer=LAYERS),
    "enrichment": f"{RESULTS}/base/trak/enrichment.json",
    "grids": keyed(f"{RESULTS}/base/trak/top_bottom_{{concept}}.png", concept=CONCEPTS),
    "validate": keyed(VALIDATE_OUTPUTS["json"], concept=CONCEPTS),
    "lds": keyed(LDS_OUTPUTS["json"], concept=CONCEPTS) if LDS_SUBSETS else {},
    "estimators": {e: keyed(scores_of(e).replace(".h5", ".json"), concept=CONCEPTS, layer=LAYERS)
                   for e in ESTIMATORS},
    "costs": {e: (f"{RESULTS}/base/trak/cost.json" if e == "trak" else
                  f"{RESULTS}/base/attribution/{e}/cost.json") for e in ESTIMATORS},
}
REPORT_OUTPUTS = {
    "html": f"{REPORT}/index.html",
    "accuracy": f"{REPORT}/accuracy.png",
    "sparsity": f"{REPORT}/sparsity.png",
    "scores": f"{REPORT}/scores.png",
    "enrichment": f"{REPORT}/enrichment.png",
    "curves": f"{REPORT}/curves.png",
    "forest": f"{REPORT}/forest.png",
    "scorecard": f"{REPORT}/scorecard.txt",
    "grids": keyed(f"{REPORT}/top_bottom_{{concept}}.png", concept=CONCEPTS),
}


rule report_html:
    input:
        unpack(inputs(REPORT_INPUTS)),
    output:
        html=REPORT_OUTPUTS["html"],
        accuracy=report(REPORT_OUTPUTS["accuracy"], caption="../captions/accuracy.rst", category="Comparison"),
        sparsity=report(REPORT_OUTPUTS["sparsity"], caption="../captions/sparsity.rst", category="Comparison"),
        scores=report(REPORT_OUTPUTS["scores"], caption="../captions/scores.rst", category="Attribution"),
        enrichment=report(REPORT_OUTPUTS["enrichment"], caption="../captions/enrichment.rst",
                          category="Attribution"),
        curves=report(REPORT_OUTPUTS["curves"], caption="../captions/curves.rst", category="Validation"),
        forest=report(REPORT_OUTPUTS["forest"], caption="../captions/forest.rst", category="Validation"),
        grids=report(leaves(REPORT_OUTPUTS["grids"]), caption="../captions/top_bottom.rst", category="Attribution"),
    params:
        cfg=lambda w: as_json({"concepts": CONCEPTS, "layers": LAYERS,
                               "ablation": {"fraction": config["ablation"]["fractions"][0],
                                            "top_k": config["ablation"]["top_k"]},
                               # the config shown on the page: all of it but thread counts
                               "config": {k: v for k, v in config.items() if k != "threads"}}),
        files=stage_files(REPORT_INPUTS, REPORT_OUTPUTS),
        code=code_digest("report"),
    resources:
        **rule_resources("report"),
    log:
        f"{LOGS}/report.log",
    conda:
        "../envs/sklearn.yaml"
    shell:
        stage_cmd("report")

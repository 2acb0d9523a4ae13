# Stage 9: compare every condition with the base ensemble, then the HTML report.


rule compare:
    input:
        summaries=expand(f"{RESULTS}/{{condition}}/summary.json", condition=CONDITIONS),
        ablations=expand(f"{RESULTS}/ablation/{{condition}}.h5", condition=CONDITIONS[1:]),
        models=expand(f"{RESULTS}/{{condition}}/models/m{{member}}.h5", condition=CONDITIONS, member=MEMBERS),
        probe_sets=expand(f"{RESULTS}/data/probe_{{concept}}.h5", concept=CONCEPTS),
    output:
        json=f"{RESULTS}/compare/compare.json",
        txt=report(f"{RESULTS}/compare/verdicts.txt", caption="../captions/verdicts.rst", category="Verdicts"),
    params:
        cfg=lambda w: as_json({"seed": config["seed"], **config["compare"], "conditions": CONDITIONS,
                               "members": MEMBERS, "concepts": CONCEPTS}),
        code=code_digest("compare", "ablation", "h5io", "seeding"),
    resources:
        **rule_resources("report"),
    log:
        f"{LOGS}/compare.log",
    conda:
        "../envs/sklearn.yaml"
    shell:
        "python -m workflow compare --params {params.cfg:q} --input {input:q} "
        "--output {output.json:q} {output.txt:q} 2> {log:q} | tee -a {log:q}"


REPORT = f"{RESULTS}/report"


rule report_html:
    input:
        compare=f"{RESULTS}/compare/compare.json",
        summaries=expand(f"{RESULTS}/{{condition}}/summary.json", condition=CONDITIONS),
        probe_sets=expand(f"{RESULTS}/data/probe_{{concept}}.h5", concept=CONCEPTS),
        scores=expand(f"{RESULTS}/base/trak/scores/{{concept}}/{{layer}}.h5", concept=CONCEPTS, layer=LAYERS),
        enrichment=f"{RESULTS}/base/trak/enrichment.json",
        grids=expand(f"{RESULTS}/base/trak/top_bottom_{{concept}}.png", concept=CONCEPTS),
    output:
        html=f"{REPORT}/index.html",
        accuracy=report(f"{REPORT}/accuracy.png", caption="../captions/accuracy.rst", category="Comparison"),
        sparsity=report(f"{REPORT}/sparsity.png", caption="../captions/sparsity.rst", category="Comparison"),
        scores=report(f"{REPORT}/scores.png", caption="../captions/scores.rst", category="Attribution"),
        enrichment=report(f"{REPORT}/enrichment.png", caption="../captions/enrichment.rst", category="Attribution"),
        grids=report(expand(f"{REPORT}/top_bottom_{{concept}}.png", concept=CONCEPTS),
                     caption="../captions/top_bottom.rst", category="Attribution"),
    params:
        cfg=lambda w: as_json({"concepts": CONCEPTS, "layers": LAYERS, "conditions": CONDITIONS,
                               "ablation": {k: config["ablation"][k] for k in ("fraction", "top_k")},
                               # the config shown on the page: all of it but thread counts
                               "config": {k: v for k, v in config.items() if k != "threads"}}),
        files=lambda w, input, output: as_json({"input": named(input), "output": named(output)}),
        code=code_digest("report", "ablation", "h5io"),
    resources:
        **rule_resources("report"),
    log:
        f"{LOGS}/report.log",
    conda:
        "../envs/sklearn.yaml"
    shell:
        "python -m workflow report --params {params.cfg:q} --files {params.files:q} 2> {log:q} | tee -a {log:q}"

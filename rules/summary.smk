# Summary: accuracy vs depth per concept with ensemble spread, and the concept location.


rule summarize:
    input:
        expand(f"{RESULTS}/{{{{condition}}}}/probes/{{concept}}.h5", concept=CONCEPTS),
    output:
        json=f"{RESULTS}/{{condition}}/summary.json",
        png=f"{RESULTS}/{{condition}}/summary.png",
        txt=f"{RESULTS}/{{condition}}/summary.txt",
    params:
        cfg=lambda w: as_json({"concepts": CONCEPTS}),
        code=code_digest("summary", "probes", "h5io"),
    resources:
        **rule_resources("report"),
    log:
        f"{LOGS}/{{condition}}/summary.log",
    conda:
        "../envs/sklearn.yaml"
    shell:
        "python -m workflow summary --params {params.cfg:q} --input {input:q} "
        "--output {output.json:q} {output.png:q} {output.txt:q} 2> {log:q} | tee -a {log:q}"


rule summary:
    input:
        json=f"{RESULTS}/base/summary.json",
        png=f"{RESULTS}/base/summary.png",
        txt=f"{RESULTS}/base/summary.txt",
    log:
        f"{LOGS}/summary.log",
    conda:
        "../envs/sklearn.yaml"
    shell:
        "cat {input.txt:q} | tee {log:q}"

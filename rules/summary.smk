# Summary: accuracy vs depth per concept with ensemble spread, and the concept location.

SUMMARY = f"{RESULTS}/{{condition}}/summary.json"
SUMMARY_INPUTS = {"probes": keyed(PROBES, concept=CONCEPTS)}
SUMMARY_OUTPUTS = {"json": SUMMARY, "png": f"{RESULTS}/{{condition}}/summary.png",
                   "txt": f"{RESULTS}/{{condition}}/summary.txt"}


rule summarize:
    input:
        unpack(inputs(SUMMARY_INPUTS)),
    output:
        **SUMMARY_OUTPUTS,
    params:
        cfg=lambda w: as_json({"concepts": CONCEPTS}),
        files=stage_files(SUMMARY_INPUTS, SUMMARY_OUTPUTS),
        code=code_digest("summary"),
    priority: critical_path_priority
    resources:
        **rule_resources("report"),
    log:
        f"{LOGS}/{{condition}}/summary.log",
    conda:
        "../envs/sklearn.yaml"
    shell:
        stage_cmd("summary")


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

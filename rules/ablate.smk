# Stage 7: the ablated training set of every non-base condition (top-k, random, oracle).


def ablate_inputs(w):
    spec = ABLATIONS[w.condition]
    inputs = [f"{RESULTS}/data/base.h5"]
    if spec["kind"] == "top":
        layers = LAYERS if spec["layer"] == "location" else [spec["layer"]]
        inputs.append(f"{RESULTS}/base/probes/{spec['concept']}.h5")  # the location
        inputs += [f"{RESULTS}/base/trak/scores/{spec['concept']}/{layer}.h5" for layer in layers]
    elif spec["kind"] == "oracle":
        inputs.append(f"{RESULTS}/data/probe_{spec['concept']}.h5")  # the ground truth
    return inputs


rule ablate:
    input:
        ablate_inputs,
    output:
        f"{RESULTS}/ablation/{{condition}}.h5",
    params:
        cfg=lambda w: as_json(ablation_params(w.condition)),
        code=code_digest("ablation", "summary", "probes", "h5io", "seeding"),
    log:
        f"{LOGS}/ablation/{{condition}}.log",
    conda:
        "../envs/sklearn.yaml"
    shell:
        "python -m workflow ablate --params {params.cfg:q} --condition {wildcards.condition} "
        "--input {input:q} --output {output:q} > {log:q} 2>&1"

"""Command line for the rules: ``python -m workflow <stage> --params JSON ...``.

Each stage takes its config slice as JSON (the rule's ``params``), its inputs and its
outputs; everything it logs goes to stderr, which the rules redirect to logs/.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path


def _zip(keys, paths):
    """Pair the ordered input files with their keys (members or concept names)."""
    if len(keys) != len(paths):
        raise SystemExit(f"expected {len(keys)} input files for {keys}, got {len(paths)}")
    return dict(zip(keys, paths))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m workflow")
    p.add_argument("stage", choices=["base", "probe-set", "train", "activations", "probes", "summary",
                                      "featurize", "gather", "score", "trak-report", "ablate", "compare", "report"])
    p.add_argument("--params", required=True, help="config slice as JSON")
    p.add_argument("--input", nargs="*", default=[])
    p.add_argument("--output", nargs="*", default=[])
    p.add_argument("--member", type=int)
    p.add_argument("--concept")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--checkpoint")
    p.add_argument("--shard", type=int)
    p.add_argument("--layer")
    p.add_argument("--condition")
    p.add_argument("--files", help="named inputs and outputs as JSON {input: {...}, output: {...}}")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = json.loads(a.params)
    t0 = time.time()
    if a.stage == "base":
        from .data import build_base
        build_base(cfg, a.output[0])
    elif a.stage == "probe-set":
        from .data import build_probe_set
        concept = next(c for c in cfg["concepts"] if c["name"] == a.concept)
        build_probe_set({k: v for k, v in cfg.items() if k != "concepts"}, concept, a.input[0], a.output[0])
    elif a.stage == "train":
        from .train import train_member
        keep = None
        if len(a.input) > 1:  # an ablated condition: train on the kept indices only
            from .ablation import load
            keep = load(a.input[1])["keep"]
        train_member(a.input[0], a.output[0], a.member, cfg, train_indices=keep, threads=a.threads)
    elif a.stage == "activations":
        from .activations import extract
        extract(a.input[0], a.input[1], a.output[0], cfg, threads=a.threads)
    elif a.stage == "probes":
        from .probes import fit_concept
        fit_concept(a.input[0], _zip(cfg["members"], a.input[1:]), a.output[0], cfg)
    elif a.stage == "summary":
        from .summary import write
        table = write(_zip(cfg["concepts"], a.input), *a.output)
        print(table)
    elif a.stage == "featurize":
        from .trak_features import featurize
        featurize(a.input[0], a.input[1], a.output[0], a.member, a.checkpoint, a.shard, cfg, threads=a.threads)
    elif a.stage == "gather":
        from .trak_features import gather
        gather(a.input, a.output[0], cfg)
    elif a.stage == "score":
        from .trak_scores import score
        members, ckpts = cfg["members"], cfg["trak"]["checkpoints"]
        models = dict(zip(members, a.input[2:2 + len(members)]))
        feats = a.input[2 + len(members):]
        keys = [(m, c) for m in members for c in ckpts]  # expand() order: member-major
        score(a.concept, a.layer, a.input[0], a.input[1], {k: models[k[0]] for k in keys}, _zip(keys, feats),
              a.output[0], a.output[1], cfg, threads=a.threads)
    elif a.stage == "trak-report":
        from .trak_report import write
        concepts, layers = cfg["concepts"], cfg["layers"]
        keys = [(c, l) for c in concepts for l in layers]  # expand() order: concept-major
        scores, enrichment = a.input[2:2 + len(keys)], a.input[2 + len(keys):]
        text = write(a.input[0], a.input[1], _zip(keys, scores), _zip(keys, enrichment), a.output[0],
                     _zip(concepts, a.output[2:]))
        Path(a.output[1]).write_text(text + "\n")
        print(text)
    elif a.stage == "ablate":
        from .ablation import make
        kind = cfg["spec"]["kind"]
        kw = ({"probes_path": a.input[1], "score_paths": a.input[2:]} if kind == "top"
              else {"probe_set_path": a.input[1]} if kind == "oracle" else {})
        make(a.condition, cfg, a.input[0], a.output[0], **kw)
    elif a.stage == "compare":
        from .compare import run
        print(run(a.input, a.output, cfg))
    elif a.stage == "report":
        from .report import build
        files = json.loads(a.files)
        print(f"report: {build(files['input'], files['output'], cfg)}")
    logging.getLogger("workflow").info("%s done in %.1fs", a.stage, time.time() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

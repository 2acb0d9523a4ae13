"""How far masked and skipped twins differ: two validate folders of the same experiment, one
run with ``ablation.retrain: skip`` and one with ``masked``, side by side.

    .venv/bin/python bench/twin_modes.py SKIPPED_VALIDATE_DIR MASKED_VALIDATE_DIR

For every concept (at its location) and every condition both runs hold, prints the change
of the fixed probe's selectivity (condition - base, mean over members with its t-interval)
and the twin correlation (per-channel correlation of base and twin activations) of each
mode, and the difference of the per-member changes, masked - skipped.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from workflow import stats


def main(argv=None) -> None:
    skipped, masked = (Path(p) for p in (argv or sys.argv[1:]))
    for path in sorted(skipped.glob("*.json")):
        a, b = json.loads(path.read_text()), json.loads((masked / path.name).read_text())
        la, lb = a["layers"][a["location"]], b["layers"][b["location"]]
        print(f"{a['concept']} at {a['location']} (masked run's location: {b['location']}); "
              f"selectivity change, mean over members [{int(100 * a['confidence'])}% t-interval]")
        print(f"  {'condition':<24} {'skipped':>26} {'masked':>26} {'masked - skipped':>26} "
              f"{'twin corr skip':>14} {'masked':>7}")
        for name, ca in la["conditions"].items():
            cb = lb["conditions"].get(name)
            if cb is None:
                continue
            sa, sb = (np.array(c["per_member"]["selectivity"]) for c in (ca, cb))
            diff = stats.t_interval(sb - sa, a["confidence"])
            print(f"  {name:<24} {stats.fmt(ca['change']['selectivity'], 3, True):>26} "
                  f"{stats.fmt(cb['change']['selectivity'], 3, True):>26} {stats.fmt(diff, 3, True):>26} "
                  f"{ca['twin_correlation']:14.3f} {cb['twin_correlation']:7.3f}")


if __name__ == "__main__":
    main()

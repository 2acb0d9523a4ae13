"""The estimator scorecard: per concept, one row per estimator of the registry.

Columns: enrichment of ground-truth concept images at the top and at the bottom of its
ranking (at the concept's location; where ground truth exists); its LDS on the concept
readout and on the targets' classification margin, per fraction (the LDS stage, where it
ran and scored the estimator); the three-way verdict of its top-k (where
``ablation.estimators`` retrained it); and its cost, the CPU seconds of its own scoring
work plus the work it shares (target gradients for the gradient estimators, activations
for similarity; the TRAK features stage, which the gradient estimators also read, is
counted apart). Torch-free.
"""
from __future__ import annotations

from .. import stats

UNDEFINED = "-"


def _ci(ci) -> str:
    return UNDEFINED if not ci else stats.fmt(ci, 3, True)


def cost_seconds(cost: dict, estimator: str) -> float:
    """An estimator's CPU seconds in its scoring job: its own arithmetic plus the shared work
    of its job (its job computes it for itself alone)."""
    return float(cost["estimators"][estimator] + sum(cost.get("shared", {}).values()))


def rows(concept: str, location: str, enrichment: dict, lds: dict | None, validation: dict, costs: dict) -> list:
    """Scorecard rows of one concept: ``enrichment`` {estimator: {layer: row}}, ``lds`` the LDS
    result (or None), ``validation`` the validate result, ``costs`` {estimator: cost json}."""
    out = []
    verdicts = validation.get("verdicts", {})
    fractions = list((lds or {}).get("fractions", {}))
    for est, by_layer in enrichment.items():
        e = by_layer.get(location, {})
        row = {"estimator": est,
               "top_enrichment": e.get("enrichment"), "bottom_enrichment": e.get("bottom_enrichment"),
               "lds": {}, "verdict": (verdicts.get(est) or {}).get("outcome"),
               "cpu_seconds": cost_seconds(costs[est], est) if est in costs else None}
        for f in fractions:
            v = lds["fractions"][f]["estimators"].get(est)
            if v is not None:
                row["lds"][f] = {"readout": v["per_target"], "selectivity": v["aggregate"], "margin": v.get("margin")}
        out.append(row)
    return out


def table(concept: str, location: str, card: list) -> tuple:
    """(header, rows of strings) for the report and the text file."""
    fractions = sorted({f for r in card for f in r["lds"]}, key=float)
    header = (["estimator", "top enrichment", "bottom enrichment"]
              + [h for f in fractions for h in (f"LDS readout @{f}", f"LDS margin @{f}")]
              + ["verdict of its top-k", "CPU s"])
    body = []
    for r in card:
        cells = [r["estimator"], _x(r["top_enrichment"]), _x(r["bottom_enrichment"])]
        for f in fractions:
            v = r["lds"].get(f) or {}
            cells += [_ci(v.get("readout")), _ci(v.get("margin"))]
        cells += [r["verdict"] or "not ablated", UNDEFINED if r["cpu_seconds"] is None else f"{r['cpu_seconds']:.1f}"]
        body.append(cells)
    return header, body


def _x(v) -> str:
    return UNDEFINED if v is None else f"{v:.2f}x"


def format_text(cards: dict) -> str:
    """``cards``: {concept: (location, rows)}."""
    lines = []
    for concept, (location, card) in cards.items():
        header, body = table(concept, location, card)
        widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
        lines.append(f"{concept} at {location}:")
        for cells in [header, *body]:
            lines.append("  " + "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)))
    return "\n".join(lines)

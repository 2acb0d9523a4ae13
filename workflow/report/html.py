"""Stage 9b: the static HTML report (results/<experiment>/report/index.html).

Sections: the answer (each concept's three-way verdict and a forest plot of its
contrasts), verdicts, the validation of the attribution (the counterfactual check with its
power) and the removal curves, base-task accuracy of every ensemble, accuracy vs depth
and sparsity vs depth per condition (t-intervals over members), concept-score
distributions, enrichment bars with their baselines, top/bottom image grids, and the
config used. Figures are PNG files next to index.html, referenced by relative paths.
"""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import yaml

from .. import artifacts, stats
from . import scorecard
from ..ablation.sets import size as ablation_size


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _condition_curves(compare: dict, summaries: dict, concept: str, key: str):
    """[(condition, mean, lo, hi)] over layers, base first; ``key`` is "acc" or "k"."""
    out = []
    conds = compare["conditions"]
    first = next(iter(conds.values()), None)
    if first is not None:
        rows = first["concepts"][concept]["per_layer"]
        out.append(("base", *[np.array([r[f"{key}_base"][q] for r in rows]) for q in ("point", "lo", "hi")]))
    else:  # no ablations configured: the base ensemble's spread
        s = summaries["base"][concept]
        vals = np.asarray(s["acc_per_member"] if key == "acc" else s["sparsity_k_per_member"], float)
        out.append(("base", vals.mean(0), vals.min(0), vals.max(0)))
    for cond, e in conds.items():
        rows = e["concepts"][concept]["per_layer"]
        out.append((cond, *[np.array([r[f"{key}_cond"][q] for r in rows]) for q in ("point", "lo", "hi")]))
    return out


def depth_figure(compare: dict, summaries: dict, concepts: list, layers: list, key: str, path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(concepts), figsize=(5.2 * len(concepts), 3.8), squeeze=False)
    x = np.arange(len(layers))
    for ax, concept in zip(axes[0], concepts):
        for i, (cond, mean, lo, hi) in enumerate(_condition_curves(compare, summaries, concept, key)):
            color = "black" if cond == "base" else f"C{i - 1}"
            ax.plot(x, mean, marker="o", color=color, lw=2 if cond == "base" else 1.2, label=cond)
            ax.fill_between(x, lo, hi, color=color, alpha=0.12)
        ax.set_xticks(x, layers)
        ax.set_title(f"{concept}")
        ax.grid(alpha=0.3)
        if key == "acc":
            ax.axhline(0.5, color="grey", ls="--", lw=0.8)
            ax.set_ylabel("held-out balanced accuracy")
        else:
            ax.set_ylabel("probing sparsity k (channels)")
        ax.legend(fontsize=7)
    fig.suptitle("probe accuracy vs depth" if key == "acc" else "probing sparsity vs depth (smaller = sparser)",
                 fontsize=10)
    fig.tight_layout()
    artifacts.save_figure(fig, path)
    plt.close(fig)


def scores_figure(scores: dict, truths: dict, locations: dict, k: int, path) -> None:
    """Histogram of each concept's scores at its location, split by ground truth when known."""
    plt = _plt()
    concepts = list(scores)
    fig, axes = plt.subplots(1, len(concepts), figsize=(5.2 * len(concepts), 3.5), squeeze=False)
    for ax, concept in zip(axes[0], concepts):
        s, truth = scores[concept], truths.get(concept)
        bins = np.linspace(np.quantile(s, 0.001), np.quantile(s, 0.999), 60)
        if truth is not None:
            ax.hist(s[~truth], bins=bins, alpha=0.6, label=f"without concept ({(~truth).sum()})", density=True)
            ax.hist(s[truth], bins=bins, alpha=0.6, label=f"with concept ({truth.sum()})", density=True)
        else:
            ax.hist(s, bins=bins, alpha=0.7, label="all training images", density=True)
        cut = np.sort(s)[::-1][min(k, len(s)) - 1]
        ax.axvline(cut, color="black", ls="--", lw=1, label=f"top-{k} cut")
        ax.set_title(f"{concept} at {locations[concept]}")
        ax.set_xlabel("TRAK concept score")
        ax.legend(fontsize=7)
    fig.tight_layout()
    artifacts.save_figure(fig, path)
    plt.close(fig)


def enrichment_figure(enrichment: dict, concepts: list, layers: list, path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(concepts), figsize=(5.2 * len(concepts), 3.5), squeeze=False)
    x = np.arange(len(layers))
    for ax, concept in zip(axes[0], concepts):
        table = enrichment.get(concept, {})
        for off, key, label in ((-0.3, "enrichment", "top-k"), (-0.1, "bottom_enrichment", "bottom-k"),
                                (0.1, "random_enrichment", "random"), (0.3, "hardest_enrichment", "hardest images")):
            vals = [table.get(layer, {}).get(key, np.nan) for layer in layers]
            ax.bar(x + off, vals, width=0.19, label=label)
        ax.axhline(1.0, color="grey", ls="--", lw=0.8)
        ax.set_xticks(x, layers)
        ax.set_title(f"{concept}: ground-truth share over base rate")
        ax.legend(fontsize=7)
    fig.tight_layout()
    artifacts.save_figure(fig, path)
    plt.close(fig)


CURVE_PANELS = (("refit_acc", "refit-probe accuracy change"), ("output_targets", "fixed-probe output change (targets)"),
                ("selectivity", "fixed-probe selectivity change"), ("bal_acc", "fixed-probe bal. accuracy change"))


def curves_figure(validations: dict, path) -> None:
    """Per concept (rows), the removal curves at its location: each panel one measure
    against the number of images removed, for top-k, bottom-k and random removal, with
    the t-interval over members as a band (an error bar at a single size)."""
    plt = _plt()
    concepts = list(validations)
    fig, axes = plt.subplots(len(concepts), len(CURVE_PANELS), figsize=(17, 3.3 * len(concepts)), squeeze=False)
    for row, concept in zip(axes, concepts):
        v = validations[concept]
        if max((len(p) for p in v["curves"].values()), default=0) <= 1:
            _conditions_side_by_side(row, v, concept)
            continue
        for ax, (key, title) in zip(row, CURVE_PANELS):
            for dodge, (kind, color) in zip((-0.015, 0.0, 0.015), (("top", "C3"), ("bottom", "C0"), ("random", "grey"))):
                pts = [p for p in v["curves"].get(kind, []) if p.get(key) is not None]
                if not pts:
                    continue
                x = np.array([p["n_removed"] for p in pts]) * (1 + dodge)   # side by side at equal sizes
                mid = np.array([p[key]["point"] for p in pts])
                lo = np.array([p[key]["lo"] for p in pts])
                hi = np.array([p[key]["hi"] for p in pts])
                ax.errorbar(x, mid, yerr=[mid - lo, hi - mid], marker="o", color=color, capsize=3, label=kind)
                if len(pts) > 1:
                    ax.fill_between(x, lo, hi, color=color, alpha=0.12)
            ax.axhline(0, color="black", lw=0.8)
            ax.set_title(f"{concept} at {v['location']}: {title}", fontsize=9)
            ax.set_xlabel("training images removed")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    artifacts.save_figure(fig, path)
    plt.close(fig)


def forest_rows(v: dict) -> list:
    """[(label, interval)] of a concept's decisive contrasts on the verdict's measure, at its
    location: top - random, top - matched, and the positive control oracle - random."""
    measure, loc = v["verdict"]["measure"], v["layers"][v["location"]]
    rows = []
    for name, c in loc["contrasts"].items():
        if c["control_kind"] in ("random", "matched") and name.startswith(f"top-{v['concept']} "):
            rows.append((f"top - {c['control_kind']}", c[measure]))
    if v.get("positive_control"):
        rows.append(("oracle - random (positive control)", v["positive_control"][measure]))
    return rows


def forest_figure(validations: dict, path) -> None:
    """One panel per concept: each contrast's point and interval, the +-delta equivalence band
    shaded and the detectable effect marked (x)."""
    plt = _plt()
    concepts = list(validations)
    fig, axes = plt.subplots(1, len(concepts), figsize=(5.6 * len(concepts), 2.6), squeeze=False)
    for ax, concept in zip(axes[0], concepts):
        v = validations[concept]
        rows = forest_rows(v)
        verdict = v["verdict"]
        delta = (verdict.get("margin") or {}).get("value")
        if delta:
            ax.axvspan(-delta, delta, color="tab:green", alpha=0.15, label=f"no-effect margin +-{delta:.3f}")
        ax.axvline(0, color="black", lw=0.8)
        for y, (label, ci) in enumerate(rows):
            color = "grey" if label.startswith("oracle") else "C3"
            ax.errorbar([ci["point"]], [y], xerr=[[ci["point"] - ci["lo"]], [ci["hi"] - ci["point"]]], fmt="o",
                        color=color, capsize=4)
            if np.isfinite(ci["mde"]) and not label.startswith("oracle"):
                ax.plot([-ci["mde"]], [y], "x", color="C0", label="detectable effect" if y == 0 else None)
        ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.invert_yaxis()
        outcome = (verdict.get("outcome") or "no verdict").upper()
        ax.set_title(f"{concept} at {v['location']}: {outcome}", fontsize=10)
        ax.set_xlabel(f"paired difference of the {verdict['measure']} change", fontsize=8)
        ax.grid(alpha=0.3, axis="x")
        if delta or rows:
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    artifacts.save_figure(fig, path)
    plt.close(fig)


def answer_html(validations: dict, forest_src: str) -> str:
    """The page's opening: one line per concept, its three-way verdict in plain words, and the forest plot."""
    lines = []
    for concept, v in validations.items():
        others = list(v.get("verdicts", {}).items())[1:]     # the main verdict first, then by estimator
        for label, verdict in [("", v["verdict"]), *((f"[by {est}'s top-k] ", x) for est, x in others)]:
            outcome = verdict.get("outcome") or "none"
            cls = {"supported": "supported", "no effect": "noeffect"}.get(outcome, "inconclusive")
            lines.append(f"<p class=\"verdict {cls}\">{html.escape(label + verdict['text'])}</p>")
    return ("".join(lines) + f'<img src="{html.escape(forest_src)}" alt="forest plot of the contrasts">'
            "<p class=\"note\">Each contrast is the paired difference, over members, of the change in the fixed "
            "base probe's readout between the top-k and a control of the same size: random images, or as many of "
            "the concept's own images at random as the top-k holds (matched). Supported: the top-k lowers the "
            "readout beyond every control. No effect: the whole interval lies inside the shaded margin, 25% of "
            "the positive control's effect scaled to the top-k's dose of concept images. Inconclusive: neither; "
            "x marks the smallest effect the design detects with 80% power.</p>")


def _conditions_side_by_side(row, v: dict, concept: str) -> None:
    """One removal size: every condition at the location as its own column (a numeric axis of
    nearly equal sizes would stack them)."""
    loc = v["layers"][v["location"]]
    names = list(loc["conditions"])
    colors = {"top": "C3", "bottom": "C0", "random": "grey", "matched": "C2", "oracle": "black"}
    for ax, (key, title) in zip(row, CURVE_PANELS):
        for x, name in enumerate(names):
            c = loc["conditions"][name]
            ci = c["refit_acc"] if key == "refit_acc" else c["change"].get(key)
            if ci is None:
                continue
            ax.errorbar([x], [ci["point"]], yerr=[[ci["point"] - ci["lo"]], [ci["hi"] - ci["point"]]], fmt="o",
                        capsize=3, color=colors.get(c["kind"], "C4"))
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(names)), [f"{n}\n({loc['conditions'][n]['n_removed']})" for n in names], fontsize=6,
                      rotation=30)
        ax.set_title(f"{concept} at {v['location']}: {title}", fontsize=9)
        ax.grid(alpha=0.3, axis="y")


def validation_html(validations: dict) -> str:
    """Per concept: the verdict, every condition's actual vs predicted change at the
    location, and the paired contrasts with their detectable effects."""
    parts = []
    for concept, v in validations.items():
        loc = v["layers"][v["location"]]
        parts.append(f"<h3>{html.escape(concept)} at {html.escape(v['location'])}</h3>")
        rows = []
        for cond, c in loc["conditions"].items():
            ch = c["change"]
            ps = c["predicted"].get("selectivity")
            dose = "-" if c.get("n_concept") is None else c["n_concept"]
            rows.append([cond, c["n_removed"], dose, stats.fmt(ch["output_targets"], 3, True),
                         f"{c['predicted']['mean']:+.3f}", f"{c['agreement']['pearson']:.2f}",
                         stats.fmt(ch["selectivity"], 3, True), "n/a" if ps is None else f"{ps:+.3f}",
                         stats.fmt(ch["output_positives"], 3, True), stats.fmt(ch["output_negatives"], 3, True),
                         stats.fmt(ch["bal_acc"], 3, True), stats.fmt(ch["auc"], 3, True),
                         f"{c['twin_correlation']:.2f}"])
        parts.append(_table(["condition", "removed", "concept images", "output change on targets",
                             "TRAK predicted (uncalibrated)", "agreement r", "selectivity change",
                             "TRAK predicted (uncalibrated)", "held-out positives",
                             "held-out negatives", "bal. accuracy change", "AUC change", "twin corr."], rows))

        def pred(x):
            return "n/a" if x is None else f"{x:+.3f}"
        crow = [[name, stats.fmt(c["selectivity"], 3, True), f"{c['selectivity']['mde']:.3f}",
                 pred(c["predicted_selectivity"]), stats.fmt(c["output_targets"], 3, True),
                 f"{c['output_targets']['mde']:.3f}", pred(c["predicted"]), stats.fmt(c["bal_acc"], 3, True),
                 f"{c['bal_acc']['mde']:.3f}"]
                for name, c in loc["contrasts"].items()]
        pc = v.get("positive_control")
        if pc:
            crow.append([f"oracle-{concept} - random (positive control)", stats.fmt(pc["selectivity"], 3, True),
                         f"{pc['selectivity']['mde']:.3f}", "", stats.fmt(pc["output_targets"], 3, True),
                         f"{pc['output_targets']['mde']:.3f}", "", stats.fmt(pc["bal_acc"], 3, True),
                         f"{pc['bal_acc']['mde']:.3f}"])
        if crow:
            parts.append(_table(["paired contrast", "selectivity diff", "detectable", "TRAK predicted (uncal.)",
                                 "output diff", "detectable", "TRAK predicted (uncal.)", "bal. acc diff",
                                 "detectable"],
                                crow))
        parts.append(f"<p class=\"note\">Unrelated base members' activation correlation at this layer: "
                     f"{loc['unrelated_member_correlation']:.2f}; {loc['n_targets']} TRAK targets, "
                     f"{loc.get('n_negatives', 0)} scored negatives. The verdict tests "
                     f"{html.escape(v.get('measure', 'output_targets'))}.</p>")
    return "".join(parts)


def lds_html(lds: dict) -> str:
    """The LDS table: per concept, fraction and estimator, the LDS per target and of the
    selectivity, and the LDS of the same targets' classification margin."""
    rows = []
    for concept, r in lds.items():
        for f, e in r["fractions"].items():
            for est, v in e["estimators"].items():
                agg, mg = v["aggregate"], v.get("margin")
                rows.append([concept, r["location"], f, e["n_subsets"], e["n_removed"], est,
                             "undefined" if v["per_target"] is None else stats.fmt(v["per_target"], 3, True),
                             "undefined" if not np.isfinite(agg["point"]) else stats.fmt(agg, 3, True),
                             ("undefined (no classes)" if not r.get("margin") else
                              "undefined" if mg is None else stats.fmt(mg, 3, True))])
    return (_table(["concept", "layer", "fraction", "subsets", "removed", "estimator", "LDS per target (mean)",
                    "LDS of the selectivity", "LDS of the classification margin"], rows)
            + "<p class=\"note\">LDS: the Spearman correlation, over random training subsets each removed and "
            "retrained as a paired twin, between an estimator's predicted readout (the sum of its scores over the "
            "images kept) and the actual readout of the base probe held fixed. 1 = the estimator ranks the subsets "
            "exactly; about 0 = no better than random scores. Per target: mean over the concept's TRAK targets; "
            "intervals: bootstrap over subsets. The margin column is the literature's LDS (the targets' "
            "classification margin at their class, with TRAK scores of that margin). Baselines that score targets and "
            "negatives alike cannot predict the selectivity (undefined).</p>")


def _table(header, rows, classes=None) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


CSS = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f3f3f3}tr.target td{font-weight:bold}
tr.failed td{background:#fde0e0}p.verdict{font-weight:bold}p.supported{color:#1a6b1a}p.noeffect{color:#1a4f8a}p.inconclusive{color:#9a5b00}img{max-width:100%;border:1px solid #eee}pre{background:#f7f7f7;padding:1em;
overflow-x:auto}section{margin-bottom:2.5em}.note{color:#555;font-size:0.9em}"""


def scorecard_html(cards: dict) -> str:
    parts = []
    for concept, (location, card) in cards.items():
        header, body = scorecard.table(concept, location, card)
        parts.append(f"<h3>{html.escape(concept)} at {html.escape(location)}</h3>" + _table(header, body))
    return ("".join(parts) + "<p class=\"note\">One row per estimator (attribution.estimators; docs/method.md, "
            "\"Estimators\"). Enrichment: the share of ground-truth concept images among its top-k and bottom-k "
            "over their base rate. LDS: the Spearman correlation over random removed subsets of its predicted and "
            "the actual readout (the fixed probe's output on the targets) and the targets' classification margin, "
            "with bootstrap intervals. Verdict: the three-way verdict of its top-k (ablation.estimators). CPU s: "
            "its scoring job's CPU seconds (target gradients included; the shared TRAK features stage not).</p>")


def render_html(compare: dict, config: dict, figures: dict, enrichment: dict, grids: dict,
                validations: dict, lds: dict | None = None, cards: dict | None = None) -> str:
    """The page. ``figures``: {name: file name}; ``grids``: {concept: file name};
    ``validations``: {concept: validate result}."""
    exp = html.escape(config.get("experiment", ""))
    conds = compare["conditions"]
    rows, classes = [], []
    for cond, e in conds.items():
        for concept, c in e["concepts"].items():
            rows.append([cond, concept, e["info"].get("reason", ""), c["verdict"]["text"]])
            classes.append(" ".join(filter(None, ["target" if concept == e["info"].get("concept") else "",
                                                  "" if e["trained_ok"] else "failed"])))
    verdicts = (_table(["condition", "concept", "what was removed", "verdict"], rows, classes) if rows else
                "<p>No ablation conditions are configured (ablation.controls and ablation.layers).</p>")
    base_acc = compare.get("base_test_acc_per_member", [])
    train_rows = [["base", "-", f"{np.mean(base_acc):.3f}" if base_acc else "", ", ".join(f"{a:.3f}" for a in base_acc),
                   "", "yes"]]
    for cond, e in conds.items():
        train_rows.append([cond, e["info"].get("n_removed", ""), f"{np.mean(e['test_acc_per_member']):.3f}",
                           ", ".join(f"{a:.3f}" for a in e["test_acc_per_member"]), e["test_acc_note"],
                           "yes" if e["trained_ok"] else "NO: comparison meaningless"])
    enrich_rows = []
    for concept, table in enrichment.items():
        for layer, v in table.items():
            if isinstance(v, dict) and "enrichment" in v:
                mark = " (location)" if layer == table.get("location") else ""
                enrich_rows.append([concept, layer + mark, v["k"], f"{v['enrichment']:.2f}x",
                                    f"{v['bottom_enrichment']:.2f}x", f"{v['random_enrichment']:.2f}x",
                                    f"{v['hardest_enrichment']:.2f}x"])

    def img(name, alt):
        return f'<img src="{html.escape(figures[name])}" alt="{html.escape(alt)}">'

    grid_html = "".join(f'<h3>{html.escape(c)}</h3><img src="{html.escape(p)}" alt="top and bottom images for '
                        f'{html.escape(c)}">' for c, p in grids.items())
    parts = [
        f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>concept-attribution: {exp}</title>"
        f"<style>{CSS}</style></head><body>",
        f"<h1>concept-attribution report: {exp}</h1>",
        "<p class=\"note\">Which training images taught the network each concept, and does removing them and "
        "retraining move the concept or change its sparsity, and does it change what the probe reads as TRAK "
        "predicts? Each retrained member is the twin of a base member (same initialisation, order and "
        "augmentation, minus the removed images); intervals are t-intervals over the paired per-member "
        "differences; a change is called when the interval excludes zero (for the integer measures, sparsity and "
        "location, also an exact sign-flip test, since members tie), and every null states the smallest "
        "change the design could detect (80% power).</p>",
        f"<section id=\"answer\"><h2>Answer</h2>{answer_html(validations, figures['forest'])}</section>",
        f"<section id=\"verdicts\"><h2>Verdicts</h2>{verdicts}<p class=\"note\">Bold rows: the concept the "
        "condition targets. Red rows: the retrained ensemble failed the base task.</p></section>",
        "<section id=\"validation\"><h2>Validation of the attribution</h2><p class=\"note\">Base member m's probe "
        "held fixed and applied to its retrained twin: the actual change of its output and accuracy, TRAK's "
        "predicted change (minus the sum of the removed images' scores; its magnitude is uncalibrated and no "
        "verdict reads it), and the paired contrasts of the top-k with each control.</p>"
        f"{validation_html(validations)}</section>",
        (f"<section id=\"scorecard\"><h2>Estimators side by side</h2>{scorecard_html(cards)}</section>"
         if cards else ""),
        (f"<section id=\"lds\"><h2>Attribution quality (LDS)</h2>{lds_html(lds)}</section>" if lds else ""),
        f"<section id=\"curves\"><h2>Removal curves</h2>{img('curves', 'removal curves')}</section>",
        "<section id=\"training\"><h2>Base-task test accuracy of every ensemble</h2>"
        + _table(["condition", "images removed", "mean test acc", "per member", "check", "learned"], train_rows)
        + "</section>",
        f"<section id=\"accuracy\"><h2>Probe accuracy vs depth</h2>{img('accuracy', 'accuracy vs depth')}</section>",
        f"<section id=\"sparsity\"><h2>Probing sparsity vs depth</h2>{img('sparsity', 'sparsity vs depth')}</section>",
        f"<section id=\"scores\"><h2>Concept-score distributions (base ensemble)</h2>"
        f"{img('scores', 'score distributions')}</section>",
        f"<section id=\"enrichment\"><h2>Attribution enrichment</h2>{img('enrichment', 'enrichment bars')}"
        + (_table(["concept", "layer", "k", "top-k", "bottom-k", "random", "hardest (out-to-loss)"], enrich_rows)
           if enrich_rows else
           "<p>No ground truth for these concepts: enrichment is not defined.</p>") + "</section>",
        f"<section id=\"images\"><h2>Top and bottom attributed training images</h2>{grid_html}</section>",
        f"<section id=\"config\"><h2>Config used</h2><pre>{html.escape(yaml.safe_dump(config, sort_keys=False))}"
        "</pre></section>",
        "</body></html>",
    ]
    return "\n".join(parts)


def build(files: dict, out: dict, cfg: dict) -> str:
    """``files``: the report rule's named inputs (summaries by condition, scores by concept
    and layer, probe sets and grids by concept); ``out``: its named outputs ({"html",
    "accuracy", "sparsity", "scores", "enrichment", "grids": {concept: png}}, one folder).
    ``cfg``: {"concepts", "layers", "ablation", "config"}. Returns the page's path."""
    compare = artifacts.read_json(files["compare"])
    concepts, layers = list(cfg["concepts"]), list(cfg["layers"])
    summaries = {c: artifacts.summary(p) for c, p in files["summaries"].items()}
    enrichment = artifacts.read_json(files["enrichment"])
    locations = {c: summaries["base"][c]["location"] for c in concepts}
    scores = {c: artifacts.concept_scores(files["scores"][c][locations[c]]) for c in concepts}
    truths = {c: t for c in concepts if (t := artifacts.concept_truth(files["probe_sets"][c])) is not None}
    k = ablation_size(len(next(iter(scores.values()))), cfg["ablation"])
    validations = {c: artifacts.read_json(files["validate"][c]) for c in concepts}
    lds = {c: artifacts.read_json(p) for c, p in (files.get("lds") or {}).items()}
    costs = {e: artifacts.read_json(p) for e, p in (files.get("costs") or {}).items()}
    cards = {c: (locations[c], scorecard.rows(
        c, locations[c], {e: {layer: artifacts.read_json(p) for layer, p in by_c[c].items()}
                          for e, by_c in (files.get("estimators") or {}).items()},
        lds.get(c), validations[c], costs)) for c in concepts}
    artifacts.write_text(out["scorecard"], scorecard.format_text(cards) + "\n")
    curves_figure(validations, out["curves"])
    forest_figure(validations, out["forest"])
    depth_figure(compare, summaries, concepts, layers, "acc", out["accuracy"])
    depth_figure(compare, summaries, concepts, layers, "k", out["sparsity"])
    scores_figure(scores, truths, locations, k, out["scores"])
    enrichment_figure(enrichment, concepts, layers, out["enrichment"])
    for c in concepts:
        artifacts.copy(files["grids"][c], out["grids"][c])
    folder = Path(out["html"]).parent
    figures = {name: Path(out[name]).relative_to(folder).as_posix()
               for name in ("accuracy", "sparsity", "scores", "enrichment", "curves", "forest")}
    grids = {c: Path(out["grids"][c]).relative_to(folder).as_posix() for c in concepts}
    artifacts.write_text(out["html"], render_html(compare, cfg["config"], figures, enrichment, grids, validations, lds,
                                                       cards))
    return str(Path(out["html"]).resolve())


def report_stage(job) -> str:
    return f"report: {build(job.input, job.output, job.params)}"

"""Summary: probe accuracy vs depth per concept, with ensemble spread, and the location.

The concept's location is the layer with the highest ensemble-mean held-out accuracy;
``location_index`` is the one definition every later stage uses.
"""
from __future__ import annotations

import numpy as np

from .. import artifacts, stats


def location_index(acc) -> int:
    """Index of the layer with the highest ensemble-mean accuracy (``acc``: members x layers)."""
    return int(np.argmax(np.asarray(acc, float).mean(0)))


def location(probes_path) -> str:
    """The concept's location layer from its probes file."""
    t = artifacts.probes_table(probes_path)
    return t["layers"][location_index(t["heldout_bal_acc"])]


def summarise(probe_paths: dict) -> dict:
    """{concept: {layers, mean, std, min, max, per_member, location, sparsity...}}."""
    out = {}
    for concept, path in sorted(probe_paths.items()):
        s = artifacts.probes_table(path)
        acc, k = s["heldout_bal_acc"], s["sparsity_k"]
        mean = acc.mean(0)
        loc = location_index(acc)
        out[concept] = {
            "layers": s["layers"], "members": s["members"],
            "acc_mean": mean.tolist(), "acc_std": acc.std(0).tolist(),
            "acc_min": acc.min(0).tolist(), "acc_max": acc.max(0).tolist(),
            "acc_per_member": acc.tolist(),
            "sparsity_k_mean": k.mean(0).tolist(), "sparsity_k_per_member": k.tolist(),
            "location": s["layers"][loc],
            "location_acc": float(mean[loc]),
            "acc_step": stats.balanced_accuracy_step(s["heldout_counts"]),   # the accuracy's resolution
        }
    return out


def format_table(summary: dict) -> str:
    lines = []
    for concept, s in summary.items():
        lines.append(f"concept {concept}: location {s['location']} (ensemble-mean balanced acc "
                     f"{s['location_acc']:.3f}, n={len(s['members'])} models)")
        lines.append(f"  {'layer':<8} {'acc mean':>8} {'+-std':>6} {'[min, max]':>15} {'sparsity k':>10}")
        for j, layer in enumerate(s["layers"]):
            mark = "  <- location" if layer == s["location"] else ""
            lines.append(f"  {layer:<8} {s['acc_mean'][j]:8.3f} {s['acc_std'][j]:6.3f} "
                         f"[{s['acc_min'][j]:.3f}, {s['acc_max'][j]:.3f}] {s['sparsity_k_mean'][j]:10.1f}{mark}")
    return "\n".join(lines)


def plot(summary: dict, path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for concept, s in summary.items():
        x = np.arange(len(s["layers"]))
        acc = np.array(s["acc_per_member"])
        line, = axes[0].plot(x, s["acc_mean"], marker="o", label=f"{concept} (loc. {s['location']})")
        axes[0].fill_between(x, s["acc_min"], s["acc_max"], color=line.get_color(), alpha=0.2)
        for row in acc:
            axes[0].plot(x, row, color=line.get_color(), alpha=0.3, lw=0.8)
        axes[1].plot(x, s["sparsity_k_mean"], marker="o", color=line.get_color(), label=concept)
    for ax, title, ylabel in ((axes[0], "probe accuracy vs depth", "held-out balanced accuracy"),
                              (axes[1], "probing sparsity vs depth", "channels k (smaller = sparser)")):
        ax.set_xticks(np.arange(len(s["layers"])), s["layers"])
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].axhline(0.5, color="grey", ls="--", lw=0.8)
    fig.tight_layout()
    artifacts.save_figure(fig, path)
    plt.close(fig)


def summary_stage(job) -> str:
    """``input["probes"]``: {concept: probes file}; writes the JSON, the figure and the table."""
    summary = summarise(job.input["probes"])
    table = format_table(summary)
    plot(summary, job.output["png"])
    artifacts.write_text(job.output["txt"], table + "\n")
    artifacts.write_summary(job.output["json"], summary)
    return table

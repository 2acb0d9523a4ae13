"""Summary: probe accuracy vs depth per concept, with ensemble spread, and the location."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import probes


def summarise(probe_paths: dict) -> dict:
    """{concept: {layers, mean, std, min, max, per_member, location, sparsity...}}."""
    out = {}
    for concept, path in sorted(probe_paths.items()):
        s = probes.load_summary(path)
        acc, k = s["heldout_bal_acc"], s["sparsity_k"]
        mean = acc.mean(0)
        out[concept] = {
            "layers": s["layers"], "members": s["members"],
            "acc_mean": mean.tolist(), "acc_std": acc.std(0).tolist(),
            "acc_min": acc.min(0).tolist(), "acc_max": acc.max(0).tolist(),
            "acc_per_member": acc.tolist(),
            "sparsity_k_mean": k.mean(0).tolist(), "sparsity_k_per_member": k.tolist(),
            "location": s["layers"][int(np.argmax(mean))],
            "location_acc": float(mean.max()),
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
    import matplotlib

    matplotlib.use("Agg")
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
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(probe_paths: dict, json_path, png_path, txt_path) -> str:
    summary = summarise(probe_paths)
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(json_path).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    plot(summary, png_path)
    table = format_table(summary)
    Path(txt_path).write_text(table + "\n")
    tmp.replace(json_path)
    return table

"""What a researcher looks at first: the top-16 and bottom-16 attributed training images
per concept at the concept's location, and the enrichment table over layers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import h5io
from .ablation import concept_scores


def grid_png(images, labels, class_names, scores, path, title: str, n: int = 16) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(-scores, kind="stable")
    rows = [("top", order[:n]), ("bottom", order[::-1][:n])]
    fig, axes = plt.subplots(4, n // 2, figsize=(n // 2 * 1.3, 4 * 1.55))
    for r, (name, idx) in enumerate(rows):
        for j, i in enumerate(idx):
            ax = axes[2 * r + j // (n // 2), j % (n // 2)]
            ax.imshow(images[i], interpolation="nearest")
            ax.set_title(f"#{i} {class_names[labels[i]][:8]}\n{scores[i]:+.2e}", fontsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor("tab:green" if name == "top" else "tab:red")
                spine.set_linewidth(2)
    fig.suptitle(f"{title}\ntop {n} (green) and bottom {n} (red) training images by concept score", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(summary_json, base_path, score_files: dict, enrichment_files: dict, out_json, grid_paths: dict) -> str:
    """``score_files``/``enrichment_files``: {(concept, layer): path}; ``grid_paths``: {concept: png}."""
    summary = json.loads(Path(summary_json).read_text())
    with h5io.read(base_path) as f:
        images, labels = f["train/images"][()], f["train/labels"][()]
        class_names = json.loads(f.attrs["class_names"])
    table, lines = {}, []
    for (concept, layer), p in enrichment_files.items():
        table.setdefault(concept, {})[layer] = json.loads(Path(p).read_text())
    for concept, png in grid_paths.items():
        loc = summary[concept]["location"]
        scores = concept_scores(score_files[(concept, loc)])
        grid_png(images, labels, class_names, scores, png, f"concept {concept} at its location {loc}")
        lines.append(f"concept {concept} (location {loc}): enrichment of ground-truth images in the top-k")
        for layer, e in table[concept].items():
            if "enrichment" in e:
                mark = "  <- location" if layer == loc else ""
                lines.append(f"  {layer:<8} top-{e['k']}: {e['enrichment']:5.2f}x  (bottom {e['bottom_enrichment']:.2f}x,"
                             f" random {e['random_enrichment']:.2f}x, base rate {e['base_rate']:.3f}){mark}")
        table[concept]["location"] = loc
    Path(out_json).write_text(json.dumps(table, indent=2))
    return "\n".join(lines)

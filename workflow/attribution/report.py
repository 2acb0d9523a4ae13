"""What a researcher looks at first: the top-16 and bottom-16 attributed training images
per concept at the concept's location, and the enrichment table over layers."""
from __future__ import annotations

import numpy as np

from .. import artifacts


def top_bottom(scores: np.ndarray, n: int = 16):
    """(indices of the n highest, of the n lowest) scores, ties by lower index."""
    order = np.argsort(-scores, kind="stable")
    return order[:n], order[::-1][:n]


def grid_png(data_path, class_names, scores, path, title: str, n: int = 16, truth=None) -> None:
    """Read only the 2n images shown (not the training set) and draw them with their scores.
    A training set smaller than n shows every image in both halves. ``truth`` (bool per
    training image, where known): images that carry the concept get a yellow dot."""
    import matplotlib.pyplot as plt

    n = min(n, len(scores))
    top, bottom = top_bottom(scores, n)
    images, labels = artifacts.base_split(data_path, "train", np.concatenate([top, bottom]))
    cols = max(1, (n + 1) // 2)
    fig, axes = plt.subplots(4, cols, figsize=(cols * 1.3, 4 * 1.55), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for r, (name, idx) in enumerate((("top", top), ("bottom", bottom))):
        for j, i in enumerate(idx):
            ax = axes[2 * r + j // cols, j % cols]
            ax.set_axis_on()
            ax.imshow(images[r * n + j], interpolation="nearest")
            ax.set_title(f"#{i} {class_names[labels[r * n + j]][:8]}\n{scores[i]:+.2e}", fontsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor("tab:green" if name == "top" else "tab:red")
                spine.set_linewidth(2)
            if truth is not None and truth[i]:
                ax.plot([0.12], [0.88], "o", transform=ax.transAxes, ms=6, mfc="gold", mec="black", mew=0.8)
    legend = "" if truth is None else "; yellow dot: carries the concept by ground truth"
    fig.suptitle(f"{title}\ntop {n} (green) and bottom {n} (red) training images by concept score{legend}",
                 fontsize=9)
    fig.tight_layout()
    artifacts.save_figure(fig, path, dpi=120)
    plt.close(fig)


def enrichment_lines(concept: str, location: str, table: dict) -> list:
    """The text table of one concept: a row per layer, with or without ground truth."""
    lines = [f"concept {concept} (location {location}): enrichment of ground-truth images in the top-k"]
    for layer, e in table.items():
        mark = "  <- location" if layer == location else ""
        if "enrichment" in e:
            lines.append(f"  {layer:<8} top-{e['k']}: {e['enrichment']:5.2f}x  (bottom {e['bottom_enrichment']:.2f}x;"
                         f" baselines: random {e['random_enrichment']:.2f}x, hardest images "
                         f"{e['hardest_enrichment']:.2f}x; base rate {e['base_rate']:.3f}){mark}")
        else:
            lines.append(f"  {layer:<8} no ground truth for the training images ({e['n_targets']} targets, "
                         f"{e['n_models']} models): enrichment undefined{mark}")
    return lines


def write(summary: dict, data_path, score_files: dict, enrichment_files: dict, out_json, out_txt,
          grid_paths: dict, probe_sets: dict | None = None) -> str:
    """``score_files``/``enrichment_files``: {concept: {layer: path}}; ``grid_paths``: {concept: png};
    ``probe_sets``: {concept: probe set} (their ground truth marks the grids)."""
    class_names = artifacts.base_info(data_path)["class_names"]
    table, lines = {}, []
    for concept, png in grid_paths.items():
        loc = summary[concept]["location"]
        table[concept] = {layer: artifacts.read_json(p) for layer, p in enrichment_files[concept].items()}
        scores = artifacts.concept_scores(score_files[concept][loc])
        truth = artifacts.concept_truth(probe_sets[concept]) if probe_sets else None
        grid_png(data_path, class_names, scores, png, f"concept {concept} at its location {loc}", truth=truth)
        lines += enrichment_lines(concept, loc, table[concept])
        table[concept]["location"] = loc
    text = "\n".join(lines)
    artifacts.write_text(out_txt, text + "\n")
    artifacts.write_json(out_json, table)
    return text


def trak_report_stage(job) -> str:
    i, o = job.input, job.output
    return write(artifacts.summary(i["summary"]), i["data"], i["scores"], i["enrichment"], o["table"], o["text"],
                 o["grids"], i.get("probe_sets"))

"""The per-head map of an IOI circuit search (layers x heads): the ABC patching effect, as in
the paper's and Wang et al.'s per-head effect maps, beside the scores that name the roles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

PANELS = (
    ("patch_all", "ABC patching, all positions\n(fraction of the full effect)", "RdBu", (-1, 1)),
    ("patch_end", "ABC patching at END", "RdBu", (-1, 1)),
    ("attn_end_io", "attention END -> IO", "Greens", (0, 1)),
    ("attn_end_s2", "attention END -> S2", "Greens", (0, 1)),
    ("duplicate", "duplicate-token score", "Purples", (0, 1)),
    ("induction", "induction score", "Purples", (0, 1)),
    ("previous", "previous-token score", "Purples", (0, 1)),
    ("copying", "copying score (top 5)", "Oranges", (0, 1)),
)


def head_grid(scores: dict[str, Any], key: str) -> np.ndarray:
    """``[layers, heads]`` of one score (NaN where it was not computed)."""
    heads = scores["heads"]
    layers = 1 + max(h.layer for h in heads)
    per_layer = 1 + max(h.head for h in heads)
    grid = np.full((layers, per_layer), np.nan)
    for head in heads:
        value = getattr(head, key)
        grid[head.layer, head.head] = np.nan if value is None else value
    return grid


def plot_heads(scores: dict[str, Any], path: Path, title: str = "") -> Path:
    from inversionview.figures import pyplot, save_figure

    plt = pyplot()
    figure, axes = plt.subplots(2, 4, figsize=(15, 6.5))
    for axis, (key, name, colours, (low, high)) in zip(axes.flat, PANELS):
        grid = head_grid(scores, key)
        image = axis.imshow(grid, cmap=colours, vmin=low, vmax=high, aspect="auto")
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("head")
        axis.set_ylabel("layer")
        axis.set_xticks(range(grid.shape[1]))
        axis.set_yticks(range(grid.shape[0]))
        for (layer, head), value in np.ndenumerate(grid):
            if not np.isnan(value):
                axis.text(head, layer, f"{value:.2f}", ha="center", va="center", fontsize=6)
        figure.colorbar(image, ax=axis, fraction=0.046)
    figure.suptitle(f"{title}: IOI heads on {scores['n']} prompts (LD "
                    f"{scores['clean_logit_difference']:.2f} -> ABC "
                    f"{scores['abc_logit_difference']:.2f})")
    return save_figure(figure, path)

"""Heads that move a subject's attributes, found by attribution (issue 16, item 3).

The paper chose its GPT-2 XL heads by how much each one writes at the last token: for every
factual prompt, the norm of each component's output at END (every head and MLP of the upper
half of the layers) as a share of the sum of those norms. A head is *active* on a prompt when
its share reaches ``threshold``; the heads active on the most prompts are kept.

    table = attribution_heads(model, prompts, threshold=0.05, keep=25)
    table["kept"]            # ["a3.1", "a2.7", ...], most often active first
    table["heads"]           # per head: mean share, active rate, by relation

Measured, not assumed: a constructed model where one head writes and the others do not finds
that head (tests/factual/test_heads.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch

from inversionview.factual.knowledge import FactPrompt
from inversionview.probed.subject import Subject
from inversionview.probed.sites import Site
from inversionview.tasks.base import TaskInputError


@dataclass
class HeadShare:
    name: str
    layer: int
    head: int
    mean_share: float  # over prompts, of the head's norm in the upper layers' summed norms
    active_rate: float  # share of prompts on which mean share >= threshold
    by_relation: dict[str, float]  # active rate per relation

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def upper_layers(n_layers: int) -> list[int]:
    """The upper half of the layers (the middle one too when the count is odd)."""
    return list(range(n_layers // 2, n_layers))


@torch.no_grad()
def attribution_heads(model: Subject, prompts: Sequence[FactPrompt], threshold: float = 0.05,
                      keep: int = 25, layers: Sequence[int] | None = None, batch: int = 64,
                      ) -> dict[str, Any]:
    """Each upper-layer head's norm share at END over ``prompts``, its active rate (share >=
    ``threshold``) overall and per relation, and the ``keep`` heads most often active."""
    if not prompts:
        raise TaskInputError("no prompts to attribute over")
    if not 0 < threshold <= 1:
        raise TaskInputError(f"the threshold is a share of the update, in (0, 1], not {threshold}")
    layers = upper_layers(model.n_layers) if layers is None else list(layers)
    heads = [Site(layer, "head", head) for layer in layers for head in range(model.n_heads)]
    mlps = [Site(layer, "mlp_out") for layer in layers]
    shares = []
    for start in range(0, len(prompts), batch):
        texts = [p.text for p in prompts[start:start + batch]]
        tokens = model.tokens(texts)
        ends = model.task.lengths(tokens.cpu()) - 1
        rows = torch.arange(len(texts))
        values = model.run_sites(tokens, heads + mlps)
        norms = torch.stack([values[site][rows, ends.to(values[site].device)].float().norm(dim=-1).cpu()
                             for site in heads + mlps], dim=1)  # [b, heads + mlps]
        shares.append(norms[:, :len(heads)] / norms.sum(dim=1, keepdim=True).clamp_min(1e-12))
    share = torch.cat(shares)  # [n, heads]
    active = share >= threshold
    relations = [p.relation for p in prompts]
    table = []
    for index, site in enumerate(heads):
        by_relation = {}
        for relation in sorted(set(relations)):
            mask = torch.tensor([r == relation for r in relations])
            by_relation[relation] = float(active[mask, index].float().mean())
        table.append(HeadShare(site.short, site.layer, site.head, float(share[:, index].mean()),
                               float(active[:, index].float().mean()), by_relation))
    ranked = sorted(table, key=lambda h: (-h.active_rate, -h.mean_share, h.layer, h.head))
    kept = [h.name for h in ranked[:keep] if h.active_rate > 0]
    return {"threshold": threshold, "layers": layers, "prompts": len(prompts),
            "heads": [h.to_dict() for h in ranked], "kept": kept}





def plot_attribution(table: dict[str, Any], path, title: str = ""):
    """Two maps over the upper layers x heads: the mean norm share and the active rate."""
    import numpy as np

    from inversionview.figures import pyplot, save_figure

    heads = table["heads"]
    layers = table["layers"]
    per_layer = 1 + max(h["head"] for h in heads)
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(max(8, per_layer * 0.9), 1.5 + 0.6 * len(layers)))
    for axis, key, name in zip(axes, ("mean_share", "active_rate"),
                               ("mean share of the update at END",
                                f"active rate (share >= {table['threshold']:g})")):
        grid = np.zeros((len(layers), per_layer))
        for head in heads:
            grid[layers.index(head["layer"]), head["head"]] = head[key]
        image = axis.imshow(grid, cmap="Oranges", vmin=0, vmax=max(float(grid.max()), 1e-9),
                            aspect="auto")
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("head")
        axis.set_ylabel("layer")
        axis.set_xticks(range(per_layer))
        axis.set_yticks(range(len(layers)), [str(layer) for layer in layers])
        for (row, head), value in np.ndenumerate(grid):
            axis.text(head, row, f"{value:.2f}", ha="center", va="center", fontsize=6)
        figure.colorbar(image, ax=axis, fraction=0.046)
    figure.suptitle(f"{title}: attribution over {table['prompts']} prompts; kept "
                    f"{', '.join(table['kept'][:8])}{' ...' if len(table['kept']) > 8 else ''}",
                    fontsize=9)
    return save_figure(figure, path)

__all__ = ["HeadShare", "attribution_heads", "plot_attribution", "upper_layers"]

"""The PNG of a decoder run's curves: in-ε rate per site and mean, and held-out loss, against
training minutes (written next to metrics.jsonl after every evaluation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inversionview.files import atomic_path


LABELLED_SITES = 24


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    minutes = [entry["seconds"] / 60 for entry in history]
    figure, (rates, losses) = plt.subplots(1, 2, figsize=(11, 4.2))
    sites = list(history[-1]["in_epsilon"])
    labelled = len(sites) <= LABELLED_SITES  # a language model's hundreds of sites: no legend
    for site in sites:
        rates.plot(minutes, [entry["in_epsilon"][site] for entry in history],
                   lw=1 if labelled else 0.5, alpha=1 if labelled else 0.35,
                   label=site if labelled else None)
    rates.plot(minutes, [entry["in_epsilon_mean"] for entry in history], "k", lw=2.5,
               label="mean" if labelled else f"mean of {len(sites)} sites")
    rates.set(xlabel="minutes", ylabel="in-ε rate (T=1, ε=0.1)", ylim=(0, 1),
              title="held-out queries")
    rates.legend(fontsize=7, ncol=2)
    losses.plot(minutes, [entry["loss"] for entry in history], "k")
    losses.set(xlabel="minutes", ylabel="teacher-forced loss (nats/token)", title="held-out loss")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=90, format="png")
    plt.close(figure)

"""Cumulative patching as in the paper's Fig. 4a / Fig. 16: per order, bars of each added
component's increment of the effect (left axis) and lines of LD_patched and LD_orig (right)."""

from __future__ import annotations

from pathlib import Path

from inversionview.verify.patching import PatchingReport, PatchingStep


def plot_patching(report: PatchingReport, path: Path, title: str = "") -> Path:
    from inversionview.figures import pyplot, save_figure

    plt = pyplot()
    orders = [("left to right", report.steps)]
    if report.steps_right_to_left is not None:
        orders.append(("right to left", report.steps_right_to_left))
    figure, axes = plt.subplots(len(orders), 1, figsize=(7, 3.2 * len(orders)), squeeze=False)
    for axis, (name, steps) in zip(axes[:, 0], orders):
        _panel(axis, report, steps, name, reverse=name == "right to left")
    figure.suptitle(title or f"activation patching, contrast {report.contrast}, target "
                    f"{report.target}, n = {report.n}")
    return save_figure(figure, path)


def _panel(axis, report: PatchingReport, steps: list[PatchingStep], name: str, reverse: bool) -> None:
    cumulative = report.steps_right_to_left is not None
    labels = ["none"] + [step.components[-1] if cumulative else "+".join(step.components) for step in steps]
    effects = [0.0] + [step.effect for step in steps]
    increments = [b - a for a, b in zip(effects, effects[1:])] if cumulative else effects[1:]
    patched = [report.original_ld] + [step.patched_ld for step in steps]
    x = list(range(len(labels)))
    if reverse:  # "none" on the right, as in the paper
        x = x[::-1]
    axis.bar(x[1:], increments, color="#57a", label="effect of the added component")
    axis.axhline(0, color="#444", linewidth=0.8)
    axis.set_ylabel("increment of LD_pch - LD_orig")
    axis.set_xticks(x, labels, rotation=20)
    axis.set_title(name, fontsize=10)
    twin = axis.twinx()
    twin.plot(x, patched, color="#888", marker="o", label="LD_pch")
    twin.axhline(report.original_ld, color="#888", linestyle="--", linewidth=0.8, label="LD_orig")
    twin.set_ylabel("LD", color="#666")
    axis.legend(loc="lower left", fontsize=8)
    twin.legend(loc="lower right", fontsize=8)

"""Writing matplotlib figures to PNG files, the same way everywhere (headless backend)."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: Path, dpi: int = 120) -> Path:
    """Lay out ``figure``, write it to ``path`` (creating its folder) and close it."""
    path = Path(path)
    try:
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=dpi)
    finally:
        pyplot().close(figure)
    return path

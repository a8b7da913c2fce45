"""Plots of a run's per-round records as PNG, and any figure as inline SVG (matplotlib, no
display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from fedrec.server.runs import LOSS_PLOT, QUALITY_PLOT, write_figure

__all__ = [
    "plot_rounds",
    "svg_of",
]


def svg_of(figure: Any) -> str:
    """``figure`` as an ``<svg>`` element to inline in HTML (the figure is closed)."""
    import io

    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def plot_rounds(records: list[dict[str, Any]], out: Path) -> list[Path]:
    """Write the quality plot (HR@10/NDCG@10 sampled and full) and the loss plot; return
    their paths."""
    out = Path(out)
    written = []
    evaluated = [r for r in records if "eval" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style in (
        ("hr@10", "-o"),
        ("ndcg@10", "-s"),
        ("full_hr@10", "--o"),
        ("full_ndcg@10", "--s"),
    ):
        xs = [r["round"] for r in evaluated if key in r["eval"]]
        ys = [r["eval"][key] for r in evaluated if key in r["eval"]]
        if xs:
            ax.plot(xs, ys, style, label=key, markersize=3)
    ax.set_xlabel("round")
    ax.set_ylabel("test metric")
    ax.set_title("federated evaluation (test item, on-device)")
    ax.grid(alpha=0.3)
    if evaluated:
        ax.legend()
    fig.tight_layout()
    written.append(write_figure(out / QUALITY_PLOT, fig))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [r["round"] for r in records if r.get("train_loss") is not None]
    ax.plot(xs, [r["train_loss"] for r in records if r.get("train_loss") is not None], "-")
    ax.set_xlabel("round")
    ax.set_ylabel("mean local BCE loss")
    ax.set_title("training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    written.append(write_figure(out / LOSS_PLOT, fig))
    plt.close(fig)
    return written

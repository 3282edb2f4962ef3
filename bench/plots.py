"""PNG plots for ``accel bench`` (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["line_plot", "heatmap", "histogram"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def line_plot(path, x, series: dict, *, xlabel: str, ylabel: str, title: str, logx=True, logy=False) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, ys in series.items():
        ax.plot(x, ys, marker="o", label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def heatmap(path, grid, *, xlabels, ylabels, xlabel: str, ylabel: str, title: str, vmin=0.0, vmax=1.0,
            cmap="RdYlGn") -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(xlabels), 1.0 + 0.5 * len(ylabels)), dpi=120)
    im = ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(xlabels)), labels=xlabels)
    ax.set_yticks(range(len(ylabels)), labels=ylabels)
    for i in range(len(ylabels)):
        for j in range(len(xlabels)):
            ax.text(j, i, f"{grid[i][j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def histogram(path, values, *, bins, xlabel: str, title: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.hist(values, bins=bins, rwidth=0.85)
    ax.set(xlabel=xlabel, ylabel="count", title=title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path

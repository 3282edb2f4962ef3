"""Heat-maps of a search result: pattern per (layer, head), its recall, and its density.

matplotlib with the Agg backend (no display needed); imported only when `--plot` is given.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["plot_patterns"]

# one colour per registered pattern, in registry order (more patterns than colours: cycle)
_PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#8c8c8c", "#c44e52", "#8172b3")


def plot_patterns(result, path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from ..kernels import PATTERNS

    names = list(PATTERNS)
    labels = [kind.label for kind in PATTERNS.values()]
    colors = [_PALETTE[i % len(_PALETTE)] for i in range(len(names))]
    L, H = len(result.layers), len(result.layers[0])
    kind = np.array([[names.index(p.name) for p in layer] for layer in result.layers]).T   # (H, L)
    rec = np.array([[p.score for p in layer] for layer in result.layers]).T
    den = np.array(result.density).T
    w = max(8.0, 0.28 * L + 3)
    fig, axes = plt.subplots(3, 1, figsize=(w, 3 * max(2.2, 0.3 * H + 1)), sharex=True, constrained_layout=True)
    axes[0].imshow(kind, aspect="auto", cmap=ListedColormap(colors), vmin=-0.5, vmax=len(names) - 0.5, interpolation="nearest")
    axes[0].set_title("pattern per head")
    axes[0].legend(handles=[Patch(color=c, label=l) for c, l in zip(colors, labels)],
                   loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    im = axes[1].imshow(rec, aspect="auto", cmap="viridis", vmin=min(0.5, float(rec.min())), vmax=1.0,
                        interpolation="nearest")
    axes[1].set_title("attention-mass recall of the chosen pattern")
    fig.colorbar(im, ax=axes[1])
    im = axes[2].imshow(den, aspect="auto", cmap="magma", vmin=0.0, vmax=max(0.2, float(den.max())),
                        interpolation="nearest")
    axes[2].set_title("density (kernel cost / dense)")
    fig.colorbar(im, ax=axes[2])
    for ax in axes:
        ax.set_ylabel("head")
    axes[2].set_xlabel("layer")
    s = result.summary()
    fig.suptitle(f"{title}  —  mean recall {s['mean_recall']:.3f}, mean density {s['mean_density']:.3f}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

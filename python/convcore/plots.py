"""PNG pictures of a training run (needs matplotlib: ``pip install convcore[plots]``).

Written by :func:`save_all` into the run's folder:

- ``curves.png``: train and test loss and accuracy per epoch;
- ``confusion_matrix.png``: test-set counts, true class by predicted class;
- ``filters.png``: the first convolution's learned kernels;
- ``feature_maps.png``: one test image and what each convolution (with its
  ReLU) makes of it, layer by layer: edges first, then more abstract parts;
- ``predictions.png``: the first test images with predicted and true class.

Each file is written atomically (a temporary file, then a rename).  Only
matplotlib's object-oriented API with the Agg canvas is used, so the
caller's pyplot backend is left alone and no display is needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import nn
from .data import CLASS_NAMES, to_float

__all__ = [
    "plot_confusion",
    "plot_curves",
    "plot_feature_maps",
    "plot_filters",
    "plot_predictions",
    "save_all",
]


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    try:
        fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    except TypeError:  # matplotlib < 3.6
        fig = Figure(figsize=(w, h), dpi=100, constrained_layout=True)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    """Write the PNG atomically (temporary file, rename, folder fsync), as
    checkpoints and metrics are: an interrupted run never leaves half a
    picture under the real name."""
    from ._files import write_atomic

    path = Path(path)
    write_atomic(path, lambda f: fig.savefig(f, format="png", bbox_inches="tight"))
    return path


def plot_curves(history: list[dict], path: Path, label_smoothing: float = 0.0) -> Path:
    """Loss and accuracy per epoch (validation too when the run held some
    images out) and, when the records carry ``wall_seconds``, the test
    accuracy against the wall clock of the run.  With ``label_smoothing``
    the training loss is against the smoothed targets (the legend says so),
    the others against the true labels."""
    timed = all("wall_seconds" in r for r in history)
    fig = _figure(15 if timed else 10, 4)
    axes = fig.subplots(1, 3 if timed else 2)
    ax1, ax2 = axes[:2]
    ep = [r["epoch"] for r in history]
    val = all("val_accuracy" in r for r in history)
    smoothed = f" (smoothed targets, {label_smoothing:g})" if label_smoothing else ""
    ax1.plot(ep, [r["train_loss"] for r in history], "o-", label="train" + smoothed)
    if val:
        ax1.plot(ep, [r["val_loss"] for r in history], "^-", label="validation")
    ax1.plot(ep, [r["test_loss"] for r in history], "s-", label="test")
    ax1.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    ax2.plot(ep, [100 * r["train_accuracy"] for r in history], "o-", label="train")
    if val:
        ax2.plot(ep, [100 * r["val_accuracy"] for r in history], "^-", label="validation")
    ax2.plot(ep, [100 * r["test_accuracy"] for r in history], "s-", label="test")
    ax2.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    if timed:
        ax3 = axes[2]
        ax3.plot(
            [r["wall_seconds"] for r in history],
            [100 * r["test_accuracy"] for r in history],
            "s-",
            color="C2",
            label="test",
        )
        ax3.axhline(93.0, color="grey", linestyle="--", linewidth=1, label="93 %")
        ax3.set(
            xlabel="wall-clock seconds since start", ylabel="accuracy (%)", title="Against time"
        )
        ax3.set_xlim(left=0)
        ax3.grid(alpha=0.3)
        ax3.legend()
    return _save(fig, path)


def plot_confusion(cm: np.ndarray, path: Path) -> Path:
    fig = _figure(8, 7)
    ax = fig.subplots()
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    n = len(CLASS_NAMES)
    ax.set_xticks(range(n), CLASS_NAMES, rotation=45, ha="right")
    ax.set_yticks(range(n), CLASS_NAMES)
    ax.set(
        xlabel="predicted",
        ylabel="true",
        title=f"Test confusion matrix (accuracy {100 * np.trace(cm) / max(cm.sum(), 1):.2f}%)",
    )
    top = cm.max() if cm.size else 0
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if cm[i, j] > top / 2 else "black",
                )
    return _save(fig, path)


def _convs(model) -> list[tuple[str, nn.Conv2d]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def plot_filters(model, path: Path) -> Path:
    name, conv = _convs(model)[0]
    w = conv.weight.data  # (K, C, kh, kw); show input channel 0
    k = w.shape[0]
    cols = min(k, 8)
    rows = -(-k // cols)
    fig = _figure(1.3 * cols, 1.3 * rows + 0.6)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    lim = float(np.abs(w[:, 0]).max()) or 1.0
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i < k:
            ax.imshow(w[i, 0], cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_title(str(i), fontsize=8)
    fig.suptitle(
        f"First-layer filters (layer {name}: {k} kernels of "
        f"{w.shape[2]}x{w.shape[3]}; red positive, blue negative)"
    )
    return _save(fig, path)


def _mosaic(maps: np.ndarray, cols: int) -> np.ndarray:
    """(K, h, w) -> one image, each map scaled to [0, 1], 1-pixel gaps."""
    k, h, w = maps.shape
    rows = -(-k // cols)
    out = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan, dtype=np.float32)
    for i in range(k):
        m = maps[i]
        lo, hi = float(m.min()), float(m.max())
        r, c = divmod(i, cols)
        out[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = (
            (m - lo) / (hi - lo) if hi > lo else 0.0
        )
    return out


def plot_feature_maps(
    model, image: np.ndarray, label: int, path: Path, normalize: bool = False
) -> Path:
    """Run one image through the network and draw the activation after each
    convolution (after its ReLU when one follows)."""
    model.eval()
    x = to_float(image[None], normalize)
    stages = []
    layers = list(model)
    for i, layer in enumerate(layers):
        x = layer(x)
        if isinstance(layer, nn.Conv2d):
            after = layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(after, (nn.ReLU, nn.BatchNorm2d)):
                continue
            stages.append(
                (f"layer {i}: conv {layer.in_channels}->{layer.out_channels}", x[0].copy())
            )
        elif isinstance(layer, (nn.ReLU, nn.BatchNorm2d)) and i > 0:
            conv = layers[i - 1]
            if not isinstance(conv, nn.Conv2d):
                continue
            what = "ReLU" if isinstance(layer, nn.ReLU) else "batch norm"
            if isinstance(layer, nn.BatchNorm2d) and layer.relu:
                what += " + ReLU"
            stages.append(
                (
                    f"layers {i - 1}-{i}: conv {conv.in_channels}->{conv.out_channels} + {what}",
                    x[0].copy(),
                )
            )
    pred = int(x[0].argmax())
    cols = 16
    # Inches: 12 / 16 = 0.75 per map row (maps are square), plus the titles.
    heights = [1.8] + [0.75 * -(-s[1].shape[0] // cols) + 0.35 for s in stages]
    fig = _figure(12, sum(heights))
    axes = np.atleast_1d(fig.subplots(len(stages) + 1, 1, gridspec_kw={"height_ratios": heights}))
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title(f"input: {CLASS_NAMES[label]} (predicted {CLASS_NAMES[pred]})")
    axes[0].axis("off")
    for ax, (title, maps) in zip(axes[1:], stages):
        ax.imshow(_mosaic(maps, min(cols, maps.shape[0])), cmap="viridis", interpolation="nearest")
        ax.set_title(f"{title}: {maps.shape[0]} maps of {maps.shape[1]}x{maps.shape[2]}")
        ax.axis("off")
    fig.suptitle("What the network sees: feature maps of one test image")
    return _save(fig, path)


def plot_predictions(
    model,
    images: np.ndarray,
    labels: np.ndarray,
    path: Path,
    normalize: bool = False,
    count: int = 24,
) -> Path:
    model.eval()
    images, labels = images[:count], labels[:count]
    pred = model(to_float(images, normalize)).argmax(axis=1)
    cols = 8
    rows = -(-len(images) // cols)
    fig = _figure(1.6 * cols, 1.9 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i], cmap="gray")
            ok = pred[i] == labels[i]
            ax.set_title(
                f"{CLASS_NAMES[pred[i]]}" + ("" if ok else f"\n(is {CLASS_NAMES[labels[i]]})"),
                fontsize=8,
                color="green" if ok else "red",
            )
    fig.suptitle("Test images: predicted class (red: wrong, with the true class)")
    return _save(fig, path)


def save_all(
    out_dir,
    *,
    history,
    model,
    confusion,
    image,
    label,
    normalize=False,
    images=None,
    labels=None,
    label_smoothing=0.0,
) -> list[Path]:
    """Write every picture into ``out_dir``; returns their paths.

    Raises:
        ImportError: matplotlib is not installed.
    """
    import matplotlib  # noqa: F401  (fail early with ImportError)

    out = Path(out_dir)
    paths = [
        plot_curves(history, out / "curves.png", label_smoothing) if history else None,
        plot_confusion(confusion, out / "confusion_matrix.png"),
        plot_filters(model, out / "filters.png"),
        plot_feature_maps(model, image, label, out / "feature_maps.png", normalize),
    ]
    if images is not None and labels is not None:
        paths.append(plot_predictions(model, images, labels, out / "predictions.png", normalize))
    return [p for p in paths if p is not None]

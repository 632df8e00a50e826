"""Data augmentation for image batches, vectorised over the batch.

Both functions take a float32 batch (N, C, H, W) on the host and a numpy
``Generator``, draw all their random numbers in one call per batch (so a
generator state saved between batches fixes the rest of the run), and never
loop over the images in Python.

- :func:`random_flip` mirrors a random half of the images left to right.
- :func:`random_crop` pads the batch with :func:`convcore.pad` and cuts an
  H x W window at a random offset from each padded image (the classic
  "pad 2, crop 28" of small-image training).
"""

from __future__ import annotations

import numpy as np

from .functional import pad

__all__ = ["random_crop", "random_flip"]


def _batch(x, name: str = "x") -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4:
        raise TypeError(f"{name}: expected a float32 numpy array (N, C, H, W), got {_what(x)}")
    return x


def _what(x) -> str:
    if isinstance(x, np.ndarray):
        return f"{x.dtype} array of shape {x.shape}"
    return type(x).__name__


def random_flip(x: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """Mirror each image left to right with probability ``p``.

    Args:
        x: float32 (N, C, H, W); flipped in place.
        rng: draws N uniform numbers.
        p: probability of a flip, in [0, 1].

    Returns:
        ``x``.
    """
    x = _batch(x)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p: expected a probability in [0, 1], got {p}")
    flip = rng.random(x.shape[0]) < p
    x[flip] = x[flip][..., ::-1]
    return x


def random_crop(
    x: np.ndarray, padding: int, rng: np.random.Generator, *, mode: str = "constant", value=0.0
) -> np.ndarray:
    """Pad each image by ``padding`` on every side, then cut an H x W window
    at an offset drawn uniformly from the (2 padding + 1)^2 possible ones.

    Args:
        x: float32 (N, C, H, W).
        padding: pixels added on each side (0 returns ``x`` unchanged).
        rng: draws 2 N integers (row offsets, then column offsets).
        mode, value: as :func:`convcore.pad` (e.g. ``'reflect'``, or
            ``'constant'`` with the background value).

    Returns:
        A new float32 array (N, C, H, W) (``x`` itself when ``padding`` is 0).
    """
    x = _batch(x)
    padding = int(padding)
    if padding < 0:
        raise ValueError(f"padding: expected an integer >= 0, got {padding}")
    if padding == 0:
        return x
    n, _, h, w = x.shape
    padded = pad(x, (padding, padding, padding, padding), mode, value)
    offsets = rng.integers(0, 2 * padding + 1, size=(2, n))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(2, 3))
    # windows: (N, C, 2p+1, 2p+1, H, W); pick one window per image.
    return np.ascontiguousarray(windows[np.arange(n), :, offsets[0], offsets[1]])

"""convcore.augment: random flips and crops, against a per-image loop."""

from __future__ import annotations

import numpy as np
import pytest
from convcore import augment


def batch(n=9, c=2, h=6, w=7, seed=0):
    return np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(np.float32)


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_random_flip_mirrors_the_drawn_images(p):
    x = batch()
    y = augment.random_flip(x.copy(), np.random.default_rng(4), p)
    chosen = np.random.default_rng(4).random(len(x)) < p
    for i in range(len(x)):
        np.testing.assert_array_equal(y[i], x[i, :, :, ::-1] if chosen[i] else x[i])


@pytest.mark.parametrize("padding", [1, 2, 4])
@pytest.mark.parametrize("mode, value", [("constant", 0.0), ("constant", -0.81), ("reflect", 0.0)])
def test_random_crop_cuts_the_drawn_windows(padding, mode, value):
    x = batch(n=11, c=3, h=5, w=8)
    y = augment.random_crop(x, padding, np.random.default_rng(7), mode=mode, value=value)
    offsets = np.random.default_rng(7).integers(0, 2 * padding + 1, size=(2, len(x)))
    widths = ((0, 0), (padding, padding), (padding, padding))
    kw = {"constant_values": value} if mode == "constant" else {}
    np_mode = "constant" if mode == "constant" else "reflect"
    for i in range(len(x)):
        padded = np.pad(x[i], widths, mode=np_mode, **kw)
        r, c = offsets[:, i]
        np.testing.assert_array_equal(y[i], padded[:, r : r + 5, c : c + 8])
    assert y.shape == x.shape and y.dtype == np.float32 and y.flags.c_contiguous
    assert augment.random_crop(x, 0, np.random.default_rng(0)) is x


def test_every_offset_is_drawn():
    x = np.zeros((4000, 1, 3, 3), np.float32)
    x[:, :, 1, 1] = 1
    y = augment.random_crop(x, 1, np.random.default_rng(0))
    where = {tuple(np.argwhere(img[0] == 1)[0]) for img in y if img.any()}
    assert len(where) == 9  # the centre pixel lands everywhere in a 3x3 image


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda r: augment.random_flip(np.zeros((2, 3, 3), np.float32), r), "x: expected"),
        (lambda r: augment.random_flip(np.zeros((1, 1, 3, 3)), r), "float32"),
        (lambda r: augment.random_flip(np.zeros((1, 1, 3, 3), np.float32), r, 2.0), "p:"),
        (lambda r: augment.random_crop(np.zeros((1, 1, 3, 3), np.float32), -1, r), "padding"),
        (lambda r: augment.random_crop([[1.0]], 1, r), "x: expected"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call(np.random.default_rng(0))

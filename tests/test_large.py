"""Sizes beyond 32-bit indexing: a correct result or a clear error.

Index arithmetic in convcore is int64 throughout; these tests run arrays
with more than 2**31 elements through each op so a 32-bit product or offset
anywhere would show as a wrong value, a crash or a refusal.

Memory: an untouched ``numpy.zeros`` array costs address space but no RAM
(its pages are the kernel's shared zero page until written), so inputs of
8.6 GB that are only read need little memory.  Tests that *write* more than
2**31 elements need several GB of RAM; each says how much and runs only when
``MemAvailable`` has that much plus a margin (the skip gives the reason; in
CI too, where the machine decides).  ``CONVCORE_LARGE_TESTS=0`` skips them
all, ``=force`` runs them regardless.

Beyond these sizes: every size is checked in ``csrc/common/geometry.cpp``
against 2**56 elements (ValueError "size overflow"), and an output that does
not fit in memory is a MemoryError from the allocation.
"""

from __future__ import annotations

import os

import convcore
import numpy as np
import pytest

BIG = 46342  # BIG * BIG = 2,147,580,964 > 2**31 elements in one plane
assert BIG * BIG > 2**31
GB = 1 << 30


def _meminfo(key: str) -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def needs(written_gb: float, address_gb: float = 8.7):
    """Skip unless the machine can back ``written_gb`` of written pages (plus
    a 3 GB margin) and map ``address_gb`` of untouched zero pages."""
    mode = os.environ.get("CONVCORE_LARGE_TESTS", "auto")
    if mode == "0":
        return pytest.mark.skip(reason="CONVCORE_LARGE_TESTS=0")
    if mode == "force":
        return pytest.mark.large_memory
    avail, total = _meminfo("MemAvailable"), _meminfo("MemTotal")
    ok = avail >= (written_gb + 3) * GB and total >= (address_gb + 2) * GB
    return pytest.mark.skipif(
        not ok,
        reason=f"needs {written_gb:g} GB of free RAM (+3 GB margin) and {address_gb:g} GB of "
        f"address space; MemAvailable is {avail / GB:.1f} GB, MemTotal {total / GB:.1f} GB",
    )


@needs(0.1)
def test_max_pool_plane_above_2_31_elements():
    """One plane of 2**31 + 97,316 elements: flat indices above 2**31 are exact."""
    x = np.zeros((1, 1, BIG, BIG), np.float32)
    spots = {(BIG - 1, BIG - 1): 5.0, (0, 1): 3.0, (30000, 23171): 4.0, (46000, 2): -1.0}
    for (h, w), v in spots.items():
        x[0, 0, h, w] = v
    y, idx = convcore.max_pool2d(x, 2, stride=(2, 23170), return_indices=True)
    assert y.shape == (1, 1, BIG // 2, 3)
    cols = np.array([0, 1, 23170, 23171, 46340, 46341])
    windows = x[0, 0][:, cols].reshape(BIG // 2, 2, 3, 2).transpose(0, 2, 1, 3).reshape(-1, 3, 4)
    np.testing.assert_array_equal(y[0, 0], windows.max(axis=2))
    first = windows.argmax(axis=2)  # first maximum in scan order, as PyTorch
    rows = 2 * np.arange(BIG // 2)[:, None] + first // 2
    expect_idx = rows * BIG + cols.reshape(3, 2)[np.arange(3), :][None, :, 0] + first % 2
    np.testing.assert_array_equal(idx[0, 0], expect_idx)
    assert idx[0, 0, -1, -1] == (BIG - 1) * BIG + BIG - 1 > 2**31


@needs(0.1)
def test_pad_backward_of_a_padded_plane_above_2_31_elements():
    """The input sits at the far corner of a padded plane of more than 2**31
    elements: its gradient is read from offsets above 2**31."""
    g = np.zeros((1, 1, BIG, BIG), np.float32)
    g[0, 0, -3:, -3:] = np.arange(1, 10, dtype=np.float32).reshape(3, 3)
    g[0, 0, 5, 7] = 100.0  # in the padding: ignored by constant mode
    gx = convcore.pad_backward(g, (1, 1, 3, 3), (BIG - 3, 0, BIG - 3, 0))
    np.testing.assert_array_equal(gx[0, 0], np.arange(1, 10, dtype=np.float32).reshape(3, 3))


@needs(0.1)
@pytest.mark.parametrize("isa", ["scalar", "portable", "avx2", "avx512"])
def test_conv2d_reads_a_plane_above_2_31_elements(isa):
    """Windows at both ends of a plane of more than 2**31 elements.  The
    direct kernels copy the padded plane into a workspace first (8.6 GB and
    more here): where that cannot be allocated the call is a MemoryError,
    never a wrong result."""
    x = np.zeros((1, 1, BIG, BIG), np.float32)
    x[0, 0, 0, 0], x[0, 0, 1, 1], x[0, 0, -1, -1], x[0, 0, -2, -1] = 2, 3, 5, 7
    w = np.array([[[[1, 10], [100, 1000]]]], np.float32)
    convcore.set_max_isa(isa)
    try:
        y = convcore.conv2d(x, w, stride=BIG - 2)
    except MemoryError:
        assert isa != "scalar"  # the reference needs no workspace
        return
    np.testing.assert_array_equal(y[0, 0], [[2 + 3000, 0], [0, 7 * 10 + 5 * 1000]])


@needs(6.5)
def test_max_pool_2x2_over_more_than_2_31_elements():
    """The vectorised 2x2/2 kernel, planes of 2**29 elements, 2**31 + 2**29
    in all: plane offsets above 2**31 (writes 6.4 GB of output and indices)."""
    n, h, w = 5, 2, 1 << 28
    x = np.zeros((n, 1, h, w), np.float32)
    x[4, 0, 1, w - 1] = 9.0
    x[3, 0, 0, 6] = 2.0
    y, idx = convcore.max_pool2d(x, 2, return_indices=True)
    assert y.shape == (n, 1, 1, w // 2)
    assert np.count_nonzero(y) == 2 and y[4, 0, 0, -1] == 9.0 and y[3, 0, 0, 3] == 2.0
    assert idx[4, 0, 0, -1] == w + w - 1 and idx[3, 0, 0, 3] == 6
    np.testing.assert_array_equal(idx[4, 0, 0, :-1:4097], 2 * np.arange(0, w // 2 - 1, 4097))
    del x, y, idx


@needs(8.7)
def test_max_pool_backward_into_a_plane_above_2_31_elements():
    """Indices above 2**31 scatter into the right elements (writes 8.6 GB)."""
    top = (BIG - 1) * BIG + BIG - 1
    idx = np.array([[[[0, 2**31 + 5, top]]]], np.int64)
    g = np.array([[[[1.5, 2.5, 3.5]]]], np.float32)
    dx = convcore.max_pool2d_backward(g, idx, (1, 1, BIG, BIG))
    flat = dx.reshape(-1)
    assert flat[0] == 1.5 and flat[2**31 + 5] == 2.5 and flat[top] == 3.5
    assert flat[2**31 + 4] == 0 and flat[top - 1] == 0
    del dx, flat


@needs(8.7)
def test_pad_to_a_plane_above_2_31_elements():
    """Replicate-padding one row and column out to more than 2**31 elements
    (writes 8.6 GB)."""
    x = np.array([[[[1, 2], [3, 4]]]], np.float32)
    y = convcore.pad(x, (0, BIG - 2, 0, BIG - 2), mode="replicate")
    assert y.shape == (1, 1, BIG, BIG)
    p = y[0, 0]
    assert p[0, 0] == 1 and p[0, -1] == 2 and p[-1, 0] == 3 and p[-1, -1] == 4
    np.testing.assert_array_equal(p[-1, ::4099], np.where(np.arange(0, BIG, 4099) == 0, 3, 4))
    np.testing.assert_array_equal(p[::4099, -1], np.where(np.arange(0, BIG, 4099) == 0, 2, 4))
    del y, p


def test_beyond_the_limits_errors_are_clear():
    """Past 2**56 elements: a ValueError naming the size; past memory: MemoryError."""
    one = np.zeros((1, 1), np.float32)
    with pytest.raises(ValueError, match="output: size overflow .* 2\\^56"):
        convcore.pad(one, (0, 2**40, 0, 2**40), mode="replicate")
    with pytest.raises(MemoryError):
        convcore.pad(one, (0, 2**27, 0, 2**27), mode="replicate")  # 256 PiB
    with pytest.raises(ValueError, match="size overflow"):
        convcore.max_pool2d_backward(
            np.zeros((1, 1, 1, 1), np.float32),
            np.zeros((1, 1, 1, 1), np.int64),
            (1, 1, 2**40, 2**40),
        )
    with pytest.raises(ValueError, match="size overflow"):
        convcore.conv2d(
            np.zeros((0, 1, 2**29, 2**29), np.float32), np.zeros((1, 1, 1, 1), np.float32)
        )


@pytest.mark.parametrize("isa", ["scalar", "portable", "avx2", "avx512"])
@pytest.mark.parametrize("stride", [2**31, (2**60, 1), 2**62, (1, 2**40)])
def test_huge_strides_are_refused_not_overrun(isa, stride):
    """Found by tests/fuzz.py: a stride of 2**31 or more wrapped the direct
    kernels' workspace size (input padded to whole strides) to a few bytes,
    and the kernels wrote past it (a segfault).  Now a ValueError names the
    stride when that size passes 2**56 elements; below, the result is right
    or the workspace allocation fails with MemoryError."""
    x = np.ones((13, 1, 7, 6), np.float32)
    w = np.ones((2, 1, 3, 2), np.float32)
    g = np.ones((13, 2, 1, 1), np.float32)
    convcore.set_max_isa(isa)
    if stride != (1, 2**40):
        with pytest.raises(ValueError, match="stride.*size overflow"):
            convcore.conv2d(x, w, stride=stride, padding=1, dilation=2)
        with pytest.raises(ValueError, match="stride.*size overflow"):
            convcore.conv2d_backward(g, x, w, stride=stride, padding=1, dilation=2)
        return
    convcore.set_max_isa("scalar")
    expect = convcore.conv2d(x, w, stride=stride, padding=1, dilation=2)
    assert expect.shape == (13, 2, 5, 1)
    convcore.set_max_isa(isa)
    try:  # 10 x 2**40 floats of workspace: fits the size check, not the memory
        y = convcore.conv2d(x, w, stride=stride, padding=1, dilation=2)
    except MemoryError:
        assert isa != "scalar"
    else:
        np.testing.assert_array_equal(y, expect)
    y = convcore.conv2d(x, w, stride=1000, padding=1, dilation=2)
    np.testing.assert_array_equal(y, np.full((13, 2, 1, 1), 2, np.float32))


@pytest.mark.parametrize("isa", ["scalar", "avx2"])
def test_max_pool_window_far_larger_than_the_input(isa):
    """Found by tests/fuzz.py: kernel_size=2**40 with ceil_mode gives one
    window (valid, as in PyTorch), and the reference kernel visited all its
    2**80 taps: a hang.  It now visits only the taps inside the input."""
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 7)).astype(np.float32)
    convcore.set_max_isa(isa)
    y, idx = convcore.max_pool2d(x, 2**40, ceil_mode=True, return_indices=True)
    np.testing.assert_array_equal(y, x.max(axis=(2, 3), keepdims=True))
    np.testing.assert_array_equal(idx[..., 0, 0], x.reshape(2, 3, -1).argmax(axis=-1))
    y = convcore.max_pool2d(x, (2**40, 3), stride=(2**40, 2), padding=(0, 1), ceil_mode=True)
    assert y.shape == (2, 3, 1, 4)
    np.testing.assert_array_equal(y[..., 0, 1], x[..., 1:4].max(axis=(2, 3)))


def test_a_stride_far_beyond_the_input_is_fast():
    """Found by tests/fuzz.py: the direct kernels copied each image padded to
    whole strides, 4 GB per image for a stride of 32768 on 12x16, so a tiny
    convolution ran for minutes.  Such strides now go to the reference."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((17, 2, 12, 16)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    kw = dict(stride=32768, padding=(0, 1), dilation=3)
    y = convcore.conv2d(x, w, **kw)
    assert convcore.last_kernel("conv2d_fwd").endswith("__ref")
    g = rng.standard_normal(y.shape).astype(np.float32)
    got = convcore.conv2d_backward(g, x, w, **kw)
    convcore.set_max_isa("scalar")
    np.testing.assert_array_equal(y, convcore.conv2d(x, w, **kw))
    # The data gradient may run as GEMM + col2im: the same sums, another order.
    for a, b in zip(got, convcore.conv2d_backward(g, x, w, **kw)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

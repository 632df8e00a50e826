"""The runtime around the kernels: threads, ISA caps and kernel names,
bitwise determinism, the GIL, environment switches, import order with
PyTorch, build_info."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import convcore
import numpy as np
import pytest
from oracle import _ISA_SUFFIX, ISAS, conv_case, isa_cap, pool_case, rand

OPS = [
    "conv2d_fwd",
    "conv2d_bwd_data",
    "conv2d_bwd_weight",
    "conv2d_bwd_bias",
    "maxpool2d_fwd",
    "maxpool2d_bwd",
    "pad2d_fwd",
    "pad2d_bwd",
    "batchnorm2d_fwd",
    "batchnorm2d_bwd",
    "adam_step",
    "sgd_step",
]


def run_python(
    code: str, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter (the same venv); fail with its output."""
    full_env = dict(os.environ)
    for k in ("CONVCORE_VERBOSE", "CONVCORE_MAX_ISA"):
        full_env.pop(k, None)
    full_env.update(env or {})
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, f"subprocess failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r


# ---------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------


def test_set_get_num_threads():
    for n in (1, 2, 3, 1):
        convcore.set_num_threads(n)
        assert convcore.get_num_threads() == n
        assert convcore.build_info()["num_threads"] == n
    convcore.set_num_threads(np.int64(2))
    assert convcore.get_num_threads() == 2


@pytest.mark.parametrize(
    "n,exc",
    [
        (0, ValueError),
        (-1, ValueError),
        (1.5, TypeError),
        (True, TypeError),
        ("2", TypeError),
        (None, TypeError),
        (2**70, ValueError),
    ],
)
def test_set_num_threads_invalid(n, exc):
    before = convcore.get_num_threads()
    with pytest.raises(exc, match=r"\bn\b|set_num_threads|thread"):
        convcore.set_num_threads(n)
    assert convcore.get_num_threads() == before


def test_omp_num_threads_is_honoured():
    r = run_python(
        "import convcore; print(convcore.get_num_threads())", env={"OMP_NUM_THREADS": "1"}
    )
    assert r.stdout.strip() == "1"


# ---------------------------------------------------------------------------
# build_info, implementations, ISA cap, kernel names
# ---------------------------------------------------------------------------


def test_build_info():
    info = convcore.build_info()
    for key in (
        "version",
        "compiler",
        "isa_compiled",
        "isa_detected",
        "isa_active",
        "openmp",
        "num_threads",
        "cuda",
        "cuda_architectures",
        "cuda_version",
    ):
        assert key in info, key
    assert info["version"] == convcore.__version__
    assert info["isa_compiled"][:2] == ["scalar", "portable"]
    assert set(info["isa_compiled"]) <= set(ISAS)
    assert info["isa_detected"] in info["isa_compiled"]
    assert info["isa_active"] in ISAS
    assert int(info["openmp"]) >= 201307  # OpenMP 4.0 or later
    assert isinstance(info["cuda"], bool)
    assert info["num_threads"] >= 1


@pytest.mark.parametrize("op", OPS)
def test_implementations_end_with_reference(op):
    impls = convcore.implementations(op)
    assert impls and impls[-1].endswith("__ref"), impls
    assert all(i.endswith(("__ref", "__portable", "__avx2", "__avx512")) for i in impls), impls
    prefix = op.replace("pad2d", "pad2d").split("_")[0]
    assert all(i.startswith(prefix) for i in impls), impls
    assert sum(i.endswith("__ref") for i in impls) == 1
    if "avx2" not in convcore.build_info()["isa_compiled"]:
        assert not any(i.endswith("__avx2") for i in impls)


def test_implementations_unknown_op():
    with pytest.raises(ValueError, match="op"):
        convcore.implementations("conv3d_fwd")


@pytest.mark.parametrize(
    "name,exc",
    [
        ("sse2", ValueError),
        ("", ValueError),
        ("AVX2", ValueError),
        (2, TypeError),
        (None, TypeError),
    ],
)
def test_set_max_isa_invalid(name, exc):
    before = convcore.build_info()["isa_active"]
    with pytest.raises(exc, match="ISA|name"):
        convcore.set_max_isa(name)
    assert convcore.build_info()["isa_active"] == before


def test_isa_cap_never_exceeds_the_cpu():
    detected = convcore.build_info()["isa_detected"]
    for name in ISAS:
        with isa_cap(name):
            active = convcore.build_info()["isa_active"]
            assert ISAS.index(active) == min(ISAS.index(name), ISAS.index(detected))


def _run_every_op():
    x, w, b, kw = conv_case("n2_c6_h12_w12_k12_r5_s1_p0")
    y = convcore.conv2d(x, w, b, **kw)
    convcore.conv2d_backward(y, x, w, **kw)
    p, idx = convcore.max_pool2d(rand((2, 3, 8, 8)), 2, return_indices=True)
    convcore.max_pool2d_backward(p, idx, (2, 3, 8, 8))
    padded = convcore.pad(x, (1, 1, 1, 1), "reflect")
    convcore.pad_backward(padded, x.shape, (1, 1, 1, 1), "reflect")
    y, mean, invstd = convcore.batch_norm(x, None, None, training=True, return_stats=True)
    convcore.batch_norm_backward(y, x, None, mean, invstd)
    # The optimiser steps (adam_step, sgd_step): one of each on a small layer.
    layer = convcore.nn.Linear(4, 3)
    for opt in (convcore.optim.Adam(layer.parameters()), convcore.optim.SGD(layer.parameters())):
        layer.zero_grad()
        layer(rand((2, 4)))
        layer.backward(np.ones((2, 3), np.float32))
        opt.step()


def test_last_kernel_names_the_path(isa):
    suffix = _ISA_SUFFIX[isa]
    _run_every_op()
    for op in OPS:
        name = convcore.last_kernel(op)
        assert name in convcore.implementations(op), (op, name)
    for op in ("conv2d_fwd", "conv2d_bwd_data", "conv2d_bwd_weight"):
        assert convcore.last_kernel(op).endswith(suffix), (op, convcore.last_kernel(op))
    # 2x2/2 pooling has AVX-512 kernels (forward and backward) and an AVX2
    # forward; padding has row-wise portable kernels (used under 'avx2' too).
    fast = {"avx512": "__avx512", "avx2": "__avx2"}.get(isa, "__ref")
    assert convcore.last_kernel("maxpool2d_fwd").endswith(fast)
    assert convcore.last_kernel("maxpool2d_bwd").endswith(
        "__avx512" if isa == "avx512" else "__ref"
    )
    for op in ("pad2d_fwd", "pad2d_bwd"):
        assert convcore.last_kernel(op).endswith("__ref" if isa == "scalar" else "__portable")
    # batch norm: a kernel of every level
    for op in ("batchnorm2d_fwd", "batchnorm2d_bwd"):
        assert convcore.last_kernel(op).endswith(suffix), (op, convcore.last_kernel(op))


def test_bias_gradient_reference_under_scalar_cap():
    with isa_cap("scalar"):
        _run_every_op()
        assert convcore.last_kernel("conv2d_bwd_bias").endswith("__ref")


def test_last_kernel_unknown_or_unused_op():
    assert convcore.last_kernel("no_such_op") == ""


def test_env_max_isa_scalar_uses_the_reference():
    r = run_python(
        """
        import numpy as np, convcore
        x = np.ones((1, 2, 6, 6), np.float32); w = np.ones((3, 2, 3, 3), np.float32)
        y = convcore.conv2d(x, w)
        convcore.conv2d_backward(y, x, w)
        convcore.max_pool2d(x, 2)
        print(convcore.build_info()["isa_active"])
        for op in ("conv2d_fwd", "conv2d_bwd_data", "conv2d_bwd_weight", "maxpool2d_fwd"):
            print(convcore.last_kernel(op))
        """,
        env={"CONVCORE_MAX_ISA": "scalar"},
    )
    lines = r.stdout.split()
    assert lines[0] == "scalar"
    assert all(name.endswith("__ref") for name in lines[1:]), lines


def test_env_max_isa_portable():
    r = run_python(
        """
        import numpy as np, convcore
        convcore.conv2d(np.ones((1, 2, 6, 6), np.float32), np.ones((3, 2, 3, 3), np.float32))
        print(convcore.build_info()["isa_active"], convcore.last_kernel("conv2d_fwd"))
        """,
        env={"CONVCORE_MAX_ISA": "portable"},
    )
    active, kernel = r.stdout.split()
    assert active == "portable" and kernel.endswith("__portable")


def test_verbose_prints_the_kernel():
    r = run_python(
        """
        import numpy as np, convcore
        x = np.ones((2, 3, 8, 8), np.float32); w = np.ones((4, 3, 3, 3), np.float32)
        y = convcore.conv2d(x, w, padding=1)
        convcore.conv2d_backward(y, x, w, padding=1)
        convcore.max_pool2d(x, 2)
        convcore.pad(x, (1, 1))
        for op in ("conv2d_fwd", "conv2d_bwd_data", "conv2d_bwd_weight", "maxpool2d_fwd",
                   "pad2d_fwd"):
            print(convcore.last_kernel(op))
        """,
        env={"CONVCORE_VERBOSE": "1"},
    )
    for kernel in r.stdout.split():
        assert re.search(rf"convcore: \w+ .*-> {kernel}", r.stderr), (kernel, r.stderr)


def test_not_verbose_by_default():
    r = run_python(
        "import numpy as np, convcore; convcore.max_pool2d(np.ones((1, 1, 4, 4), np.float32), 2)"
    )
    assert "convcore:" not in r.stderr


# ---------------------------------------------------------------------------
# Determinism: bitwise equal for 1 and 2 threads, and call after call
# ---------------------------------------------------------------------------


def _all_results(conv_name, pool_name, n=None):
    x, w, b, kw = conv_case(conv_name, n=n, seed=3)
    y = convcore.conv2d(x, w, b, **kw)
    go = rand(y.shape, 4)
    grads = convcore.conv2d_backward(go, x, w, **kw)
    px, pkw = pool_case(pool_name, n=n, seed=5, kind="relu")  # many ties
    p, idx = convcore.max_pool2d(px, return_indices=True, **pkw)
    pg = convcore.max_pool2d_backward(rand(p.shape, 6), idx, px.shape)
    pp = convcore.pad(px, (2, 1, 1, 2), "reflect")
    ppg = convcore.pad_backward(rand(pp.shape, 7), px.shape, (2, 1, 1, 2), "reflect")
    return dict(
        conv=y,
        grad_input=grads[0],
        grad_weight=grads[1],
        grad_bias=grads[2],
        pool=p,
        pool_indices=idx,
        pool_grad=pg,
        pad=pp,
        pad_grad=ppg,
    )


def _assert_bitwise_same(a: dict, b: dict, what: str):
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        assert a[k].tobytes() == b[k].tobytes(), f"{k}: {what} differ"


# N=100 (the training batch): the weight gradient is split into chunks of
# the batch; the 64-channel layer is large enough for every driver to use
# both threads.
DETERMINISM = [
    ("n100_c6_h12_w12_k12_r5_s1_p0", "pool_n100_c6_h24_w24_r2_s2_p0", None),
    ("n100_c1_h28_w28_k32_r3_s1_p1", "pool_n100_c32_h28_w28_r2_s2_p0", None),
    ("n100_c64_h14_w14_k64_r3_s1_p1", "pool_n100_c64_h14_w14_r2_s2_p0", None),
    ("n100_c32_h28_w28_k32_r3_s1_p1", "pool_n100_c32_h28_w28_r2_s2_p0", 17),
    ("n32_c64_h56_w56_k128_r3_s2_p1", "pool_n100_c64_h14_w14_r2_s2_p0", 4),
    ("n2_c8_h6_w6_k8_r3_s1_p1_g8", "pool_n100_c12_h8_w8_r2_s2_p0", 37),
    ("n100_c1_h28_w28_k6_r5_s1_p0", "pool_n100_c6_h24_w24_r2_s2_p0", 128),
]


@pytest.mark.parametrize("conv_name,pool_name,n", DETERMINISM)
def test_bitwise_across_thread_counts(conv_name, pool_name, n, isa):
    if isa == "scalar" and "c64" in conv_name:
        pytest.skip(
            "the scalar reference is slow on the 64-channel layers; covered by smaller ones"
        )
    convcore.set_num_threads(1)
    one = _all_results(conv_name, pool_name, n)
    convcore.set_num_threads(2)
    two = _all_results(conv_name, pool_name, n)
    _assert_bitwise_same(one, two, "1 and 2 threads")
    convcore.set_num_threads(3)  # more threads than cores
    _assert_bitwise_same(one, _all_results(conv_name, pool_name, n), "1 and 3 threads")


def test_bitwise_call_after_call():
    convcore.set_num_threads(2)
    first = _all_results(*DETERMINISM[1][:2])
    for _ in range(3):
        _assert_bitwise_same(first, _all_results(*DETERMINISM[1][:2]), "repeated calls")


def test_weight_gradient_does_not_depend_on_batch_chunking_order():
    # The weight gradient of a batch is a fixed-order reduction: computing
    # it twice with different thread counts, and on a copy of the inputs,
    # gives identical bits.
    x, w, _, kw = conv_case("n100_c6_h12_w12_k12_r5_s1_p0", seed=9)
    go = rand((100, 12, 8, 8), 10)
    convcore.set_num_threads(2)
    a = convcore.conv2d_backward(go, x, w, output_mask=(False, True, True), **kw)
    convcore.set_num_threads(1)
    b = convcore.conv2d_backward(
        go.copy(), x.copy(), w.copy(), output_mask=(False, True, True), **kw
    )
    assert a[0] is None and b[0] is None
    assert a[1].tobytes() == b[1].tobytes() and a[2].tobytes() == b[2].tobytes()


# ---------------------------------------------------------------------------
# The GIL is released while kernels run
# ---------------------------------------------------------------------------


def test_gil_released_during_kernels():
    """Python code in the main thread runs while another thread is inside a
    kernel.  No timing thresholds: if the GIL were held for the whole call,
    no main-thread iteration could be stamped strictly inside it."""
    x, w, _, kw = conv_case("n32_c64_h56_w56_k128_r3_s1_p1", n=8)
    convcore.set_num_threads(1)
    window = {}
    for _attempt in range(3):

        def work():
            t0 = time.perf_counter()
            y = convcore.conv2d(x, w, **kw)
            convcore.conv2d_backward(y, x, w, output_mask=(True, True, False), **kw)
            window["t"] = (t0, time.perf_counter())

        stamps = []
        t = threading.Thread(target=work)
        t.start()
        while t.is_alive():
            stamps.append(time.perf_counter())
            time.sleep(0.0005)
        t.join()
        t0, t1 = window["t"]
        inside = sum(t0 < s < t1 for s in stamps)
        if inside >= 3:
            return
    pytest.fail(
        f"the main thread made no progress while kernels ran ({inside} iterations inside the call)"
    )


# ---------------------------------------------------------------------------
# PyTorch's libgomp and convcore's, in both import orders
# ---------------------------------------------------------------------------

_IMPORT_CHECK = """
import numpy as np
{first}
{second}
x = np.random.default_rng(0).standard_normal((4, 3, 9, 9), dtype=np.float32)
w = np.random.default_rng(1).standard_normal((5, 3, 3, 3), dtype=np.float32)
convcore.set_num_threads(2)
y = convcore.conv2d(x, w, padding=1)
ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1).numpy()
assert np.allclose(y, ref, rtol=1e-4, atol=1e-4), float(np.abs(y - ref).max())
p = convcore.max_pool2d(y, 2)
assert np.array_equal(p, torch.nn.functional.max_pool2d(torch.from_numpy(y), 2).numpy())
torch.set_num_threads(2)
print("ok", convcore.get_num_threads(), torch.get_num_threads())
"""


@pytest.mark.torch
@pytest.mark.parametrize("order", ["torch_first", "convcore_first"])
def test_import_order_with_torch(order):
    first, second = "import torch", "import convcore"
    if order == "convcore_first":
        first, second = second, first
    r = run_python(_IMPORT_CHECK.format(first=first, second=second))
    assert r.stdout.startswith("ok"), r.stdout


def test_openmp_symbols_not_newer_than_4_5():
    """PyTorch bundles an older libgomp under the same name; whichever
    package is imported first provides it, so convcore may only use OpenMP
    symbols up to version 4.5 (OMP_5.x would fail to load after torch)."""
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump is not installed")
    so = convcore._core.__file__
    out = subprocess.run([objdump, "-T", so], capture_output=True, text=True, check=True).stdout
    versions = set(re.findall(r"\b((?:GOMP|OMP)_\d+(?:\.\d+)*)\b", out))
    assert versions, f"no OpenMP symbols found in {so}"

    def key(v):
        return tuple(int(p) for p in v.split("_")[1].split("."))

    too_new = {v for v in versions if key(v) > (4, 5)}
    assert not too_new, f"{so} needs OpenMP symbol versions {sorted(too_new)}"

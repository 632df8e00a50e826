"""Smoke test of an installed convcore wheel (run by .ci/wheel in a fresh
venv, and by cibuildwheel as its test-command).

Checks that the package imports from site-packages (not the source tree)
with its vendored OpenMP runtime (on Linux), that conv2d, max_pool2d and pad agree with
plain numpy references, and that PyTorch and convcore work in one process
whichever is imported first (each order in its own process, a kernel call
of each library after both imports).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np


def conv2d_ref(x, w, b, stride, pad):
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(x, w.shape[2:], axis=(2, 3))
    win = win[:, :, ::stride, ::stride]  # (N, C, P, Q, R, S)
    return np.einsum("ncpqrs,kcrs->nkpq", win, w.astype(np.float64)) + b[None, :, None, None]


def max_pool_ref(x, k):
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::k, ::k]
    return win.max(axis=(4, 5))


def check_kernels() -> None:
    import convcore

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 11, 9)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    for isa in ("scalar", "portable", "avx2", "avx512"):
        convcore.set_max_isa(isa)  # capped to what the CPU has
        y = convcore.conv2d(x, w, b, stride=2, padding=1)
        np.testing.assert_allclose(y, conv2d_ref(x, w, b, 2, 1), rtol=1e-5, atol=1e-5)
        p, idx = convcore.max_pool2d(x, 2, return_indices=True)
        np.testing.assert_array_equal(p, max_pool_ref(x, 2))
        flat = x.reshape(2, 3, -1)
        np.testing.assert_array_equal(
            np.take_along_axis(flat, idx.reshape(2, 3, -1), 2), p.reshape(2, 3, -1)
        )
        for mode in ("constant", "reflect", "replicate", "circular"):
            np_mode = {"replicate": "edge", "circular": "wrap"}.get(mode, mode)
            z = convcore.pad(x, (1, 2, 2, 1), mode=mode)
            ref = np.pad(x, ((0, 0), (0, 0), (2, 1), (1, 2)), mode=np_mode)
            np.testing.assert_array_equal(z, ref, err_msg=mode)


TORCH_ORDER = """
import sys
import numpy as np
first = sys.argv[1]
if first == "torch":
    import torch, convcore
else:
    import convcore, torch
x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
w = np.random.default_rng(2).standard_normal((5, 3, 3, 3)).astype(np.float32)
torch.set_num_threads(2)
convcore.set_num_threads(2)
ours = convcore.conv2d(x, w, padding=1)
theirs = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1).numpy()
np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
p = convcore.max_pool2d(ours, 2)
tp = torch.nn.functional.max_pool2d(torch.from_numpy(ours), 2).numpy()
np.testing.assert_array_equal(p, tp)
print("  " + first + " first: conv2d and max_pool2d agree with torch", torch.__version__)
"""


def main() -> int:
    import convcore

    where = convcore.__file__
    assert "site-packages" in where, f"convcore imported from {where}, not the installed wheel"
    if sys.platform.startswith("linux"):  # auditwheel's vendored copy is the one loaded
        with open("/proc/self/maps") as f:
            assert "convcore.libs/libgomp" in f.read(), "the vendored libgomp is not loaded"
    info = convcore.build_info()
    print(f"  convcore {convcore.__version__} from {where}")
    print(f"  isa {info['isa_active']} of {info['isa_compiled']}, OpenMP {info['openmp']}")
    check_kernels()
    print("  conv2d, max_pool2d, pad agree with numpy on every ISA level")
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        if "--require-torch" in sys.argv:
            raise SystemExit("torch is not installed (--require-torch)")
        print("  torch not installed: the import-order check did not run")
        return 0
    for first in ("torch", "convcore"):
        subprocess.run([sys.executable, "-c", TORCH_ORDER, first], check=True, timeout=300)
    return 0


if __name__ == "__main__":
    sys.exit(main())

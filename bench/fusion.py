"""Training step of the two models with and without the fused Conv2d + ReLU
(``nn._FUSE_CONV_RELU``), interleaved in one process, and each conv layer's
forward + ReLU and ReLU mask + backward fused and unfused.

    .venv/bin/python bench/fusion.py                  # 2 threads, both models
    .venv/bin/python bench/fusion.py --threads 1 --rounds 30

Batch 100, Adam, random images (the step time does not depend on the data).
The FMA check before and after says whether the cores were free.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import convcore  # noqa: E402
from convcore import _core, models, nn, optim  # noqa: E402
from convcore._backend import HOST  # noqa: E402


def step_times(name: str, rounds: int, inner: int) -> dict:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 100)
    model = models.build(name)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def step(fuse: bool):
        nn._FUSE_CONV_RELU = fuse
        loss_fn(model(x), y)
        model.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()

    for fuse in (False, True, False, True):
        step(fuse)
    s = _common.interleaved(
        {"unfused": lambda: step(False), "fused": lambda: step(True)}, rounds, inner
    )
    nn._FUSE_CONV_RELU = True
    return s


def layer_times(c, h, k, r, p, rounds):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, c, h, h), dtype=np.float32)
    w = rng.standard_normal((k, c, r, r), dtype=np.float32) * np.float32(0.1)
    b = rng.standard_normal(k, dtype=np.float32)
    a = (1, 1, p, p, p, p, 1, 1, 1)
    y = _core.conv2d_forward(x, w, b, *a)
    go = rng.standard_normal(y.shape, dtype=np.float32)
    g = go.copy()
    need = (c != 1, True, True)

    def bwd_unfused():
        np.copyto(g, go)
        HOST.relu_backward(g, y, True)
        _core.conv2d_backward(g, x, w, *a, *need)

    def bwd_fused():
        np.copyto(g, go)
        _core.conv2d_backward(g, x, w, *a, *need, relu_output=y)

    fns = {
        "fwd unfused": lambda: HOST.relu(_core.conv2d_forward(x, w, b, *a), True),
        "fwd fused": lambda: _core.conv2d_forward(x, w, b, *a, relu=True),
        "bwd unfused": bwd_unfused,
        "bwd fused": bwd_fused,
        "copy": lambda: np.copyto(g, go),
    }
    for f in fns.values():
        f()
    s = _common.interleaved(fns, rounds)
    m = {key: statistics.median(v) * 1e3 for key, v in s.items()}
    m["bwd unfused"] -= m["copy"]
    m["bwd fused"] -= m["copy"]
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--models", default="tutorial,wide")
    ap.add_argument("--no-layers", action="store_true")
    args = ap.parse_args()
    convcore.tune_process()
    convcore.set_num_threads(args.threads)
    before = _common.fma_check(args.threads)
    print(f"threads {args.threads}, ISA {convcore.build_info()['isa_active']}")
    for name in args.models.split(","):
        inner = 10 if name == "tutorial" else 2
        s = step_times(name, args.rounds, inner)
        a, b = statistics.median(s["unfused"]), statistics.median(s["fused"])
        per_round = statistics.median(u / f for u, f in zip(s["unfused"], s["fused"]))
        print(
            f"{name:8s} step: unfused {a * 1e3:7.2f} ms  fused {b * 1e3:7.2f} ms  "
            f"ratio of medians {a / b:.3f}, median per-round ratio {per_round:.3f} "
            f"({args.rounds} rounds x {inner} steps)",
            flush=True,
        )
    if not args.no_layers:
        print("conv layer, batch 100 (ms; backward minus the gradient copy):")
        for label, shape in (
            ("tutorial conv1", (1, 28, 6, 5, 0)),
            ("tutorial conv2", (6, 12, 12, 5, 0)),
            ("wide conv1", (1, 28, 32, 3, 1)),
            ("wide conv2", (32, 28, 32, 3, 1)),
            ("wide conv3", (32, 14, 64, 3, 1)),
            ("wide conv4", (64, 14, 64, 3, 1)),
        ):
            m = layer_times(*shape, rounds=args.rounds)
            print(
                f"  {label:15s} fwd+relu {m['fwd unfused']:6.2f} -> {m['fwd fused']:6.2f}   "
                f"mask+bwd {m['bwd unfused']:6.2f} -> {m['bwd fused']:6.2f}",
                flush=True,
            )
    after = _common.fma_check(args.threads)
    print("FMA check before:", _common.fma_line(before))
    print("FMA check after: ", _common.fma_line(after))
    for reason in _common.contention(before, after):
        print("contention:", reason)


if __name__ == "__main__":
    main()

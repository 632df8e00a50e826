"""Winograd F(2x2, 3x3) against the kernel each op runs without it: time
and error, on the 3x3 stride-1 layers of the models (and the generic
56x56 layer).

For each problem and op (forward, data gradient) it times,
interleaved in one process, the default selection (the Winograd kernels)
and the same call with them disabled (``convcore.set_disabled_implementations``:
the list's next entry, the direct channels-in-lanes kernels on AVX-512), and
reports GFLOP/s counted with the direct method's FLOPs (2 N K C R S P Q, as
every table of bench/ counts them) and the speed-up.  It then measures both
kernels' error against PyTorch in float64 on the same float32 inputs, as
the test oracle does (tests/oracle.py): the largest |error| in units of
u * scale (u = 2**-24, scale the same sum over absolute values) and the
largest |error| / bound, the bound being 10 sqrt(n) u scale for a dot
product of n terms.  The error columns are what "stays within the oracle's
bounds" means, with the direct method beside it for comparison.

    .venv/bin/python bench/winograd.py                  # 2 threads, the problems' batch
    .venv/bin/python bench/winograd.py --threads 1 --batch 128 --rounds 20
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import convcore  # before torch: one OpenMP runtime (see bench/kernels.py)
import numpy as np
import torch
import torch.nn.functional as F
from convcore import problems

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

U = 2.0**-24
OPS = {
    "fwd": ("conv2d_fwd", "conv2d_fwd_f32_winograd_f2x3_8x32__avx512"),
    "bwd_data": ("conv2d_bwd_data", "conv2d_bwd_data_f32_winograd_f2x3_8x32__avx512"),
}
PROBLEMS = [
    p
    for p in problems.WIDE_LAYERS + problems.GENERIC_LAYERS
    if not p.startswith("pool") and "_r3_s1_" in p and problems.parse(p).C >= 16
]


def _errors(got: np.ndarray, ref: torch.Tensor, scale: torch.Tensor, n_terms: int) -> tuple:
    err = np.abs(got.astype(np.float64) - ref.numpy())
    s = np.maximum(scale.numpy(), 1e-30)
    return float((err / s).max()) / U, float((err / (10 * math.sqrt(n_terms) * U * s)).max())


def bench_problem(name: str, batch: int | None, rounds: int, peak: float | None) -> list[dict]:
    p = problems.parse(name)
    batch = p.N if batch is None else batch
    kw = p.kwargs()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, p.C, p.H, p.W), dtype=np.float32)
    w = (
        rng.standard_normal(p.weight_shape, dtype=np.float32) / np.float32(math.sqrt(p.C * 9))
    ).astype(np.float32)
    y = convcore.conv2d(x, w, **kw)
    go = rng.standard_normal(y.shape, dtype=np.float32)

    def call(op: str):
        if op == "fwd":
            return convcore.conv2d(x, w, **kw)
        return convcore.conv2d_backward(go, x, w, output_mask=(True, False, False), **kw)[0]

    # float64 references and their scales (sums of absolute values)
    xd, wd, gd = (torch.from_numpy(a).double() for a in (x, w, go))
    refs = {
        "fwd": (F.conv2d(xd, wd, **kw), F.conv2d(xd.abs(), wd.abs(), **kw), p.C * 9),
        "bwd_data": (
            torch.nn.grad.conv2d_input(x.shape, wd, gd, **kw),
            torch.nn.grad.conv2d_input(x.shape, wd.abs(), gd.abs(), **kw),
            p.K * 9,
        ),
    }
    flops = 2.0 * batch * p.K * p.C * 9 * y.shape[2] * y.shape[3]
    rows = []
    for op, (kop, wino) in OPS.items():

        def default(op=op):
            convcore.set_disabled_implementations([])
            call(op)

        def without(op=op, wino=wino):
            convcore.set_disabled_implementations([wino])
            call(op)

        default()
        k_wino = convcore.last_kernel(kop)
        without()
        k_other = convcore.last_kernel(kop)
        s = _common.interleaved({"wino": default, "other": without}, rounds)
        tw, to = statistics.median(s["wino"]), statistics.median(s["other"])
        convcore.set_disabled_implementations([])
        ref, scale, n = refs[op]
        e_wino = _errors(call(op), ref, scale, n)
        convcore.set_disabled_implementations([wino])
        e_other = _errors(call(op), ref, scale, n)
        convcore.set_disabled_implementations([])
        rows.append(
            dict(
                problem=name.replace(f"n{p.N}_", f"n{batch}_"),
                op=op,
                winograd_ms=tw * 1e3,
                other_ms=to * 1e3,
                speedup=to / tw,
                winograd_gflops=flops / tw / 1e9,
                winograd_peak_pct=None if peak is None else 100 * flops / tw / 1e9 / peak,
                other_gflops=flops / to / 1e9,
                winograd_err_u=e_wino[0],
                winograd_err_bound=e_wino[1],
                other_err_u=e_other[0],
                other_err_bound=e_other[1],
                winograd_kernel=k_wino,
                other_kernel=k_other,
            )
        )
    return rows


def real_activations(checkpoint: str, images: int) -> list[dict]:
    """Error of both kernels on what a trained network really convolves: the
    inputs of its 3x3 layers and the gradients that reach their outputs,
    for the first ``images`` test images (training mode, as in a step)."""
    from convcore import checkpoint as ckpt
    from convcore import data, nn

    ck = ckpt.load(checkpoint)
    model = ck.build_model().train()
    _, _, xte, yte = data.load_fashion_mnist(download=False, progress=False)
    x = data.to_float(xte[:images], ck.config.get("normalize", False))
    y = yte[:images]
    convs = [m for _, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    seen: dict[int, np.ndarray] = {}
    originals = {}
    for m in convs:  # record each conv's grad_output (masked by its ReLU when fused)
        originals[id(m)] = m.backward

        def backward(grad_output, *, relu_output=None, m=m):
            g = grad_output if relu_output is None else grad_output * (relu_output > 0)
            seen[id(m)] = np.ascontiguousarray(g, dtype=np.float32)
            return originals[id(m)](grad_output, relu_output=relu_output)

        m.backward = backward
    loss = nn.CrossEntropyLoss()
    loss(model(x), y)
    model.backward(loss.backward())
    rows = []
    for i, m in enumerate(convs):
        xin, w = m._x, m.weight.data
        kw = dict(stride=m.stride, padding=m._conv_padding(), dilation=m.dilation, groups=m.groups)
        if w.shape[2:] != (3, 3) or m.stride != (1, 1) or xin.shape[1] < 16:
            continue
        go = seen[id(m)]
        xd, wd, gd = (torch.from_numpy(np.ascontiguousarray(a)).double() for a in (xin, w, go))
        refs = {
            "fwd": (F.conv2d(xd, wd, **kw), F.conv2d(xd.abs(), wd.abs(), **kw), w.shape[1] * 9),
            "bwd_data": (
                torch.nn.grad.conv2d_input(xin.shape, wd, gd, **kw),
                torch.nn.grad.conv2d_input(xin.shape, wd.abs(), gd.abs(), **kw),
                w.shape[0] * 9,
            ),
        }
        for op, (kop, wino) in OPS.items():
            errs = []
            for dis in ([], [wino]):
                convcore.set_disabled_implementations(dis)
                if op == "fwd":
                    got = convcore.conv2d(xin, w, **kw)
                else:
                    got = convcore.conv2d_backward(
                        go, xin, w, output_mask=(True, False, False), **kw
                    )[0]
                errs.append((convcore.last_kernel(kop), _errors(got, *refs[op])))
            convcore.set_disabled_implementations([])
            rows.append(
                dict(layer=i, shape=f"{tuple(xin.shape)} * {tuple(w.shape)}", op=op, errs=errs)
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="threads for convcore")
    ap.add_argument(
        "--batch", type=int, default=None, help="batch of every problem (default: its own)"
    )
    ap.add_argument("--rounds", type=int, default=20, help="timed rounds per op")
    ap.add_argument(
        "--checkpoint",
        help="also measure the error on a trained network's activations and gradients "
        "(a convcore-train checkpoint; Fashion-MNIST test images)",
    )
    ap.add_argument("--images", type=int, default=100, help="test images for --checkpoint")
    args = ap.parse_args(argv)
    if "avx512" not in convcore.build_info()["isa_detected"]:
        print("this CPU has no AVX-512: the Winograd kernels do not run here")
        return 0
    convcore.tune_process()
    convcore.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    before = _common.fma_check(args.threads)
    peak, _ = _common.peak_gflops([before])
    rows = [r for name in PROBLEMS for r in bench_problem(name, args.batch, args.rounds, peak)]
    after = _common.fma_check(args.threads)
    batch = args.batch or "each problem's"
    print(f"threads={args.threads} batch={batch} isa={convcore._core.active_isa()}")
    print(f"FMA peak: {_common.fma_line(before)} (start), {_common.fma_line(after)} (end)")
    header = [
        "problem",
        "op",
        "winograd ms",
        "GFLOP/s",
        "% peak",
        "direct ms",
        "GFLOP/s",
        "speed-up",
        "err/(u scale) wino",
        "direct",
        "err/bound wino",
        "direct",
    ]
    table = [
        [
            r["problem"],
            r["op"],
            _common.fmt(r["winograd_ms"], 3),
            _common.fmt(r["winograd_gflops"], 1),
            _common.fmt(r["winograd_peak_pct"], 0),
            _common.fmt(r["other_ms"], 3),
            _common.fmt(r["other_gflops"], 1),
            _common.fmt(r["speedup"], 2),
            _common.fmt(r["winograd_err_u"], 2),
            _common.fmt(r["other_err_u"], 2),
            _common.fmt(r["winograd_err_bound"], 4),
            _common.fmt(r["other_err_bound"], 4),
        ]
        for r in rows
    ]
    print(_common.markdown_table(header, table, right=set(range(2, 12))))
    print()
    print("direct = the kernel each op runs with the Winograd kernels disabled:")
    for op in OPS:
        names = {r["other_kernel"] for r in rows if r["op"] == op}
        print(f"  {op}: {', '.join(sorted(names))}")
    for reason in _common.contention(before, after):
        print(f"warning: contended run: {reason}")
    if args.checkpoint:
        print(f"\nerror on real data: {args.checkpoint}, {args.images} test images, training mode")
        header = [
            "layer",
            "input * weight",
            "op",
            "err/(u scale) wino",
            "direct",
            "err/bound wino",
            "direct",
        ]
        table = [
            [
                str(r["layer"]),
                r["shape"],
                r["op"],
                _common.fmt(r["errs"][0][1][0], 2),
                _common.fmt(r["errs"][1][1][0], 2),
                _common.fmt(r["errs"][0][1][1], 4),
                _common.fmt(r["errs"][1][1][1], 4),
            ]
            for r in real_activations(args.checkpoint, args.images)
        ]
        print(_common.markdown_table(header, table, right=set(range(3, 7))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

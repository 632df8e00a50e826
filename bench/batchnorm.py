"""Batch-norm benchmark: convcore against PyTorch, same process, same threads.

For each problem of ``convcore.problems.BN_LAYERS``, times (interleaved,
median) the training-mode forward pass with the fused ReLU and the backward
pass through it, in convcore and in PyTorch (``F.batch_norm`` + ``F.relu``
forward; ``native_batch_norm_backward`` after ``threshold_backward``, the two
kernels autograd would run), and reports ms, GB/s (the bytes each pass must
move: forward reads x twice and writes y, backward reads dy, x, y twice and
writes dx) and the convcore kernel that ran.  An FMA check at the start and
end flags a contended run.  The process is tuned as convcore-train tunes it
(``convcore.tune_process``: freed blocks are reused, so a 10 MB output is not
fresh, page-faulting memory on every call); ``--no-tune`` leaves malloc alone.

    .venv/bin/python bench/batchnorm.py                 # 2 threads
    .venv/bin/python bench/batchnorm.py --threads 1 --isa portable
"""

from __future__ import annotations

import argparse
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


def bench_problem(name: str, rounds: int) -> list[dict]:
    p = problems.parse(name)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(p.input_shape, dtype=np.float32)
    go = rng.standard_normal(p.input_shape, dtype=np.float32)
    C = p.C
    w, b = np.ones(C, np.float32), np.zeros(C, np.float32)
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    y, mean, invstd = convcore.batch_norm(x, rm, rv, w, b, True, relu=True, return_stats=True)

    tx, tgo = torch.from_numpy(x), torch.from_numpy(go)
    tw, tb = torch.from_numpy(w), torch.from_numpy(b)
    trm, trv = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
    ty, tmean, tinv = torch.ops.aten.native_batch_norm(tx, tw, tb, trm, trv, True, 0.1, 1e-5)
    ty = F.relu(ty)

    def cc_fwd():
        convcore.batch_norm(x, rm, rv, w, b, True, relu=True, return_stats=True)

    def cc_bwd():
        convcore.batch_norm_backward(go, x, w, mean, invstd, True, output=y)

    def t_fwd():
        F.relu(F.batch_norm(tx, trm, trv, tw, tb, True, 0.1, 1e-5))

    def t_bwd():
        g = torch.ops.aten.threshold_backward(tgo, ty, 0)
        torch.ops.aten.native_batch_norm_backward(
            g, tx, tw, trm, trv, tmean, tinv, True, 1e-5, [True, True, True]
        )

    nbytes = x.nbytes
    rows = []
    for op, (a, t, streams, kop) in {
        "fwd+relu": (cc_fwd, t_fwd, 3, "batchnorm2d_fwd"),
        "bwd(relu)": (cc_bwd, t_bwd, 7, "batchnorm2d_bwd"),
    }.items():
        a()
        t()
        s = _common.interleaved({"convcore": a, "torch": t}, rounds)
        cc, tt = statistics.median(s["convcore"]), statistics.median(s["torch"])
        rows.append(
            dict(
                problem=name,
                op=op,
                convcore_ms=cc * 1e3,
                torch_ms=tt * 1e3,
                ratio=tt / cc,
                convcore_gbs=streams * nbytes / cc / 1e9,
                torch_gbs=streams * nbytes / tt / 1e9,
                kernel=convcore.last_kernel(kop),
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="threads for both libraries")
    ap.add_argument("--rounds", type=int, default=40, help="timed rounds per op")
    ap.add_argument("--isa", default=None, help="cap convcore's ISA (scalar ... avx512)")
    ap.add_argument(
        "--no-tune",
        action="store_true",
        help="leave malloc alone (each call's output is then fresh memory, page faults included)",
    )
    args = ap.parse_args(argv)
    if not args.no_tune:
        convcore.tune_process()  # malloc keeps freed blocks, as convcore-train sets it
    torch.set_num_threads(args.threads)
    convcore.set_num_threads(args.threads)
    if args.isa:
        convcore.set_max_isa(args.isa)
    before = _common.fma_check(args.threads, quick=True)
    rows = [r for name in problems.BN_LAYERS for r in bench_problem(name, args.rounds)]
    after = _common.fma_check(args.threads, quick=True)
    print(f"threads={args.threads} isa={convcore._core.active_isa()}")
    print(
        f"{'problem':22} {'op':10} {'convcore ms':>11} {'GB/s':>6} {'torch ms':>9} "
        f"{'GB/s':>6} {'torch/cc':>8}  kernel"
    )
    for r in rows:
        print(
            f"{r['problem']:22} {r['op']:10} {r['convcore_ms']:11.3f} {r['convcore_gbs']:6.1f} "
            f"{r['torch_ms']:9.3f} {r['torch_gbs']:6.1f} {r['ratio']:8.2f}  {r['kernel']}"
        )
    for reason in _common.contention(before, after):
        print(f"warning: contended run: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""GPU benchmark: convcore's CUDA path against PyTorch (cuDNN) on the same GPU.

Two parts, both interleaved (A B, B A, ...) in one process on one device:

* per op, on the two models' layer shapes (convcore.problems: TUTORIAL_LAYERS
  and WIDE_LAYERS): conv2d forward, grad input, grad weight + bias, max
  pooling forward and backward.  Each sample is a burst of calls followed
  by a device synchronisation; the table gives the median time of each
  side, the ratio (PyTorch / convcore: above 1 means convcore is faster),
  GFLOP/s and the share of the GPU's FP32 peak (``--peak-tflops``, known
  for A100/H100/H200).  Results are checked against PyTorch first.
* a training step (forward, loss, backward, Adam) of the tutorial and wide
  models at batch 100, images copied from the host each step as
  ``convcore-train --device cuda`` does: images per second of each side.

    .venv/bin/python bench/cuda.py                     # everything
    .venv/bin/python bench/cuda.py --part ops --json gpu-ops.json
    .venv/bin/python bench/cuda.py --part train --steps 200

PyTorch's TF32 switches are turned off for cuDNN convolutions and CUDA
matmuls (PyTorch's default lets cuDNN convolutions use TF32 tensor cores), so
both sides compute in FP32; the settings in force are printed and recorded
in the JSON (``meta.torch_fp32``).

Needs convcore built with CUDA (``convcore.build_info()['cuda']``), a visible
GPU, and a CUDA build of PyTorch; without them it says which is missing and
exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import convcore
import convcore.cuda as cc
import numpy as np
from convcore import models, nn, optim
from convcore import problems as P

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from train import torch_model  # noqa: E402  (bench/train.py: the same models in PyTorch)

#: FP32 (non-tensor-core) peak in TFLOP/s by device-name fragment, first match wins.
PEAK_TFLOPS = (("H200", 67.0), ("H100 PCIe", 51.0), ("H100", 67.0), ("A100", 19.5), ("L40S", 91.6))


def fp32_without_tf32(torch) -> dict:
    """Turns PyTorch's TF32 off for cuDNN convolutions and CUDA matmuls (an
    FP32-to-FP32 comparison); returns the settings in force, read back.  The
    per-backend ``fp32_precision`` switches where this PyTorch has them
    (2.9 and later; mixing them with the legacy ``allow_tf32`` flags is an
    error there), else the legacy flags."""
    be = torch.backends
    conv = getattr(be.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        conv.fp32_precision = "ieee"
        be.cuda.matmul.fp32_precision = "ieee"
        return {
            "cudnn.conv.fp32_precision": conv.fp32_precision,
            "cuda.matmul.fp32_precision": be.cuda.matmul.fp32_precision,
        }
    be.cudnn.allow_tf32 = False
    be.cuda.matmul.allow_tf32 = False
    return {
        "cudnn.allow_tf32": be.cudnn.allow_tf32,
        "cuda.matmul.allow_tf32": be.cuda.matmul.allow_tf32,
    }


def _sync(torch) -> None:
    cc.synchronize()
    torch.cuda.synchronize()


def _time_pair(torch, fns: dict, rounds: int, target_s: float = 2e-3) -> dict:
    """Median seconds per call of each callable, interleaved; each sample is
    a burst long enough (about ``target_s``) that launch latency is averaged."""
    for fn in fns.values():  # warm up (cuDNN picks its algorithms here)
        for _ in range(3):
            fn()
    _sync(torch)

    def burst(fn, n):  # n calls, then wait for the device: one sample
        def run():
            for _ in range(n):
                fn()
            _sync(torch)

        return run

    inner = {}
    for k, fn in fns.items():
        one = max(_common.once(burst(fn, 1)), 1e-6)
        inner[k] = max(1, min(1000, int(target_s / one)))
    samples = _common.interleaved({k: burst(fn, inner[k]) for k, fn in fns.items()}, rounds)
    return {k: statistics.median(v) / inner[k] for k, v in samples.items()}


def _check(name: str, ours: np.ndarray, theirs: np.ndarray, rtol: float = 1e-3) -> None:
    scale = max(float(np.abs(theirs).max()), 1e-30)
    err = float(np.abs(ours - theirs).max()) / scale
    if not err <= rtol:
        raise SystemExit(f"{name}: convcore differs from PyTorch by {err:.2e} (relative to max)")


def _pool_cases(torch, p, rng) -> dict:
    """Timed callables (convcore, torch) per op for one pooling problem."""
    F = torch.nn.functional
    x = rng.standard_normal(p.input_shape, dtype=np.float32)
    xd, xt = cc.to_device(x), torch.from_numpy(x).cuda()
    kw = p.kwargs()
    y, idx = convcore.max_pool2d(xd, return_indices=True, **kw)
    yt, it = F.max_pool2d(xt, return_indices=True, **kw)
    _check(f"{p.name} max_pool2d", y.numpy(), yt.cpu().numpy())
    go = rng.standard_normal(tuple(y.shape), dtype=np.float32)
    god, got = cc.to_device(go), torch.from_numpy(go).cuda()
    _check(
        f"{p.name} max_pool2d_backward",
        convcore.max_pool2d_backward(god, idx, p.input_shape).numpy(),
        torch.ops.aten.max_pool2d_with_indices_backward(
            got, xt, list(p.kernel), list(p.stride), list(p.padding), [1, 1], False, it
        )
        .cpu()
        .numpy(),
    )
    pool_args = (list(p.kernel), list(p.stride), list(p.padding), [1, 1], False)
    return {
        "maxpool2d_fwd": (
            lambda: convcore.max_pool2d(xd, return_indices=True, **kw),
            lambda: F.max_pool2d(xt, return_indices=True, **kw),
        ),
        "maxpool2d_bwd": (
            lambda: convcore.max_pool2d_backward(god, idx, p.input_shape),
            lambda: torch.ops.aten.max_pool2d_with_indices_backward(got, xt, *pool_args, it),
        ),
    }


def _conv_cases(torch, p, rng) -> dict:
    """Timed callables (convcore, torch) per op for one convolution problem."""
    F = torch.nn.functional
    x = rng.standard_normal(p.input_shape, dtype=np.float32)
    w = rng.standard_normal(p.weight_shape, dtype=np.float32)
    w *= np.float32(1 / math.sqrt(np.prod(p.weight_shape[1:])))
    b = rng.standard_normal(p.K, dtype=np.float32)
    go = rng.standard_normal((p.N, p.K, *p.output_hw), dtype=np.float32)
    xd, wd, bd, god = (cc.to_device(a) for a in (x, w, b, go))
    xt, wt, bt, got = (torch.from_numpy(a).cuda() for a in (x, w, b, go))
    kw = dict(stride=p.stride, padding=p.padding, dilation=p.dilation, groups=p.groups)
    targs = (list(p.stride), list(p.padding), list(p.dilation), False, [0, 0], p.groups)

    def theirs_bwd(mask):
        return torch.ops.aten.convolution_backward(got, xt, wt, [p.K], *targs, mask)

    _check(
        f"{p.name} conv2d",
        convcore.conv2d(xd, wd, bd, **kw).numpy(),
        F.conv2d(xt, wt, bt, **kw).cpu().numpy(),
    )
    gi, gw, gb = convcore.conv2d_backward(god, xd, wd, **kw)
    ti, tw, tb = theirs_bwd([True, True, True])
    for what, a, t in (("grad_input", gi, ti), ("grad_weight", gw, tw), ("grad_bias", gb, tb)):
        _check(f"{p.name} {what}", a.numpy(), t.cpu().numpy())
    return {
        "conv2d_fwd": (
            lambda: convcore.conv2d(xd, wd, bd, **kw),
            lambda: F.conv2d(xt, wt, bt, **kw),
        ),
        "conv2d_bwd_data": (
            lambda: convcore.conv2d_backward(god, xd, wd, **kw, output_mask=(True, False, False)),
            lambda: theirs_bwd([True, False, False]),
        ),
        "conv2d_bwd_weight": (
            lambda: convcore.conv2d_backward(god, xd, wd, **kw, output_mask=(False, True, True)),
            lambda: theirs_bwd([False, True, True]),
        ),
    }


def op_rows(torch, rounds: int) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for group, names in (("tutorial", P.TUTORIAL_LAYERS), ("wide", P.WIDE_LAYERS)):
        for name in names:
            p = P.parse(name)
            is_pool = name.startswith("pool_")
            cases = _pool_cases(torch, p, rng) if is_pool else _conv_cases(torch, p, rng)
            flops = None if is_pool else p.flops
            for op, (ours, theirs) in cases.items():
                med = _time_pair(torch, {"convcore": ours, "torch": theirs}, rounds)
                r = dict(
                    group=group,
                    problem=name,
                    op=op,
                    convcore_s=med["convcore"],
                    torch_s=med["torch"],
                    ratio=med["torch"] / med["convcore"],
                    gflops=flops / med["convcore"] / 1e9 if flops else None,
                    kernel=convcore.last_kernel(op),
                )
                rows.append(r)
                print(
                    f"  {group:<8} {name:<34} {op:<18} convcore {r['convcore_s'] * 1e6:8.1f} us  "
                    f"torch {r['torch_s'] * 1e6:8.1f} us  ratio {r['ratio']:5.2f}",
                    flush=True,
                )
    return rows


def _train_steps(torch, name: str, xs, ys):
    """Two callables running n training steps: convcore on the GPU, and the
    same model, loss and optimiser in PyTorch (cuDNN)."""
    model = models.build(name, seed=0).to("cuda")
    opt = optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    tm = torch_model(name).cuda()
    topt = torch.optim.Adam(tm.parameters(), lr=1e-3)
    tloss = torch.nn.CrossEntropyLoss()

    def ours(n):
        for i in range(n):
            x, y = xs[i % len(xs)], ys[i % len(ys)]
            loss_fn(model(cc.to_device(x)), y)
            model.zero_grad()
            model.backward(loss_fn.backward())
            opt.step()

    def theirs(n):
        for i in range(n):
            x = torch.from_numpy(xs[i % len(xs)]).cuda()
            y = torch.from_numpy(ys[i % len(ys)]).cuda()
            loss = tloss(tm(x), y)
            loss.item()  # convcore's loss returns a float every step too
            topt.zero_grad(set_to_none=False)
            loss.backward()
            topt.step()

    return ours, theirs


def train_rows(torch, steps: int, chunks: int) -> list[dict]:
    rng = np.random.default_rng(1)
    batch = 100
    xs = [rng.random((batch, 1, 28, 28), dtype=np.float32) for _ in range(8)]
    ys = [rng.integers(0, 10, batch) for _ in range(8)]
    per = max(1, steps // chunks)
    rows = []
    for name in models.NAMES:
        ours, theirs = _train_steps(torch, name, xs, ys)
        fns = {"convcore": lambda f=ours: f(per), "torch": lambda f=theirs: f(per)}
        med = _time_pair(torch, fns, 2 * chunks, target_s=0)
        r = dict(
            model=name,
            batch=batch,
            convcore_img_s=batch * per / med["convcore"],
            torch_img_s=batch * per / med["torch"],
            ratio=med["torch"] / med["convcore"],
            convcore_step_ms=med["convcore"] / per * 1e3,
            torch_step_ms=med["torch"] / per * 1e3,
        )
        rows.append(r)
        print(
            f"  {name:<8} convcore {r['convcore_img_s']:10,.0f} img/s "
            f"({r['convcore_step_ms']:.2f} ms/step)  torch {r['torch_img_s']:10,.0f} img/s "
            f"({r['torch_step_ms']:.2f} ms/step)  ratio {r['ratio']:.2f}",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/cuda.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("all", "ops", "train"), default="all")
    ap.add_argument(
        "--rounds", type=int, default=20, help="interleaved samples per op (default 20)"
    )
    ap.add_argument("--steps", type=int, default=200, help="training steps per side (default 200)")
    ap.add_argument(
        "--chunks", type=int, default=10, help="interleaved chunks of steps (default 10)"
    )
    ap.add_argument("--peak-tflops", type=float, default=None, help="FP32 peak of the GPU")
    ap.add_argument("--json", type=Path, default=None, help="write the results as JSON")
    args = ap.parse_args(argv)

    if not cc.is_available():
        print(f"bench/cuda.py: no CUDA device: {cc.unavailable_reason()}", file=sys.stderr)
        return 2
    try:
        import torch
    except ImportError as e:
        print(f"bench/cuda.py: PyTorch is needed for the comparison ({e})", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print(
            f"bench/cuda.py: this PyTorch ({torch.__version__}) has no CUDA "
            "(install a CUDA build to compare against cuDNN)",
            file=sys.stderr,
        )
        return 2
    torch.backends.cudnn.benchmark = True  # cuDNN's fastest algorithm per shape
    fp32 = fp32_without_tf32(torch)
    name = cc.device_name(0)
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS if k in name), None)
    info = convcore.build_info()
    meta = dict(
        date=_common.now_iso(),
        git=_common.git_describe(),
        device=name,
        convcore_cuda=info["cuda_version"],
        architectures=info["cuda_architectures"],
        torch=torch.__version__,
        torch_cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version(),
        fp32_peak_tflops=peak,
        torch_fp32=fp32,
    )
    print(
        f"GPU {name}; convcore CUDA {info['cuda_version']}; "
        f"torch {torch.__version__} cuDNN {meta['cudnn']}"
    )
    settings = ", ".join(f"{k}={v}" for k, v in fp32.items())
    print(f"PyTorch TF32 off, FP32 against FP32 ({settings})")
    out: dict = {"meta": meta}
    if args.part in ("all", "ops"):
        print("per op (median of interleaved bursts):")
        out["ops"] = op_rows(torch, args.rounds)
        for r in out["ops"]:
            r["peak_share"] = r["gflops"] / (peak * 1e3) if r["gflops"] and peak else None
        ratios = [r["ratio"] for r in out["ops"]]
        gm = math.exp(statistics.fmean(math.log(v) for v in ratios))
        print(f"geometric mean ratio (torch / convcore) over {len(ratios)} op-shapes: {gm:.2f}")
        out["ops_geomean_ratio"] = gm
    if args.part in ("all", "train"):
        print(f"training step, batch 100, Adam ({args.steps} steps per side):")
        out["train"] = train_rows(torch, args.steps, args.chunks)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

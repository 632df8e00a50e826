"""Per-kernel benchmark: convcore against PyTorch, same process, same threads.

For every op and every problem of the shared shape list
(convcore.problems: TUTORIAL_LAYERS, WIDE_LAYERS, GENERIC_LAYERS), times
convcore and PyTorch interleaved (A B, B A, ... over many rounds), reports
the median of each, the ratio (PyTorch / convcore: above 1 means convcore is
faster), GFLOP/s and % of the machine's measured FMA peak (conv), GB/s
(pooling and padding), and the convcore kernel that ran.  An FMA check at
the start and end flags a contended run.

    .venv/bin/python bench/kernels.py                       # full run, 2 threads
    .venv/bin/python bench/kernels.py --quick --ops conv2d_fwd --problems wide
    .venv/bin/python bench/kernels.py --json out.json --markdown out.md

See bench/README.md for what the columns mean.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# convcore is imported before torch, so its own (system) libgomp is the one
# OpenMP runtime in the process and serves PyTorch too (TOOLCHAIN.md: one copy
# is loaded, whichever comes first).  Threads are set after both imports:
# `import torch` resets the calling thread's count.
import convcore
import numpy as np
import torch
import torch.nn.functional as F
from convcore import problems as P

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

OPS = (
    "conv2d_fwd",
    "conv2d_bwd_data",
    "conv2d_bwd_weight",
    "maxpool2d_fwd",
    "maxpool2d_fwd_noidx",
    "maxpool2d_bwd",
    "pad_constant",
    "pad_reflect",
)
#: convcore.last_kernel name of each op.
KERNEL_OP = {
    "conv2d_fwd": "conv2d_fwd",
    "conv2d_bwd_data": "conv2d_bwd_data",
    "conv2d_bwd_weight": "conv2d_bwd_weight",
    "maxpool2d_fwd": "maxpool2d_fwd",
    "maxpool2d_fwd_noidx": "maxpool2d_fwd",
    "maxpool2d_bwd": "maxpool2d_bwd",
    "pad_constant": "pad2d_fwd",
    "pad_reflect": "pad2d_fwd",
}
GROUPS = {"tutorial": P.TUTORIAL_LAYERS, "wide": P.WIDE_LAYERS, "generic": P.GENERIC_LAYERS}


@dataclass
class Case:
    op: str
    problem: str  # compact problem string
    group: str  # tutorial / wide / generic
    convcore: Callable[[], object]
    torch: Callable[[], object]
    check: Callable[[object, object], str]  # (convcore result, torch result) -> "" or a complaint
    flops: float | None  # per call (conv)
    bytes: float | None  # read + written per call (pool, pad)
    # PyTorch on channels_last tensors, converted outside the timing: the
    # stretch reference (its fastest CPU layout), where the op has one.
    torch_cl: Callable[[], object] | None = None


# --------------------------------------------------------------------------
# Comparisons (sanity only: the tests own correctness)


def _close(name: str, a: np.ndarray, b, rtol: float = 1e-3) -> str:
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    if a.shape != b.shape:
        return f"{name}: shape {a.shape} vs torch {b.shape}"
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    err = float(np.max(np.abs(a.astype(np.float64) - b))) if b.size else 0.0
    if not math.isfinite(err) or err > rtol * max(scale, 1e-30):
        return f"{name}: max abs error {err:.3g} (torch max |x| {scale:.3g})"
    return ""


def _equal(name: str, a: np.ndarray, b) -> str:
    b = b.numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    if a.shape != b.shape or not np.array_equal(a, b):
        return f"{name}: not identical to torch"
    return ""


def _join(*msgs: str) -> str:
    return "; ".join(m for m in msgs if m)


# --------------------------------------------------------------------------
# Cases


def _rand(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def conv_cases(name: str, group: str, ops: set[str]) -> list[Case]:
    p = P.parse(name)
    rng = np.random.default_rng(0)
    x = _rand(rng, p.input_shape)
    w = _rand(rng, p.weight_shape) * np.float32(1.0 / math.sqrt(np.prod(p.weight_shape[1:])))
    b = _rand(rng, (p.K,))
    go = _rand(rng, (p.N, p.K, *p.output_hw))
    xt, wt, bt, got = (torch.from_numpy(a) for a in (x, w, b, go))
    kw = dict(stride=p.stride, padding=p.padding, dilation=p.dilation, groups=p.groups)
    targs = (list(p.stride), list(p.padding), list(p.dilation), False, [0, 0], p.groups)
    cl = torch.channels_last
    xc, wc, goc = (t.contiguous(memory_format=cl) for t in (xt, wt, got))
    out = []
    if "conv2d_fwd" in ops:
        out.append(
            Case(
                "conv2d_fwd",
                name,
                group,
                lambda: convcore.conv2d(x, w, b, **kw),
                lambda: F.conv2d(xt, wt, bt, **kw),
                lambda a, t: _close("output", a, t),
                p.flops,
                None,
                lambda: F.conv2d(xc, wc, bt, **kw),
            )
        )
    if "conv2d_bwd_data" in ops:
        out.append(
            Case(
                "conv2d_bwd_data",
                name,
                group,
                lambda: convcore.conv2d_backward(go, x, w, **kw, output_mask=(True, False, False)),
                lambda: torch.ops.aten.convolution_backward(
                    got, xt, wt, [p.K], *targs, [True, False, False]
                ),
                lambda a, t: _close("grad_input", a[0], t[0]),
                p.flops,
                None,
                lambda: torch.ops.aten.convolution_backward(
                    goc, xc, wc, [p.K], *targs, [True, False, False]
                ),
            )
        )
    if "conv2d_bwd_weight" in ops:
        out.append(
            Case(
                "conv2d_bwd_weight",
                name,
                group,
                lambda: convcore.conv2d_backward(go, x, w, **kw, output_mask=(False, True, True)),
                lambda: torch.ops.aten.convolution_backward(
                    got, xt, wt, [p.K], *targs, [False, True, True]
                ),
                lambda a, t: _join(
                    _close("grad_weight", a[1], t[1]), _close("grad_bias", a[2], t[2])
                ),
                p.flops,
                None,
                lambda: torch.ops.aten.convolution_backward(
                    goc, xc, wc, [p.K], *targs, [False, True, True]
                ),
            )
        )
    return out


def pool_cases(name: str, group: str, ops: set[str]) -> list[Case]:
    p = P.parse(name)
    rng = np.random.default_rng(1)
    x = _rand(rng, p.input_shape)  # continuous values: no ties, indices must match exactly
    xt = torch.from_numpy(x)
    kw = p.kwargs()
    y, idx = convcore.max_pool2d(x, **kw, return_indices=True)
    go = _rand(rng, y.shape)
    got, idxt = torch.from_numpy(go), torch.from_numpy(idx)
    n_in, n_out = x.size, y.size
    out = []
    if "maxpool2d_fwd" in ops:
        out.append(
            Case(
                "maxpool2d_fwd",
                name,
                group,
                lambda: convcore.max_pool2d(x, **kw, return_indices=True),
                lambda: F.max_pool2d(xt, **kw, return_indices=True),
                lambda a, t: _join(_equal("output", a[0], t[0]), _equal("indices", a[1], t[1])),
                None,
                4.0 * n_in + (4.0 + 8.0) * n_out,
            )
        )  # read x; write values + int64 indices
    if "maxpool2d_fwd_noidx" in ops:
        out.append(
            Case(
                "maxpool2d_fwd_noidx",
                name,
                group,
                lambda: convcore.max_pool2d(x, **kw),
                lambda: F.max_pool2d(xt, **kw),
                lambda a, t: _equal("output", a, t),
                None,
                4.0 * n_in + 4.0 * n_out,
            )
        )  # read x; write values only
    if "maxpool2d_bwd" in ops:
        out.append(
            Case(
                "maxpool2d_bwd",
                name,
                group,
                lambda: convcore.max_pool2d_backward(go, idx, x.shape),
                lambda: torch.ops.aten.max_pool2d_with_indices_backward(
                    got, xt, list(p.kernel), list(p.stride), list(p.padding), [1, 1], False, idxt
                ),
                lambda a, t: _close("grad_input", a, t, rtol=1e-6),
                None,
                (4.0 + 8.0) * n_out + 4.0 * n_in,
            )
        )  # read grad + indices; write grad_input
    return out


def pad_problems(conv_names: list[str]) -> list[tuple[str, str]]:
    """(name, group) of the pad problems: the input of every padded conv
    problem, padded by the conv's padding (deduplicated)."""
    seen, out = set(), []
    for name, group in conv_names:
        p = P.parse(name)
        if p.padding == (0, 0):
            continue
        ph, pw = p.padding
        key = f"pad_n{p.N}_c{p.C}_h{p.H}_w{p.W}_p{ph if ph == pw else f'{ph}x{pw}'}"
        if key not in seen:
            seen.add(key)
            out.append((key, group))
    return out


def pad_cases(name: str, group: str, ops: set[str]) -> list[Case]:
    # name: pad_n{N}_c{C}_h{H}_w{W}_p{ph}[x{pw}]
    fields = dict((f[0], f[1:]) for f in name.split("_")[1:])
    ph, _, pw = fields["p"].partition("x")
    ph, pw = int(ph), int(pw or ph)
    shape = (int(fields["n"]), int(fields["c"]), int(fields["h"]), int(fields["w"]))
    x = _rand(np.random.default_rng(2), shape)
    xt = torch.from_numpy(x)
    pads = (pw, pw, ph, ph)
    n_out = shape[0] * shape[1] * (shape[2] + 2 * ph) * (shape[3] + 2 * pw)
    out = []
    for mode in ("constant", "reflect"):
        op = f"pad_{mode}"
        if op not in ops:
            continue
        out.append(
            Case(
                op,
                name,
                group,
                lambda mode=mode: convcore.pad(x, pads, mode=mode),
                lambda mode=mode: F.pad(xt, pads, mode=mode),
                lambda a, t: _equal("output", a, t),
                None,
                4.0 * (x.size + n_out),
            )
        )
    return out


def select_problems(filters: list[str] | None) -> list[tuple[str, str]]:
    """(problem, group) pairs whose group name or problem string contains one
    of the filters (all when None)."""
    out = []
    for group, names in GROUPS.items():
        for name in names:
            if not filters or any(f == group or f in name for f in filters):
                out.append((name, group))
    return out


def with_batch(name: str, batch: int | None) -> str:
    """The problem string with its batch replaced (``n100_`` -> ``n128_``)."""
    return name if batch is None else re.sub(r"(^|_)n\d+_", rf"\g<1>n{batch}_", name, count=1)


def build_cases(ops: set[str], filters: list[str] | None, batch: int | None = None) -> list[Case]:
    chosen = [(with_batch(n, batch), g) for n, g in select_problems(filters)]
    cases = []
    conv = [(n, g) for n, g in chosen if not n.startswith("pool_")]
    pool = [(n, g) for n, g in chosen if n.startswith("pool_")]
    for op_prefix, names, make in (("conv2d", conv, conv_cases), ("maxpool2d", pool, pool_cases)):
        if any(o.startswith(op_prefix) for o in ops):
            for n, g in names:
                cases += make(n, g, ops)
    if any(o.startswith("pad_") for o in ops):
        pad_names = pad_problems(
            [
                (with_batch(n, batch), g)
                for n, g in select_problems(None)
                if not n.startswith("pool_")
            ]
        )
        for n, g in pad_names:
            if not filters or any(f == g or f in n for f in filters):
                cases += pad_cases(n, g, ops)
    order = {o: i for i, o in enumerate(OPS)}
    cases.sort(key=lambda c: order[c.op])  # stable: problem order kept within an op
    return cases


# --------------------------------------------------------------------------
# Running


def run_case(
    case: Case, budget_s: float, min_rounds: int, max_rounds: int, min_sample_s: float
) -> dict:
    with torch.no_grad():
        # Warm up (first calls allocate workspaces, fault pages in, start threads) and check.
        a = case.convcore()
        kernel = convcore.last_kernel(KERNEL_OP[case.op])
        t = case.torch()
        problem = case.check(a, t)
        del a, t
        # Calibrate on the median of 3 calls each, then size the samples and the rounds.
        tc = statistics.median(_common.once(case.convcore) for _ in range(3))
        tt = statistics.median(_common.once(case.torch) for _ in range(3))
        per_call = max(min(tc, tt), 1e-7)
        inner = max(1, min(1000, math.ceil(min_sample_s / per_call)))
        rounds = int(budget_s / (inner * (tc + tt) + 1e-9))
        rounds = max(min_rounds, min(max_rounds, rounds))
        # A busy neighbour can make every call 100x slower than calibrated; the
        # deadline then ends the row early (after min_rounds, on a whole round).
        fns = {"convcore": case.convcore, "torch": case.torch}
        if case.torch_cl is not None:
            case.torch_cl()  # warm up
            fns["torch_cl"] = case.torch_cl
        samples = _common.interleaved(
            fns,
            rounds,
            inner,
            deadline_s=4 * budget_s,
            min_rounds=min_rounds,
        )
        rounds = len(samples["convcore"])
    mc = statistics.median(samples["convcore"])
    mt = statistics.median(samples["torch"])
    row = {
        "op": case.op,
        "problem": case.problem,
        "group": case.group,
        "convcore_ms": mc * 1e3,
        "torch_ms": mt * 1e3,
        "ratio": mt / mc,
        "ratio_of_min": min(samples["torch"]) / min(samples["convcore"]),
        "convcore_min_ms": min(samples["convcore"]) * 1e3,
        "torch_min_ms": min(samples["torch"]) * 1e3,
        # Spread of the samples: (p75 - p25) / median; large = noisy.
        "convcore_iqr": _iqr(samples["convcore"]) / mc,
        "torch_iqr": _iqr(samples["torch"]) / mt,
        "rounds": rounds,
        "inner": inner,
        "kernel": kernel,
        "check": problem or "ok",
        "flops": case.flops,
        "bytes": case.bytes,
    }
    if "torch_cl" in samples:
        row["torch_cl_ms"] = statistics.median(samples["torch_cl"]) * 1e3
        row["ratio_cl"] = row["torch_cl_ms"] / row["convcore_ms"]
    if case.flops:
        row["convcore_gflops"] = case.flops / mc / 1e9
        row["torch_gflops"] = case.flops / mt / 1e9
        if "torch_cl_ms" in row:
            row["torch_cl_gflops"] = case.flops / row["torch_cl_ms"] / 1e6
    if case.bytes:
        row["convcore_gbps"] = case.bytes / mc / 1e9
        row["torch_gbps"] = case.bytes / mt / 1e9
    return row


def spread(row: dict) -> float:
    """Median / fastest sample, the worse of the two libraries: about 1.0-1.2
    on a quiet machine; 2 or more when a stalled thread team hit some samples."""
    return max(row["convcore_ms"] / row["convcore_min_ms"], row["torch_ms"] / row["torch_min_ms"])


#: A row is suspect when its samples spread this much ...
SPREAD_LIMIT = 1.5


def suspect(row: dict) -> bool:
    """... or when other processes ran beside it (see _common.OTHERS_LIMIT)."""
    others = row.get("others_load") or 0.0
    return others > _common.OTHERS_LIMIT or spread(row) > SPREAD_LIMIT


def _quality(row: dict) -> tuple:
    return (row["suspect"], row.get("others_load") or 0.0, spread(row))


def _iqr(xs: list[float]) -> float:
    if len(xs) < 4:
        return max(xs) - min(xs)
    q = statistics.quantiles(xs, n=4)
    return q[2] - q[0]


def add_peak(rows: list[dict], peak: float | None) -> None:
    for r in rows:
        if peak and "convcore_gflops" in r:
            r["convcore_pct_peak"] = 100.0 * r["convcore_gflops"] / peak
            r["torch_pct_peak"] = 100.0 * r["torch_gflops"] / peak
            if "torch_cl_gflops" in r:
                r["torch_cl_pct_peak"] = 100.0 * r["torch_cl_gflops"] / peak


HEADER = [
    "op",
    "problem",
    "convcore ms",
    "torch ms",
    "ratio",
    "GFLOP/s",
    "% peak",
    "torch %",
    "ratio CL",
    "CL %",
    "GB/s",
    "others",
    "convcore kernel",
]


def table_rows(rows: list[dict]) -> list[list[str]]:
    out = []
    for r in rows:
        flag = "" if r["check"] == "ok" else " MISMATCH"
        out.append(
            [
                r["op"],
                r["problem"],
                _common.fmt_ms(r["convcore_ms"] / 1e3),
                _common.fmt_ms(r["torch_ms"] / 1e3),
                _common.fmt(r["ratio"]) + ("?" if r.get("suspect") else "") + flag,
                _common.fmt(r.get("convcore_gflops"), 1),
                _common.fmt(r.get("convcore_pct_peak"), 0),
                _common.fmt(r.get("torch_pct_peak"), 0),
                _common.fmt(r.get("ratio_cl")),
                _common.fmt(r.get("torch_cl_pct_peak"), 0),
                _common.fmt(r.get("convcore_gbps"), 1),
                _common.fmt(r.get("others_load"), 1),
                r["kernel"],
            ]
        )
    return out


def summary(rows: list[dict]) -> list[str]:
    """Geometric-mean ratio per op."""
    lines = []
    for op in OPS:
        rs = [r["ratio"] for r in rows if r["op"] == op]
        if rs:
            g = math.exp(sum(math.log(x) for x in rs) / len(rs))
            lines.append(
                f"{op}: geomean ratio {g:.2f} over {len(rs)} problems "
                f"(min {min(rs):.2f}, max {max(rs):.2f})"
            )
    return lines


def header_lines(meta: dict, rows: list[dict]) -> list[str]:
    m = meta["machine"]
    bi = meta["build_info"]
    lines = [
        f"date: {m['date']}   command: {m['command']}",
        f"machine: {m['cpu']} ({m['cpu_family']}), {m['cores']} cores, host {m['host']}",
        f"threads: {meta['threads']}   convcore {bi.get('version')} ISA {bi.get('isa_active')} "
        f"({bi.get('compiler')}, OpenMP {bi.get('openmp')}) git {meta['git']}   "
        f"torch {meta['torch']}   numpy {meta['numpy']}",
        f"OpenMP runtime: {meta['openmp_runtime'] or '?'}"
        + (f"   env {meta['omp_env']}" if meta["omp_env"] else ""),
        f"FMA peak at start: {_common.fma_line(meta['fma_before'])}",
        f"FMA peak at end:   {_common.fma_line(meta['fma_after'])}",
    ]
    if meta.get("avx512"):
        lines.append(meta["avx512"])
    peak = meta["peak_gflops"]
    lines.append(
        f"% peak against {peak:.0f} GFLOP/s: {meta['peak_source']}"
        if peak
        else "% peak: no FMA measurement"
    )
    if meta["contended"]:
        lines.append(
            "CONTENDED RUN: "
            + "; ".join(meta["contended"])
            + " -- absolute numbers are low; ratios are still same-time comparisons"
        )
    else:
        lines.append("FMA checks agree and nothing else ran: no sign of contention")
    lines.append(
        f"wall time {meta['wall_s']:.0f} s; other processes used "
        f"{_common.fmt(meta['others_load'])} cores on average ('others' column: per row)"
    )
    n_suspect = sum(1 for r in rows if r.get("suspect"))
    lines.append(
        f"ratio? = suspect row ({n_suspect}): others > {_common.OTHERS_LIMIT} cores or "
        f"median/fastest sample > {SPREAD_LIMIT}; retried {meta['retries']}x, "
        "cleanest attempt kept"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, default=2, help="threads for both libraries (default 2)")
    ap.add_argument("--quick", action="store_true", help="fewer rounds (about 4x shorter)")
    ap.add_argument(
        "--ops",
        default=None,
        help=f"comma-separated ops or parts of op names, from: {', '.join(OPS)} "
        "(e.g. 'conv2d', 'bwd' or 'pool,pad'); default all",
    )
    ap.add_argument(
        "--problems",
        default=None,
        help="comma-separated filters: a group (tutorial, wide, generic) or a "
        "substring of the problem string (e.g. 'c64_h14,k128'); default all",
    )
    ap.add_argument(
        "--batch",
        type=int,
        default=None,
        help="replace every problem's batch by this (e.g. 128); default each problem's own",
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        help="target seconds per op and problem, both libraries (default 2, quick 0.5)",
    )
    ap.add_argument(
        "--retries",
        type=int,
        default=None,
        help="measure suspect rows again up to this many times (default 1, quick 0)",
    )
    ap.add_argument(
        "--peak",
        type=float,
        default=None,
        help="GFLOP/s to compute %% of peak against, instead of the measured FMA peak",
    )
    ap.add_argument("--json", type=Path, default=None, help="write rows and metadata as JSON")
    ap.add_argument("--markdown", type=Path, default=None, help="write the table as markdown")
    args = ap.parse_args(argv)

    ops = set(OPS)
    if args.ops:
        wanted = [o.strip() for o in args.ops.split(",") if o.strip()]
        ops = {o for o in OPS if any(w in o for w in wanted)}
        if not ops:
            ap.error(f"--ops: nothing matches {args.ops!r}; choose from {', '.join(OPS)}")
    filters = [f.strip() for f in args.problems.split(",")] if args.problems else None
    budget = args.budget if args.budget is not None else (0.5 if args.quick else 2.0)
    min_rounds, max_rounds = (5, 40) if args.quick else (9, 200)
    if args.retries is None:
        args.retries = 0 if args.quick else 1
    min_sample_s = 0.002  # a sample shorter than this is dominated by timer and call jitter

    torch.set_num_threads(args.threads)
    convcore.set_num_threads(args.threads)

    t_start = time.perf_counter()
    meta = {
        "machine": _common.machine(),
        "threads": args.threads,
        "build_info": convcore.build_info(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "git": _common.git_describe(),
        "openmp_runtime": _common.openmp_runtime(),
        "omp_env": _common.omp_env(),
        "quick": args.quick,
        "budget_s": budget,
        "retries": args.retries,
        "batch": args.batch,
    }
    meta["fma_before"] = _common.fma_check(args.threads, quick=args.quick)
    meta["avx512"] = None if args.quick else _common.avx512_note()

    if args.batch is not None and args.batch < 1:
        ap.error("--batch: expected a positive batch")
    cases = build_cases(ops, filters, args.batch)
    if not cases:
        ap.error("no (op, problem) pair matches the filters")
    # The thread count may have been reset by a library; set it again and verify.
    torch.set_num_threads(args.threads)
    convcore.set_num_threads(args.threads)
    if torch.get_num_threads() != args.threads or convcore.get_num_threads() != args.threads:
        print(
            f"warning: threads torch {torch.get_num_threads()} convcore "
            f"{convcore.get_num_threads()} (asked {args.threads})",
            file=sys.stderr,
        )

    print(f"{len(cases)} cases, {args.threads} threads, about {budget:g} s each", file=sys.stderr)

    def measure(case: Case, label: str) -> dict:
        load = _common.CpuLoad()
        row = run_case(case, budget, min_rounds, max_rounds, min_sample_s)
        row["others_load"] = load.others()
        row["suspect"] = suspect(row)
        print(
            f"{label} {row['op']:<18} {row['problem']:<32} "
            f"convcore {_common.fmt_ms(row['convcore_ms'] / 1e3):>7} ms  "
            f"torch {_common.fmt_ms(row['torch_ms'] / 1e3):>7} ms  "
            f"ratio {row['ratio']:5.2f}{'?' if row['suspect'] else ' '} "
            f"others {_common.fmt(row['others_load'], 1)}  {row['kernel']}"
            + ("" if row["check"] == "ok" else f"  CHECK: {row['check']}"),
            file=sys.stderr,
            flush=True,
        )
        return row

    run_load = _common.CpuLoad()
    t_pass = time.perf_counter()
    rows = [measure(case, f"[{i + 1}/{len(cases)}]") for i, case in enumerate(cases)]
    # Measure suspect rows again (a neighbour's load comes and goes) and keep
    # the cleaner attempt: not suspect first, then the lower load of others.
    # Retries get at most half the time of the first pass, so a machine that
    # stays busy cannot make the run much longer.
    t_retry_end = time.perf_counter() + 0.5 * (time.perf_counter() - t_pass)
    for attempt in range(args.retries):
        redo = [i for i, r in enumerate(rows) if r["suspect"]]
        if not redo or time.perf_counter() > t_retry_end:
            break
        print(f"retry {attempt + 1}: {len(redo)} suspect rows", file=sys.stderr)
        for j, i in enumerate(redo):
            if time.perf_counter() > t_retry_end:
                print("retries: time is up (half the first pass)", file=sys.stderr)
                break
            row = measure(cases[i], f"[retry {j + 1}/{len(redo)}]")
            row["attempts"] = rows[i].get("attempts", 1) + 1
            if _quality(row) < _quality(rows[i]):
                rows[i] = row
            else:
                rows[i]["attempts"] = row["attempts"]

    meta["others_load"] = run_load.others()
    meta["fma_after"] = _common.fma_check(args.threads, quick=args.quick)
    meta["contended"] = _common.contention(
        meta["fma_before"], meta["fma_after"], meta["others_load"]
    )
    if args.peak:
        meta["peak_gflops"], meta["peak_source"] = args.peak, "--peak"
    else:
        meta["peak_gflops"], meta["peak_source"] = _common.peak_gflops(
            [meta["fma_before"], meta["fma_after"]]
        )
    meta["wall_s"] = time.perf_counter() - t_start
    add_peak(rows, meta["peak_gflops"])

    head = header_lines(meta, rows)
    table = _common.markdown_table(HEADER, table_rows(rows), right=set(range(2, 10)))
    summ = summary(rows)
    mismatches = [r for r in rows if r["check"] != "ok"]
    print("\n".join(head))
    print()
    print(table)
    print()
    print("\n".join(summ))
    for r in mismatches:
        print(f"MISMATCH {r['op']} {r['problem']}: {r['check']}")

    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows, "summary": summ}, indent=1))
    if args.markdown:
        md = ["```", *head, "```", "", table, "", *(f"- {s}" for s in summ)]
        md += [f"- MISMATCH {r['op']} {r['problem']}: {r['check']}" for r in mismatches]
        args.markdown.write_text("\n".join(md) + "\n")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())

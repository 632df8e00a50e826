"""Crash-free fuzz of convcore's public functions, in child processes.

Every case is one call of a public function (the functional API, the
runtime settings, the ``nn`` layers' constructors and forward passes,
``convcore.cuda``'s host-side entry points) with arguments drawn from a
seeded generator: arrays of any shape (0 and huge sizes, as zero-element
arrays that cost no memory), views with odd strides (transposed, stepped,
negative, broadcast, overlapping, unaligned), any dtype, and argument values
and types PyTorch users get wrong (negative, 0, 2**31, 2**63, floats, NaN,
bools, strings, tuples of the wrong length, None).

A Python exception is an acceptable outcome (the call refused its
arguments); a crash (a signal, an abort, a non-zero exit) or a hang is not,
and neither is ``SystemError`` (a C extension returned an inconsistent
state).  Cases run in batches in a child process with an address-space limit
(so a huge allocation fails with MemoryError instead of taking the machine)
and a time limit; when a child dies or hangs, the case it was running is
reported with the command that replays it, and fuzzing resumes after it.

    python tests/fuzz.py --seconds 60              # a budget of wall time
    python tests/fuzz.py --cases 20000 --seed 7    # a number of cases
    python tests/fuzz.py --seed 7 --case 1234 -v   # replay one case in-process

Under AddressSanitizer (an out-of-bounds access that does not crash is
reported too), with the build of .ci/run's sanitizer step::

    PYTHONPATH=build/asan-site LD_PRELOAD="$(gcc -print-file-name=libasan.so)
    $(gcc -print-file-name=libstdc++.so)" ASAN_OPTIONS=detect_leaks=0:
    allocator_may_return_null=1 python tests/fuzz.py --memory-gb 0 --cases 5000
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time

import numpy as np

# --- values ------------------------------------------------------------------

INTS = [
    0, 1, 1, 2, 2, 3, 3, 5, 7, -1, -2, 2**15, 2**31 - 1, 2**31, 2**32 + 1,
    2**40, 2**62, 2**63 - 1, 2**63, 2**64, -(2**31), -(2**63),
]  # fmt: skip
ODD = [None, 1.5, float("nan"), float("inf"), True, False, "2", "same", "valid", b"x", [], (), {}]
DTYPES = [
    np.float32, np.float32, np.float32, np.float64, np.float16, np.int64, np.int32,
    np.uint8, np.bool_, np.complex64, ">f4", object,
]  # fmt: skip
SIZE_LIMIT = 1 << 22  # elements of a non-empty array the fuzz allocates


def small(r: np.random.Generator) -> int:
    return int(r.choice([0, 1, 1, 2, 2, 3, 3, 4, 5, 7, 8, 9, 13, 17, 31]))


def an_int(r) -> object:
    u = r.random()
    if u < 0.7:
        return small(r)
    if u < 0.9:
        return int(r.choice(INTS))
    if u < 0.95:
        return np.int64(small(r)) if r.random() < 0.5 else np.uint64(2**64 - 1)
    return ODD[r.integers(len(ODD))]


def int_or_pair(r) -> object:
    u = r.random()
    if u < 0.55:
        return an_int(r)
    if u < 0.9:
        return (an_int(r), an_int(r))
    return [an_int(r) for _ in range(int(r.integers(0, 4)))]


def shape(r, ndim: int | None = None) -> tuple:
    ndim = int(r.choice([4, 4, 4, 3, 3, 2, 1, 0, 5])) if ndim is None else ndim
    dims = [small(r) for _ in range(ndim)]
    if ndim and r.random() < 0.15:  # a huge dimension, next to a zero one
        i, j = r.choice(ndim, 2) if ndim > 1 else (0, 0)
        dims[i] = int(r.choice([2**31 - 1, 2**31, 2**32 + 3, 2**40, 2**61]))
        dims[j] = 0
    return tuple(dims)


def array(r, ndim: int | None = None, dtype=None, shp=None, clean: bool = False) -> object:
    """A numpy array (or, rarely, something else) with a random layout;
    ``clean``: mostly C-contiguous float32 of shape ``shp``."""
    u = r.random()
    if not clean and u < 0.03:
        return ODD[r.integers(len(ODD))]
    if not clean and u < 0.05:
        return [[0.0, 1.0]]
    if clean and r.random() < 0.9:
        shp = shp if shp is not None else shape(r, ndim)
        dtype = dtype or np.float32
    shp = shape(r, ndim) if shp is None else shp
    dtype = dtype or DTYPES[r.integers(len(DTYPES))]
    size = 1
    for d in shp:
        size *= d
    if size > SIZE_LIMIT:
        shp = tuple(min(d, 3) for d in shp)
    if size == 0:
        try:
            return np.empty(shp, dtype)
        except ValueError:  # numpy itself refuses a shape whose product overflows
            return np.empty(tuple(min(d, 2**31) for d in shp), dtype)
    a = np.asarray(r.standard_normal(shp) * 3, dtype=np.float64)
    if r.random() < 0.1:
        a.flat[r.integers(a.size)] = r.choice([np.nan, np.inf, -np.inf])
    a = a.astype(dtype) if np.dtype(dtype).kind != "O" else a.astype(object)
    layout = r.random() * (5 if clean else 1)
    if a.ndim >= 2 and layout < 0.08:
        a = np.swapaxes(a, -1, -2)
    elif a.ndim >= 1 and layout < 0.14:
        a = a[..., ::-1]
    elif a.ndim >= 1 and layout < 0.2:
        a = np.repeat(a, 2, axis=-1)[..., ::2]
    elif a.ndim >= 1 and layout < 0.24:
        a = np.broadcast_to(a[..., :1], a.shape)
    elif layout < 0.28 and a.dtype == np.float32:  # unaligned, contiguous
        buf = np.zeros(a.nbytes + 1, np.uint8)
        b = buf[1:].view(np.float32).reshape(a.shape)
        b[...] = a
        a = b
    elif layout < 0.31 and a.ndim >= 1 and a.dtype.kind != "O":  # overlapping rows
        a = np.lib.stride_tricks.as_strided(a, strides=(0,) * (a.ndim - 1) + a.strides[-1:])
    if r.random() < 0.05 and isinstance(a, np.ndarray):
        a = a.copy()
        a.flags.writeable = False
    return a


# --- calls -------------------------------------------------------------------


def case(seed: int, i: int):
    """(description, callable) of case ``i`` of ``seed``; deterministic."""
    import convcore
    from convcore import cuda, nn

    r = np.random.default_rng([seed, i])
    selftest = os.environ.get("CONVCORE_FUZZ_SELFTEST")  # proves crashes are caught
    if selftest and i == 3:
        return selftest, _SELFTEST[selftest], (), {}
    kind = CASES[int(r.integers(len(CASES)))]
    args, kwargs = kind[1](r)
    fn = kind[2](convcore, nn, cuda)
    return kind[0], fn, args, kwargs


def coherent(r) -> bool:
    """Most cases are nearly valid calls, so the kernels run."""
    return r.random() < 0.6


def tiny(r) -> int:
    return int(r.choice([1, 1, 1, 2, 2, 3]))


def _conv(r):
    if coherent(r):
        g = tiny(r)
        n, c, k = small(r), g * tiny(r), g * tiny(r)
        kh, kw = tiny(r) * 2 - 1, tiny(r)
        h, w = small(r) + kh, small(r) + kw
        x = array(r, shp=(n, c, h, w), clean=True)
        wt = array(r, shp=(k, c // g, kh, kw), clean=True)
        b = array(r, shp=(k,), clean=True) if r.random() < 0.5 else None
        kw_ = dict(stride=(tiny(r), tiny(r)), padding=(tiny(r) - 1, tiny(r) - 1), groups=g)
        kw_["dilation"] = tiny(r)
        if r.random() < 0.3:  # one argument out of the ordinary
            key = str(r.choice(["stride", "padding", "dilation", "groups"]))
            kw_[key] = int_or_pair(r) if key != "groups" else an_int(r)
        return (x, wt, b), kw_
    x = array(r)
    w = array(r)
    b = array(r, 1) if r.random() < 0.5 else None
    return (x, w, b), dict(
        stride=int_or_pair(r),
        padding=r.choice(["same", "valid", None]) if r.random() < 0.15 else int_or_pair(r),
        dilation=int_or_pair(r),
        groups=an_int(r),
    )


def _conv_bwd(r):
    (x, w, b), kw = _conv(r)
    kw["output_mask"] = tuple(bool(b) for b in r.integers(0, 2, 3))
    if r.random() < 0.05:
        kw["output_mask"] = an_int(r)
    g = None
    if r.random() < 0.8:  # a grad_output of the right shape, found by running forward
        try:
            import convcore

            y = convcore.conv2d(x, w, b, **{k: v for k, v in kw.items() if k != "output_mask"})
            g = array(r, shp=y.shape, clean=True)
        except Exception:
            pass
    return (array(r) if g is None else g, x, w), kw


def _pool(r):
    if coherent(r):
        k = (tiny(r), tiny(r))
        shp = (small(r), small(r), small(r) + k[0], small(r) + k[1])
        kw = dict(
            stride=None if r.random() < 0.4 else (tiny(r), tiny(r)),
            padding=(r.integers(0, k[0] // 2 + 1), r.integers(0, k[1] // 2 + 1)),
            dilation=tiny(r),
            ceil_mode=bool(r.random() < 0.5),
            return_indices=bool(r.random() < 0.5),
        )
        kw["padding"] = tuple(int(p) for p in kw["padding"])
        if r.random() < 0.3:
            kw[str(r.choice(["stride", "padding", "dilation"]))] = int_or_pair(r)
        return (array(r, shp=shp, clean=True), k), kw
    kw = dict(
        stride=None if r.random() < 0.3 else int_or_pair(r),
        padding=int_or_pair(r),
        dilation=int_or_pair(r),
        ceil_mode=bool(r.random() < 0.5),
        return_indices=bool(r.random() < 0.5),
    )
    return (array(r), int_or_pair(r)), kw


def _pool_bwd(r):
    if coherent(r):
        (x, k), kw = _pool(r)
        try:
            import convcore

            kw["return_indices"] = True
            y, idx = convcore.max_pool2d(x, k, **kw)
            if r.random() < 0.2 and idx.size:
                idx = idx.copy()
                idx.flat[r.integers(idx.size)] = an_int(r) if r.random() < 0.5 else -1
            return (array(r, shp=y.shape, clean=True), idx, x.shape), {}
        except Exception:
            pass
    g = array(r)
    idx = array(r, dtype=np.int64 if r.random() < 0.8 else None)
    if isinstance(idx, np.ndarray) and idx.dtype == np.int64 and r.random() < 0.5:
        idx = np.abs(idx) % max(1, small(r) ** 2)
    shp = shape(r) if r.random() < 0.8 else an_int(r)
    return (g, idx, shp), {}


def _pads(r):
    n = int(r.choice([4, 4, 2, 2, 1, 3, 0]))
    return tuple(an_int(r) for _ in range(n)) if r.random() < 0.95 else an_int(r)


MODES = ["constant", "reflect", "replicate", "circular", "zeros", "", 3]


def _pad(r):
    value = 0.0 if r.random() < 0.6 else r.choice([1.5, -2.0, np.nan, None, "x", True])
    mode = MODES[r.integers(len(MODES))]
    if coherent(r):
        mode = MODES[r.integers(4)]
        value = 0.0 if mode != "constant" else value
        pads = tuple(int(r.integers(-3, 6)) for _ in range(int(r.choice([2, 4]))))
        return (array(r, int(r.choice([1, 2, 3, 4, 4])), clean=True), pads), dict(
            mode=mode, value=value
        )
    return (array(r), _pads(r)), dict(mode=mode, value=value)


def _pad_bwd(r):
    if coherent(r):
        (x, pads), kw = _pad(r)
        try:
            import convcore

            y = convcore.pad(x, pads, **kw)
            g = array(r, shp=y.shape, clean=True)
            return (g, x.shape, pads), dict(mode=kw["mode"])
        except Exception:
            pass
    return (array(r), shape(r), _pads(r)), dict(mode=MODES[r.integers(len(MODES))])


def _bn(r):
    """batch_norm then batch_norm_backward (the second only if the first ran)."""
    if coherent(r):
        c = small(r)
        shp = (small(r), c, small(r), small(r))
        vec = [array(r, shp=(c,), clean=True) if r.random() < 0.8 else None for _ in range(4)]
        if r.random() < 0.2:  # one channel array out of the ordinary
            vec[int(r.integers(4))] = array(r)
        x = array(r, shp=shp, clean=True)
    else:
        x = array(r)
        vec = [array(r, 1) if r.random() < 0.7 else None for _ in range(4)]
    kw = dict(
        training=bool(r.random() < 0.6),
        momentum=r.choice([0.1, 0.0, 1.0, -1.0, float("nan"), None, "x"]),
        eps=r.choice([1e-5, 0.0, -1.0, float("inf"), None, 1]),
        relu=bool(r.random() < 0.5),
        return_stats=True,
    )
    if r.random() < 0.6:
        kw["momentum"], kw["eps"] = 0.1, 1e-5
    return (x, *vec), kw


def _run_bn(convcore):
    def call(x, rm, rv, w, b, **kw):
        y, mean, invstd = convcore.batch_norm(x, rm, rv, w, b, **kw)
        return convcore.batch_norm_backward(
            np.ones_like(y), x, w, mean, invstd, kw["training"], output=y if kw["relu"] else None
        )

    return call


def _runtime(r):
    u = r.random()
    if u < 0.4:
        return ("set_num_threads", an_int(r)), {}
    if u < 0.6:
        return ("set_max_isa", r.choice(["scalar", "portable", "avx2", "avx512", "sse", ""])), {}
    if u < 0.7:
        return (
            "last_kernel",
            r.choice(["conv2d_fwd", "maxpool2d_fwd", "batchnorm2d_fwd", "x", "", 3]),
        ), {}
    if u < 0.8:
        names = [
            "conv2d_fwd_f32_winograd_f2x3_8x32__avx512",
            "conv2d_fwd_f32_direct__ref",
            "maxpool2d_fwd_f32_2x2s2__avx512",
            "nope",
            "",
            3,
            None,
        ]
        value = [names[int(i)] for i in r.integers(0, len(names), int(r.integers(0, 4)))]
        value = [value, "x", None, 7][int(r.choice(4, p=[0.7, 0.1, 0.1, 0.1]))]
        return ("set_disabled_implementations", value), {}
    return (
        "implementations",
        r.choice(["conv2d_fwd", "pad2d_fwd", "batchnorm2d_bwd", "nope", None]),
    ), {}


def _run_runtime(convcore):
    def call(name, value):
        try:
            return getattr(convcore, name)(value)
        finally:
            convcore.set_num_threads(2)
            convcore.set_max_isa(os.environ.get("CONVCORE_MAX_ISA") or "avx512")
            convcore.set_disabled_implementations([])

    return call


def _layer(r):
    u = r.random()
    x = array(r)
    if u < 0.35:
        ctor = ("Conv2d", small(r), small(r), int_or_pair(r))
        kw = dict(stride=int_or_pair(r), padding=int_or_pair(r), dilation=int_or_pair(r))
        if r.random() < 0.3:
            kw["padding_mode"] = r.choice(["zeros", "reflect", "replicate", "circular", "x"])
    elif u < 0.55:
        ctor = ("MaxPool2d", int_or_pair(r))
        kw = dict(stride=int_or_pair(r), padding=int_or_pair(r), ceil_mode=r.random() < 0.5)
    elif u < 0.75:
        ctor = ("Linear", small(r), small(r))
        kw = {}
    elif u < 0.85:
        ctor = ("ReLU",)
        kw = {}
    elif u < 0.9:
        ctor = ("Flatten",)
        kw = {}
    elif u < 0.95:
        ctor = ("BatchNorm2d", small(r))
        kw = dict(momentum=r.choice([0.1, None]), affine=r.random() < 0.7, relu=r.random() < 0.5)
    else:
        ctor = ("Dropout", float(r.choice([0.0, 0.5, 1.0, 1.5, -1.0])))
        kw = {}
    return (ctor, kw, x), {}


def _run_layer(nn):
    def call(ctor, kw, x):
        layer = getattr(nn, ctor[0])(*ctor[1:], **kw)
        out = layer(x)
        if isinstance(out, np.ndarray) and out.size < 10**6 and hasattr(layer, "backward"):
            layer.backward(np.ones_like(out))
        return out

    return call


def _loss(r):
    logits = array(r, 2)
    target = array(r, 1, dtype=np.int64 if r.random() < 0.8 else None)
    return (logits, target), {}


def _run_loss(nn):
    def call(logits, target):
        fn = nn.CrossEntropyLoss()
        loss = fn(logits, target)
        fn.backward()
        return loss

    return call


def _cuda(r):
    return (r.choice(["is_available", "device_count", "to_device"]), array(r)), {}


def _run_cuda(cuda):
    def call(name, a):
        f = getattr(cuda, name)
        return f(a) if name == "to_device" else f()

    return call


CASES = [
    ("conv2d", _conv, lambda c, nn, cu: c.conv2d),
    ("conv2d_backward", _conv_bwd, lambda c, nn, cu: c.conv2d_backward),
    ("max_pool2d", _pool, lambda c, nn, cu: c.max_pool2d),
    ("max_pool2d_backward", _pool_bwd, lambda c, nn, cu: c.max_pool2d_backward),
    ("pad", _pad, lambda c, nn, cu: c.pad),
    ("pad_backward", _pad_bwd, lambda c, nn, cu: c.pad_backward),
    ("batch_norm", _bn, lambda c, nn, cu: _run_bn(c)),
    ("runtime", _runtime, lambda c, nn, cu: _run_runtime(c)),
    ("nn layer", _layer, lambda c, nn, cu: _run_layer(nn)),
    ("CrossEntropyLoss", _loss, lambda c, nn, cu: _run_loss(nn)),
    ("cuda", _cuda, lambda c, nn, cu: _run_cuda(cu)),
]


def _crash():
    import ctypes

    ctypes.string_at(0)  # a read of address 0: SIGSEGV


_SELFTEST = {"segfault": _crash, "hang": lambda: time.sleep(3600), "abort": os.abort}


def describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"ndarray({value.dtype}, {value.shape}, strides={value.strides})"
    if isinstance(value, (tuple, list)):
        inner = ", ".join(describe(v) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={describe(v)}" for k, v in value.items()) + "}"
    return repr(value)


# --- child: run cases, one line per case on stdout -----------------------------


def child(seed: int, start: int, count: int, memory_gb: float) -> int:
    import resource

    if memory_gb > 0:  # 0: no limit (AddressSanitizer reserves terabytes of shadow)
        limit = int(memory_gb * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import warnings

    warnings.simplefilter("ignore")
    import convcore

    convcore.set_num_threads(2)
    out = sys.stdout
    for i in range(start, start + count):
        name, fn, args, kwargs = case(seed, i)
        what = f"{name}{describe(args)} {describe(kwargs)}".replace("\n", " ")
        out.write(f"S {i}\t{what}\n")
        out.flush()
        try:
            fn(*args, **kwargs)
            outcome = "ok"
        except SystemError as e:  # an extension left Python in a bad state
            outcome = f"BAD SystemError: {e}"
        except MemoryError:
            outcome = "MemoryError"
        except Exception as e:
            outcome = type(e).__name__
        out.write(f"D {i} {name}\t{outcome}\n")
        out.flush()
    return 0


# --- parent: batches in children, crash and hang detection -------------------


def fuzz(
    seed: int,
    cases: int | None,
    seconds: float | None,
    batch: int = 400,
    timeout: float = 60.0,
    memory_gb: float = 4.0,
    log=print,
) -> dict:
    """Run cases in child processes; returns a summary dict (see ``failures``)."""
    counts: dict = collections.defaultdict(collections.Counter)
    failures = []
    i = 0
    t0 = time.monotonic()
    here = os.path.abspath(__file__)
    while (cases is None or i < cases) and (seconds is None or time.monotonic() - t0 < seconds):
        n = batch if cases is None else min(batch, cases - i)
        cmd = [sys.executable, here, "--child", "--seed", str(seed), "--start", str(i)]
        cmd += ["--count", str(n), "--memory-gb", str(memory_gb)]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            stdout, status = p.stdout, p.returncode
            stderr = p.stderr
        except subprocess.TimeoutExpired as e:
            stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
            status = "hang"
        last_started, started_what, done = None, "", i
        for line in stdout.splitlines():
            tag, _, rest = line.partition(" ")
            if tag == "S":
                k, _, started_what = rest.partition("\t")
                last_started = int(k)
            elif tag == "D":
                k, _, body = rest.partition(" ")
                name, _, outcome = body.partition("\t")
                counts[name][outcome.split(":")[0]] += 1
                if outcome.startswith("BAD"):
                    failures.append(dict(case=int(k), op=name, what=outcome))
                done = int(k) + 1
        if status != 0:
            # The parent never runs a case (generating one may call convcore).
            k = last_started if last_started is not None else i
            name = started_what.split("(", 1)[0] if started_what else "?"
            what = (
                "hang"
                if status == "hang"
                else f"exit status {status}" + (" (a signal)" if status < 0 else "")
            )
            failures.append(
                dict(
                    case=k,
                    op=name,
                    what=what,
                    call=started_what,
                    stderr=stderr[-2000:],
                    replay=f"python tests/fuzz.py --seed {seed} --case {k} -v",
                )
            )
            counts[name][what] += 1
            done = k + 1
        i = done
    total = sum(sum(c.values()) for c in counts.values())
    summary = dict(
        seed=seed,
        cases=total,
        seconds=round(time.monotonic() - t0, 1),
        outcomes={k: dict(v) for k, v in sorted(counts.items())},
        failures=failures,
    )
    log(json.dumps(summary, indent=1))
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases", type=int)
    ap.add_argument("--seconds", type=float)
    ap.add_argument("--case", type=int, help="replay one case in this process")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--memory-gb", type=float, default=4.0)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.seed, args.start, args.count, args.memory_gb)
    if args.case is not None:
        name, fn, a, kw = case(args.seed, args.case)
        print(f"case {args.case}: {name}{describe(a)} {describe(kw)}", flush=True)
        print("result:", describe(fn(*a, **kw)))
        return 0
    if args.cases is None and args.seconds is None:
        args.seconds = 30.0
    summary = fuzz(args.seed, args.cases, args.seconds, memory_gb=args.memory_gb)
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())

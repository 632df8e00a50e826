"""Helpers shared by bench/kernels.py and bench/train.py (no torch, no convcore).

- ``fma_check``: the machine's measured FMA peak (bench/fma_peak.c, compiled
  with the system C compiler on first use and cached by source hash).
- ``contention``: compares the FMA checks taken at the start and end of a
  run and says whether the run was contended.
- ``machine``: CPU model, core count, host, date, for the record.
- ``interleaved``: times several callables in alternating order, median of
  each.
- ``markdown_table`` and small formatting helpers.
"""

from __future__ import annotations

import ctypes
import datetime
import hashlib
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
FMA_SOURCE = HERE / "fma_peak.c"

#: A run is flagged as contended when the FMA checks at its start and end
#: differ by more than this fraction (TOOLCHAIN.md: single-run differences
#: under about 15 % are noise) ...
DRIFT_LIMIT = 0.15
#: ... or when N threads deliver less than this multiple of one thread
#: (two free cores give about 2x; a shared pair often gives about 1x).
SCALING_MIN = 1.6
#: ... or when other processes used more than this many cores on average.
OTHERS_LIMIT = 0.2


# --------------------------------------------------------------------------
# FMA peak


def _compile_fma() -> Path:
    src = FMA_SOURCE.read_bytes()
    cc = os.environ.get("CC", "cc")
    flags = ["-O2", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"]
    key = hashlib.sha256(src + " ".join([cc, *flags]).encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / f"convcore-bench-{os.getuid()}"
    cache.mkdir(parents=True, exist_ok=True)
    so = cache / f"fma_peak-{key}.so"
    if not so.exists():
        tmp = cache / f"fma_peak-{key}.{os.getpid()}.tmp.so"
        cmd = [cc, *flags, str(FMA_SOURCE), "-o", str(tmp)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} failed:\n{res.stderr}")
        os.replace(tmp, so)  # atomic: concurrent runs never load a half-written file
    return so


_lib = None


def _fma_lib():
    global _lib
    if _lib is None:
        lib = ctypes.CDLL(str(_compile_fma()))
        lib.fma_gflops.argtypes = [
            ctypes.c_int64,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_int),
        ]
        lib.fma_gflops.restype = ctypes.c_double
        lib.has_avx2_fma.restype = ctypes.c_int
        lib.has_avx512f.restype = ctypes.c_int
        _lib = lib
    return _lib


def fma_gflops(threads: int, width: int = 256, seconds: float = 0.05, reps: int = 5) -> dict:
    """FMA throughput on ``threads`` threads with ``width``-bit vectors.

    Runs ``reps`` bursts of about ``seconds`` each and returns
    ``{"best": GFLOP/s, "median": GFLOP/s, "team": threads obtained}``.
    The best burst is the peak; the median shows how steady the cores were.
    """
    lib = _fma_lib()
    team = ctypes.c_int(0)
    # Calibrate the iteration count on one short burst (also starts the team).
    iters = 200_000
    g = lib.fma_gflops(iters, threads, width, ctypes.byref(team))
    per_iter_s = 2.0 * (width // 32) * 12 * team.value / (g * 1e9)
    iters = max(10_000, int(seconds / per_iter_s))
    runs = [lib.fma_gflops(iters, threads, width, ctypes.byref(team)) for _ in range(reps)]
    return {"best": max(runs), "median": statistics.median(runs), "team": team.value}


def fma_check(threads: int, quick: bool = False) -> dict | None:
    """AVX2 FMA peak on 1 and on ``threads`` threads (GFLOP/s), or None when
    the micro-benchmark cannot be built or the CPU lacks AVX2/FMA."""
    try:
        lib = _fma_lib()
    except (RuntimeError, OSError) as e:
        print(f"warning: no FMA check ({e})", file=sys.stderr)
        return None
    if not lib.has_avx2_fma():
        return None
    # Many short bursts: on a shared machine a few milliseconds often pass
    # undisturbed where 50 ms rarely do, and the best burst is the peak.
    secs, reps = (0.003, 10) if quick else (0.003, 20)
    out = {"time": now_iso(), "single": fma_gflops(1, 256, secs, reps)}
    out["multi"] = fma_gflops(threads, 256, secs, reps) if threads > 1 else out["single"]
    out["threads"] = threads
    return out


def avx512_note() -> str | None:
    """One line comparing 512-bit with 256-bit FMA throughput on one core, or
    None without AVX-512.  (Zen 4 splits a 512-bit FMA over two cycles, so
    both widths give the same FLOP/s; Intel server cores with two 512-bit
    units give twice as much.)"""
    try:
        lib = _fma_lib()
    except (RuntimeError, OSError):
        return None
    if not lib.has_avx512f():
        return None
    # Interleave the two widths so a busy neighbour hits both alike.
    g256, g512 = [], []
    for _ in range(5):
        g256.append(fma_gflops(1, 256, 0.003, 4)["best"])
        g512.append(fma_gflops(1, 512, 0.003, 4)["best"])
    a, b = max(g256), max(g512)
    return (
        f"AVX-512 FMA on 1 thread: {b:.0f} GFLOP/s vs AVX2 {a:.0f} GFLOP/s "
        f"(x{b / a:.2f}); % of peak below is against the AVX2 figure"
    )


class CpuLoad:
    """CPU time used by *other* processes while a block runs, in cores.

    The kernel's /proc/stat counts every process on the machine, including
    those of neighbours in other containers that ``ps`` cannot see; this
    process's own time (and that of its waited-for children) is subtracted.
    0.0 = nobody else ran; 1.0 = others kept one core busy on average.
    Resolution is one clock tick (10 ms) per core, so blocks of a second or
    more read well.

        load = CpuLoad(); ...; others = load.others()
    """

    _HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def __init__(self, extra_own=None):
        self._extra_own = extra_own  # callable -> seconds of CPU used by our workers
        self.reset()

    @staticmethod
    def _busy() -> float | None:
        try:
            with open("/proc/stat") as f:
                fields = f.readline().split()[1:]
        except OSError:
            return None
        v = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
        return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CpuLoad._HZ

    def _own(self) -> float:
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        return own + (self._extra_own() if self._extra_own else 0.0)

    def reset(self) -> None:
        self._t0, self._busy0, self._own0 = time.perf_counter(), self._busy(), self._own()

    def others(self) -> float | None:
        busy = self._busy()
        if busy is None or self._busy0 is None:
            return None
        wall = time.perf_counter() - self._t0
        if wall <= 0:
            return None
        foreign = (busy - self._busy0) - (self._own() - self._own0)
        return max(0.0, foreign / wall)


def openmp_runtime() -> str:
    """Path of the OpenMP runtime loaded in this process ('' if none)."""
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "libgomp" in line or "libiomp" in line}
    except OSError:
        return ""
    return ", ".join(sorted(libs))


def omp_env() -> dict:
    return {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "GOMP_", "KMP_"))}


def contention(before: dict | None, after: dict | None, others: float | None = None) -> list[str]:
    """Reasons to distrust the run ([] = looks clean); ``others`` is the
    CpuLoad.others() figure of the whole run."""
    reasons = []
    if others is not None and others > OTHERS_LIMIT:
        reasons.append(f"other processes kept {others:.2f} cores busy on average")
    if before is None or after is None:
        return [*reasons, "no FMA check"]
    for key in ("single", "multi"):
        a, b = before[key]["best"], after[key]["best"]
        drift = abs(a - b) / max(a, b)
        if drift > DRIFT_LIMIT:
            reasons.append(f"{key}-thread FMA peak moved {drift:.0%} ({a:.0f} -> {b:.0f} GFLOP/s)")
    n = before.get("threads", 1)
    if n > 1:
        for when, chk in (("start", before), ("end", after)):
            scale = chk["multi"]["best"] / chk["single"]["best"]
            if scale < SCALING_MIN:
                reasons.append(f"{n} threads gave only {scale:.2f}x one thread at the {when}")
    return reasons


def peak_gflops(checks: list[dict | None]) -> tuple[float | None, str]:
    """The machine's measured N-thread AVX2 FMA peak and how it was obtained.

    The best N-thread figure among the checks of the run (a check
    that met a busy core underestimates the peak, never overestimates it).
    When none of them saw the cores free (best below SCALING_MIN x the
    one-thread peak), N x the best one-thread figure is used instead, and the
    description says so: a neighbour rarely holds *every* core, so the
    one-thread figure is the reliable one on a shared machine.
    """
    checks = [c for c in checks if c]
    if not checks:
        return None, "no FMA measurement"
    n = checks[0]["threads"]
    single = max(c["single"]["best"] for c in checks)
    multi = max(c["multi"]["best"] for c in checks)
    if n == 1:
        return single, "best 1-thread AVX2 FMA check"
    if multi >= SCALING_MIN * single:
        return multi, f"best {n}-thread AVX2 FMA measurement of the run"
    return n * single, (
        f"{n} x the best 1-thread AVX2 FMA check (no {n}-thread measurement "
        f"of the run saw the cores free: best {multi:.0f} GFLOP/s)"
    )


def fma_line(chk: dict | None) -> str:
    if chk is None:
        return "n/a"
    s, m = chk["single"], chk["multi"]
    return (
        f"1 thread {s['best']:.0f} GFLOP/s, {chk['threads']} threads {m['best']:.0f} GFLOP/s "
        f"(x{m['best'] / s['best']:.2f}; medians {s['median']:.0f} / {m['median']:.0f})"
    )


# --------------------------------------------------------------------------
# Machine and run record


def now_iso() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_family() -> str:
    """'family F model M' from /proc/cpuinfo (the model name alone can be as
    vague as 'AMD EPYC' under a hypervisor)."""
    fam = mod = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu family"):
                    fam = line.split(":", 1)[1].strip()
                elif line.startswith("model\t") or line.startswith("model :"):
                    mod = line.split(":", 1)[1].strip()
                if fam and mod:
                    break
    except OSError:
        pass
    return f"family {fam} model {mod}" if fam and mod else ""


def machine() -> dict:
    return {
        "cpu": cpu_model(),
        "cpu_family": cpu_family(),
        "cores": os.cpu_count(),
        "host": platform.node(),
        "python": platform.python_version(),
        "date": now_iso(),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
    }


def git_describe() -> str:
    try:
        res = subprocess.run(
            ["git", "-C", str(HERE), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return res.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


# --------------------------------------------------------------------------
# Timing


def interleaved(
    fns: dict[str, Callable[[], object]],
    rounds: int,
    inner: int = 1,
    deadline_s: float | None = None,
    min_rounds: int = 1,
) -> dict:
    """Time each callable ``rounds`` times, alternating between them, and
    return ``{name: [seconds per call, ...]}``.

    Each sample is ``inner`` back-to-back calls (divided out).  The order
    alternates every round (A B, B A, A B, ...), so neither side always runs
    right after the other with its caches or thread team warm.  With
    ``deadline_s``, stops after the first whole round (at least ``min_rounds``
    and an even number, so both orders count equally) past the deadline.
    """
    names = list(fns)
    samples: dict[str, list[float]] = {k: [] for k in names}
    t_end = time.perf_counter() + deadline_s if deadline_s else None
    for r in range(rounds):
        if t_end is not None and r >= min_rounds and r % 2 == 0 and time.perf_counter() > t_end:
            break
        order = names if r % 2 == 0 else names[::-1]
        for k in order:
            fn = fns[k]
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            samples[k].append((time.perf_counter() - t0) / inner)
    return samples


def once(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------
# Output


def markdown_table(header: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    right = right if right is not None else set(range(2, len(header)))
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]

    def line(cells):
        out = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ]
        return "| " + " | ".join(out) + " |"

    sep = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if i in right else ("-" * (w + 2)) for i, w in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def fmt(v: float | None, digits: int = 2) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}"


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


if __name__ == "__main__":  # python bench/_common.py [threads]: the FMA check alone
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    load = CpuLoad()
    chk = fma_check(n)
    print(f"{cpu_model()} ({cpu_family()})")
    print(f"AVX2 FMA peak: {fma_line(chk)}")
    note = avx512_note()
    if note:
        print(note)
    print(f"other processes used {fmt(load.others())} cores meanwhile")

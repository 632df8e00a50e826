"""End-to-end training benchmark: convcore against PyTorch.

For each model (``tutorial``, ``wide``; ``wide-bn`` on request) trains the same architecture in
convcore (convcore.models / nn / optim) and in PyTorch (torch.nn, built
here), batch 100, Adam lr 1e-3, the same thread count, on the same batches.
Each (framework, model) runs in its own worker process so that its peak RSS
(``ru_maxrss``) is its own; the parent interleaves them, alternating chunks
of steps (A B, B A, ...); before each chunk it waits for the other worker's
threads to stop spinning, and each chunk's first step runs untimed (see
--chunk-warmup).  It reports the median time per step, extrapolated
to an epoch (600 steps = 60,000 images), the ratio, and each worker's peak
RSS.  An FMA check at the start and end flags a contended run.

    .venv/bin/python bench/train.py                        # default: a few minutes
    .venv/bin/python bench/train.py --steps 30 --models tutorial
    .venv/bin/python bench/train.py --steps 600 --data     # a real full epoch, real data

See bench/README.md for what the columns mean.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

MODELS = ("tutorial", "wide", "wide-bn")
FRAMEWORKS = ("convcore", "torch")
BATCH = 100
TRAIN_IMAGES = 60_000
STEPS_PER_EPOCH = TRAIN_IMAGES // BATCH  # 600
LR = 1e-3
#: Default timed steps per framework (a run of a few minutes on two free cores).
DEFAULT_STEPS = {"tutorial": 300, "wide": 90, "wide-bn": 90}
QUICK_STEPS = {"tutorial": 60, "wide": 12, "wide-bn": 12}
DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
PREFIX = "@@"  # marks protocol lines on a worker's stdout


# --------------------------------------------------------------------------
# Data (identical in both workers: uint8 images, converted per batch)


def _read_idx(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_data(data: str | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (60000, 28, 28), int64 labels (60000,)).

    ``data`` None: random images and labels of Fashion-MNIST's shape and
    type, so the memory footprint matches a real run; otherwise the folder
    holding train-{images-idx3,labels-idx1}-ubyte[.gz]."""
    if data is None:
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, size=(TRAIN_IMAGES, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=TRAIN_IMAGES).astype(np.int64)
        return images, labels
    folder = Path(data)
    found = {}
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        for cand in (folder / name, folder / f"{name}.gz"):
            if cand.exists():
                found[name] = cand
                break
        else:
            raise SystemExit(f"--data: {name}[.gz] not found in {folder}")
    images = _read_idx(found["train-images-idx3-ubyte"])
    labels = _read_idx(found["train-labels-idx1-ubyte"]).astype(np.int64)
    return images, labels


class Batches:
    """Endless batches in one fixed shuffled order (the same in both workers)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, seed: int):
        self.images, self.labels = images, labels
        self.order = np.random.default_rng(seed + 1).permutation(len(images))
        self.k = 0

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.order) // BATCH
        idx = self.order[(self.k % n) * BATCH : (self.k % n + 1) * BATCH]
        self.k += 1
        x = self.images[idx].reshape(BATCH, 1, 28, 28).astype(np.float32)
        x *= np.float32(1.0 / 255.0)
        return x, self.labels[idx]


# --------------------------------------------------------------------------
# Workers


def _rss_now_kb() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _send(kind: str, payload: dict) -> None:
    sys.stdout.write(f"{PREFIX}{kind} {json.dumps(payload)}\n")
    sys.stdout.flush()


def torch_model(name: str):
    """The PyTorch twin of convcore.models.build(name): same layers, same
    indices (so parameter names match), in-place ReLU, dropout 0.5 in wide.
    wide-bn's twin has BatchNorm2d then ReLU where convcore has one
    BatchNorm2d(relu=True) layer (so its indices differ), dropout 0.3."""
    import torch.nn as tnn

    if name == "tutorial":
        return tnn.Sequential(
            tnn.Conv2d(1, 6, 5),
            tnn.ReLU(inplace=True),
            tnn.MaxPool2d(2),
            tnn.Conv2d(6, 12, 5),
            tnn.ReLU(inplace=True),
            tnn.MaxPool2d(2),
            tnn.Flatten(),
            tnn.Linear(12 * 4 * 4, 120),
            tnn.ReLU(inplace=True),
            tnn.Linear(120, 60),
            tnn.ReLU(inplace=True),
            tnn.Linear(60, 10),
        )
    if name == "wide":
        return tnn.Sequential(
            tnn.Conv2d(1, 32, 3, padding=1),
            tnn.ReLU(inplace=True),
            tnn.Conv2d(32, 32, 3, padding=1),
            tnn.ReLU(inplace=True),
            tnn.MaxPool2d(2),
            tnn.Conv2d(32, 64, 3, padding=1),
            tnn.ReLU(inplace=True),
            tnn.Conv2d(64, 64, 3, padding=1),
            tnn.ReLU(inplace=True),
            tnn.MaxPool2d(2),
            tnn.Flatten(),
            tnn.Linear(64 * 7 * 7, 256),
            tnn.ReLU(inplace=True),
            tnn.Dropout(0.5),
            tnn.Linear(256, 10),
        )
    if name == "wide-bn":

        def block(c, k):
            return [tnn.Conv2d(c, k, 3, padding=1, bias=False), tnn.BatchNorm2d(k), tnn.ReLU(True)]

        return tnn.Sequential(
            *block(1, 32),
            *block(32, 32),
            tnn.MaxPool2d(2),
            *block(32, 64),
            *block(64, 64),
            tnn.MaxPool2d(2),
            tnn.Flatten(),
            tnn.Linear(64 * 7 * 7, 256),
            tnn.ReLU(inplace=True),
            tnn.Dropout(0.3),
            tnn.Linear(256, 10),
        )
    raise ValueError(f"unknown model {name!r}")


def worker(
    framework: str, model_name: str, threads: int, data: str | None, seed: int, warmup: int
) -> int:
    """Run in a child process: set up, then obey 'run K' / 'exit' on stdin."""
    t0 = time.perf_counter()
    if framework == "torch":
        import torch

        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        model = torch_model(model_name)
        model.train()
        loss_fn = torch.nn.CrossEntropyLoss()
        opt = torch.optim.Adam(model.parameters(), lr=LR)
        n_params = sum(p.numel() for p in model.parameters())
        info = {
            "version": torch.__version__,
            "num_threads": torch.get_num_threads(),
            "mkldnn": bool(torch.backends.mkldnn.is_available()),
        }

        def step(x, y):
            logits = model(torch.from_numpy(x))
            loss = loss_fn(logits, torch.from_numpy(y))
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss.item()
    else:
        import convcore
        import convcore.models
        import convcore.nn
        import convcore.optim

        convcore.set_num_threads(threads)
        convcore.tune_process()  # BLAS threads and malloc, as convcore-train sets them
        model = convcore.models.build(model_name, seed=seed)
        loss_fn = convcore.nn.CrossEntropyLoss()
        opt = convcore.optim.Adam(model.parameters(), lr=LR)
        n_params = sum(p.data.size for p in model.parameters())
        bi = convcore.build_info()
        info = {
            "version": bi.get("version"),
            "num_threads": convcore.get_num_threads(),
            "isa": bi.get("isa_active"),
        }

        def step(x, y):  # the same calls as the torch worker's
            logits = model(x)
            loss = loss_fn(logits, y)
            opt.zero_grad()
            model.backward(loss_fn.backward())
            opt.step()
            return float(loss)

    images, labels = load_data(data, seed)
    batches = Batches(images, labels, seed)
    setup_s = time.perf_counter() - t0
    rss_setup = _rss_now_kb()
    losses = [step(*batches.next()) for _ in range(warmup)]
    _send(
        "ready",
        {
            "setup_s": setup_s,
            "rss_setup_kb": rss_setup,
            "n_params": int(n_params),
            "warmup_loss": losses[-1] if losses else None,
            "info": info,
            "openmp_runtime": _common.openmp_runtime(),
        },
    )
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "run":
            k, cold = int(cmd[1]), int(cmd[2]) if len(cmd) > 2 else 0
            # The chunk's first steps, untimed: after the other framework's
            # chunk the caches and this process's sleeping threads are cold,
            # which a real epoch (steps back to back) meets once, not every
            # few dozen steps.  Their time is reported apart.
            t = time.perf_counter()
            for _ in range(cold):
                step(*batches.next())
            cold_s = time.perf_counter() - t
            c0 = _cpu_s()
            t = time.perf_counter()
            losses = [step(*batches.next()) for _ in range(k)]
            dt = time.perf_counter() - t
            _send(
                "done",
                {
                    "seconds": dt,
                    "steps": k,
                    "cold_seconds": cold_s,
                    "cpu_s": _cpu_s() - c0,
                    "loss_mean": statistics.fmean(losses),
                },
            )
        elif cmd[0] == "exit":
            break
    _send(
        "exit",
        {"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "steps_total": batches.k},
    )
    return 0


class Worker:
    """Parent-side handle on one worker process."""

    def __init__(self, framework: str, model: str, args):
        self.framework, self.model = framework, model
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--_worker",
            framework,
            "--models",
            model,
            "--threads",
            str(args.threads),
            "--seed",
            str(args.seed),
            "--warmup",
            str(args.warmup),
        ]
        if args.data is not None:
            cmd += ["--data", args.data]
        self.stderr = tempfile.TemporaryFile(mode="w+")
        env = dict(os.environ)
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            bufsize=1,
            env=env,
        )

    def cpu_now(self) -> float:
        """CPU seconds the worker process (all its threads) has used so far."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return 0.0

    def running_threads(self) -> int:
        """Threads of the worker in state R (running or runnable) now."""
        n = 0
        try:
            tasks = os.listdir(f"/proc/{self.proc.pid}/task")
        except OSError:
            return 0
        for tid in tasks:
            try:
                with open(f"/proc/{self.proc.pid}/task/{tid}/stat") as f:
                    n += f.read().rpartition(")")[2].split()[0] == "R"
            except (OSError, IndexError):
                pass
        return n

    def settle(self, timeout: float = 0.25) -> float:
        """Wait until none of the worker's threads runs: an OpenMP team
        spins for a few milliseconds after its last parallel region (both
        libgomp's here), and on two cores that spin takes a core from the
        other framework's next chunk.  Returns the seconds waited."""
        t0 = time.perf_counter()
        while self.running_threads() and time.perf_counter() - t0 < timeout:
            time.sleep(0.0005)
        return time.perf_counter() - t0

    def _expect(self, kind: str) -> dict:
        for line in self.proc.stdout:
            if line.startswith(PREFIX):
                got, _, payload = line[len(PREFIX) :].partition(" ")
                if got == kind:
                    return json.loads(payload)
        self.proc.wait()
        self.stderr.seek(0)
        tail = self.stderr.read()[-3000:]
        raise RuntimeError(
            f"{self.framework} worker for {self.model} exited "
            f"(code {self.proc.returncode}) before '{kind}':\n{tail}"
        )

    def ready(self) -> dict:
        return self._expect("ready")

    def run(self, k: int, cold: int = 0) -> dict:
        self.proc.stdin.write(f"run {k} {cold}\n")
        self.proc.stdin.flush()
        return self._expect("done")

    def close(self) -> dict:
        self.proc.stdin.write("exit\n")
        self.proc.stdin.flush()
        out = self._expect("exit")
        self.proc.wait(timeout=60)
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------
# Orchestration


def bench_model(model: str, steps: int, chunks: int, args) -> dict:
    """Interleave the two frameworks' workers on one model.

    Stops early, after a whole round (one chunk each), once ``args.time_limit``
    seconds have passed and at least 2 rounds are done: a busy machine can
    make a step 10x slower, and the run should still end in minutes."""
    workers = {fw: Worker(fw, model, args) for fw in FRAMEWORKS}
    try:
        # Wait for setup one at a time so neither times its warm-up against the other's.
        ready = {fw: w.ready() for fw, w in workers.items()}
        chunk = max(1, math.ceil(steps / chunks))
        n_chunks = math.ceil(steps / chunk)
        per_step = {fw: [] for fw in FRAMEWORKS}
        others = {fw: [] for fw in FRAMEWORKS}
        idle_cpu = {fw: [] for fw in FRAMEWORKS}  # the *other* worker's CPU while fw ran
        settled = {fw: [] for fw in FRAMEWORKS}  # seconds waited for the other to stop spinning
        cold_ms = {fw: [] for fw in FRAMEWORKS}  # each chunk's untimed first step(s), ms each
        losses = {fw: [] for fw in FRAMEWORKS}
        t_start = time.perf_counter()
        done_steps = 0

        def ours() -> float:
            return sum(w.cpu_now() for w in workers.values())

        for i in range(n_chunks):
            k = min(chunk, steps - i * chunk)
            order = FRAMEWORKS if i % 2 == 0 else FRAMEWORKS[::-1]
            for fw in order:
                w = workers[fw]
                idle = workers[FRAMEWORKS[1 - FRAMEWORKS.index(fw)]]
                settled[fw].append(idle.settle())
                load = _common.CpuLoad(extra_own=ours)  # excludes both workers' CPU time
                idle0 = idle.cpu_now()
                out = w.run(k, args.chunk_warmup)
                cold_ms[fw].append(out["cold_seconds"] / max(args.chunk_warmup, 1) * 1e3)
                others[fw].append(load.others())
                idle_cpu[fw].append((idle.cpu_now() - idle0) / out["seconds"])
                per_step[fw].append(out["seconds"] / k)
                losses[fw].append(out["loss_mean"])
            done_steps += k
            print(
                f"  {model} chunk {i + 1}/{n_chunks}: "
                + "  ".join(f"{fw} {per_step[fw][-1] * 1e3:.1f} ms/step" for fw in FRAMEWORKS),
                file=sys.stderr,
                flush=True,
            )
            if (
                args.time_limit
                and i + 1 >= 2
                and i + 1 < n_chunks
                and time.perf_counter() - t_start > args.time_limit
            ):
                print(
                    f"  {model}: time limit ({args.time_limit:g} s) reached after "
                    f"{done_steps} steps each",
                    file=sys.stderr,
                )
                break
        exits = {fw: w.close() for fw, w in workers.items()}
    finally:
        for w in workers.values():
            w.kill()
    res = {
        "model": model,
        "steps": done_steps,
        "steps_asked": steps,
        "chunk": chunk,
        "frameworks": {},
    }
    for fw in FRAMEWORKS:
        med = statistics.median(per_step[fw])
        loads = [x for x in others[fw] if x is not None]
        res["frameworks"][fw] = {
            "ms_per_step": med * 1e3,
            "ms_per_step_mean": statistics.fmean(per_step[fw]) * 1e3,
            "ms_per_step_min": min(per_step[fw]) * 1e3,
            "chunk_ms_per_step": [x * 1e3 for x in per_step[fw]],
            "epoch_s": med * STEPS_PER_EPOCH,
            "images_per_s": BATCH / med,
            "peak_rss_mb": exits[fw]["maxrss_kb"] / 1024,
            "rss_setup_mb": ready[fw]["rss_setup_kb"] / 1024,
            "setup_s": ready[fw]["setup_s"],
            "n_params": ready[fw]["n_params"],
            "loss_first_chunk": losses[fw][0],
            "loss_last_chunk": losses[fw][-1],
            "others_load": statistics.fmean(loads) if loads else None,
            "idle_worker_load": statistics.fmean(idle_cpu[fw]),
            "settle_ms": statistics.fmean(settled[fw]) * 1e3,
            "cold_step_ms": statistics.median(cold_ms[fw]) if args.chunk_warmup else None,
            "info": ready[fw]["info"],
            "openmp_runtime": ready[fw]["openmp_runtime"],
        }
    c, t = res["frameworks"]["convcore"], res["frameworks"]["torch"]
    res["ratio"] = t["ms_per_step"] / c["ms_per_step"]
    res["rss_ratio"] = c["peak_rss_mb"] / t["peak_rss_mb"]
    res["params_match"] = c["n_params"] == t["n_params"]
    res["suspect"] = any((f["others_load"] or 0.0) > _common.OTHERS_LIMIT for f in (c, t))
    return res


HEADER = [
    "model",
    "framework",
    "epoch s",
    "ms/step",
    "images/s",
    "ratio",
    "peak RSS MB",
    "RSS setup MB",
    "loss first→last",
    "others",
]


def table_rows(results: list[dict]) -> list[list[str]]:
    rows = []
    for r in results:
        for fw in FRAMEWORKS:
            f = r["frameworks"][fw]
            rows.append(
                [
                    r["model"],
                    fw,
                    f"{f['epoch_s']:.1f}",
                    f"{f['ms_per_step']:.1f}",
                    f"{f['images_per_s']:.0f}",
                    (f"{r['ratio']:.2f}" + ("?" if r["suspect"] else ""))
                    if fw == "convcore"
                    else "",
                    f"{f['peak_rss_mb']:.0f}",
                    f"{f['rss_setup_mb']:.0f}",
                    f"{f['loss_first_chunk']:.3f}→{f['loss_last_chunk']:.3f}",
                    _common.fmt(f["others_load"]),
                ]
            )
    return rows


def header_lines(meta: dict) -> list[str]:
    m = meta["machine"]
    lines = [
        f"date: {m['date']}   command: {m['command']}",
        f"machine: {m['cpu']} ({m['cpu_family']}), {m['cores']} cores, host {m['host']}",
        f"threads: {meta['threads']}   batch {BATCH}, Adam lr {LR:g}, "
        f"{'data ' + meta['data'] if meta['data'] else 'random data of Fashion-MNIST shape'}   "
        f"git {meta['git']}",
    ]
    for r in meta.get("versions", []):
        lines.append(r)
    lines += [
        f"FMA peak at start: {_common.fma_line(meta['fma_before'])}",
        f"FMA peak at end:   {_common.fma_line(meta['fma_after'])}",
    ]
    if meta["contended"]:
        lines.append(
            "CONTENDED RUN: "
            + "; ".join(meta["contended"])
            + " -- absolute times are high; ratios compare chunks run side by side"
        )
    else:
        lines.append("FMA checks agree and nothing else ran: no sign of contention")
    lines.append(
        f"epoch s = median ms/step over chunks x {STEPS_PER_EPOCH} steps; "
        f"wall time {meta['wall_s']:.0f} s; ratio? = other processes used more than "
        f"{_common.OTHERS_LIMIT} cores during that model's chunks"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--models",
        default="tutorial,wide",
        help="comma-separated: tutorial, wide, wide-bn (default tutorial,wide)",
    )
    ap.add_argument("--threads", type=int, default=2, help="threads for both (default 2)")
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed steps per framework and model (default: tutorial "
        f"{DEFAULT_STEPS['tutorial']}, wide {DEFAULT_STEPS['wide']}); "
        f"{STEPS_PER_EPOCH} = one full epoch",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"short run (tutorial {QUICK_STEPS['tutorial']}, wide {QUICK_STEPS['wide']} steps)",
    )
    ap.add_argument(
        "--chunks",
        type=int,
        default=6,
        help="chunks per framework; the two alternate chunk by chunk (default 6)",
    )
    ap.add_argument(
        "--time-limit",
        type=float,
        default=90.0,
        help="seconds per model after which no new round of chunks starts "
        "(default 90; 0 = none; at least 2 rounds always run)",
    )
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    ap.add_argument(
        "--chunk-warmup",
        type=int,
        default=1,
        help="untimed steps at the start of every chunk, after the other framework's "
        "(default 1; their median time is reported as cold_step_ms)",
    )
    ap.add_argument(
        "--data",
        nargs="?",
        const=str(DATA_DIR),
        default=None,
        help=f"train on the real Fashion-MNIST files (folder, default {DATA_DIR}) "
        "instead of random data of the same shape",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="write results as JSON")
    ap.add_argument("--markdown", type=Path, default=None, help="write the table as markdown")
    ap.add_argument("--_worker", choices=FRAMEWORKS, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in MODELS:
            ap.error(f"--models: unknown model {m!r}; choose from {', '.join(MODELS)}")
    if args._worker:
        return worker(args._worker, models[0], args.threads, args.data, args.seed, args.warmup)

    # Turn SIGTERM into an exception so the workers are reaped (bench_model's finally).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t_start = time.perf_counter()
    meta = {
        "machine": _common.machine(),
        "threads": args.threads,
        "data": args.data,
        "git": _common.git_describe(),
        "chunks": args.chunks,
        "warmup": args.warmup,
        "chunk_warmup": args.chunk_warmup,
    }
    meta["fma_before"] = _common.fma_check(args.threads, quick=args.quick)
    run_load = _common.CpuLoad()
    results, failures = [], []
    for model in models:
        steps = args.steps or (QUICK_STEPS if args.quick else DEFAULT_STEPS)[model]
        print(f"{model}: {steps} steps per framework in {args.chunks} chunks", file=sys.stderr)
        try:
            results.append(bench_model(model, steps, args.chunks, args))
        except RuntimeError as e:
            failures.append(f"{model}: {e}")
            print(f"FAILED {model}: {e}", file=sys.stderr)
    meta["others_load"] = run_load.others()  # None-safe: workers' time is in children_*
    meta["fma_after"] = _common.fma_check(args.threads, quick=args.quick)
    meta["contended"] = _common.contention(
        meta["fma_before"], meta["fma_after"], meta["others_load"]
    )
    meta["wall_s"] = time.perf_counter() - t_start
    if results:
        fws = results[0]["frameworks"]
        cinfo, tinfo = fws["convcore"]["info"], fws["torch"]["info"]
        meta["versions"] = [
            f"convcore {cinfo.get('version')} ISA {cinfo.get('isa')} "
            f"(threads {cinfo.get('num_threads')}, OpenMP {fws['convcore']['openmp_runtime']})   "
            f"torch {tinfo.get('version')} (threads {tinfo.get('num_threads')}, "
            f"OpenMP {fws['torch']['openmp_runtime']})"
        ]

    head = header_lines(meta)
    table = _common.markdown_table(HEADER, table_rows(results), right=set(range(2, 10)))
    notes = []
    for r in results:
        c, t = r["frameworks"]["convcore"], r["frameworks"]["torch"]
        notes.append(
            f"{r['model']}: convcore {r['ratio']:.2f}x PyTorch's speed "
            f"(epoch {c['epoch_s']:.1f} s vs {t['epoch_s']:.1f} s), peak RSS "
            f"{c['peak_rss_mb']:.0f} MB vs {t['peak_rss_mb']:.0f} MB "
            f"({r['rss_ratio']:.2f}x); {r['steps']} steps each in chunks of {r['chunk']}"
            + (
                f" (stopped by --time-limit; {r['steps_asked']} asked)"
                if r["steps"] < r["steps_asked"]
                else ""
            )
        )
        if c["cold_step_ms"] is not None:
            notes.append(
                f"{r['model']}: each chunk began once the other worker's threads slept "
                f"(waited {c['settle_ms']:.1f} / {t['settle_ms']:.1f} ms on average) and "
                f"with untimed steps (median cold step: convcore {c['cold_step_ms']:.1f} ms, "
                f"torch {t['cold_step_ms']:.1f} ms)"
            )
        if not r["params_match"]:
            notes.append(
                f"{r['model']}: PARAMETER COUNTS DIFFER: convcore {c['n_params']}, "
                f"torch {t['n_params']}"
            )
    print("\n".join(head))
    print()
    print(table)
    print()
    print("\n".join(notes + failures))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"meta": meta, "results": results, "notes": notes, "failures": failures}, indent=1
            )
        )
    if args.markdown:
        md = ["```", *head, "```", "", table, "", *(f"- {s}" for s in notes + failures)]
        args.markdown.write_text("\n".join(md) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""convcore with and without PyTorch in the process (two OpenMP runtimes).

PyTorch's CPU wheel bundles its own libgomp.so.1 under the same soname as
the system libgomp that convcore links: only one is loaded, whichever
package is imported first, and the two libraries then share its thread pool
and thread setting.  This script times the same convcore calls in fresh
processes that import (a) convcore alone, (b) convcore then torch, (c) torch
then convcore, each with OpenMP's default and with OMP_WAIT_POLICY=PASSIVE,
and reports the median per call, the fastest call, and which libgomp each
process loaded.

    .venv/bin/python bench/omp_runtimes.py                # 2 threads
    .venv/bin/python bench/omp_runtimes.py --threads 1 --rounds 60

See bench/README.md ("convcore next to PyTorch") for what to do with it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CONFIGS = {
    "convcore alone": "import convcore",
    "convcore, then torch": "import convcore\nimport torch",
    "torch, then convcore": "import torch\nimport convcore",
}

WORKER = r"""
{imports}
import json, statistics, sys, time
import numpy as np
threads, rounds = {threads}, {rounds}
if "torch" in sys.modules:
    sys.modules["torch"].set_num_threads(threads)
convcore.set_num_threads(threads)
rng = np.random.default_rng(0)
x1 = rng.standard_normal((100, 1, 28, 28), dtype=np.float32)
w1 = rng.standard_normal((32, 1, 3, 3), dtype=np.float32)
x2 = rng.standard_normal((100, 32, 28, 28), dtype=np.float32)
w2 = rng.standard_normal((32, 32, 3, 3), dtype=np.float32)
x3 = rng.standard_normal((100, 6, 12, 12), dtype=np.float32)
w3 = rng.standard_normal((12, 6, 5, 5), dtype=np.float32)
p1 = rng.standard_normal((100, 64, 14, 14), dtype=np.float32)
p2 = rng.standard_normal((100, 12, 8, 8), dtype=np.float32)
cases = {{
    "conv fwd 1->32 3x3 28x28": lambda: convcore.conv2d(x1, w1, padding=1),
    "conv fwd 32->32 3x3 28x28": lambda: convcore.conv2d(x2, w2, padding=1),
    "conv fwd 6->12 5x5 12x12": lambda: convcore.conv2d(x3, w3),
    "maxpool 100x64x14x14": lambda: convcore.max_pool2d(p1, 2, return_indices=True),
    "maxpool 100x12x8x8": lambda: convcore.max_pool2d(p2, 2, return_indices=True),
}}
out = {{}}
for name, f in cases.items():
    for _ in range(3):
        f()
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    out[name] = (statistics.median(ts), min(ts))
gomp = sorted({{l.split()[-1] for l in open("/proc/self/maps") if "libgomp" in l}})
print(json.dumps({{"times": out, "libgomp": gomp}}))
"""


def run(config: str, threads: int, rounds: int, passive: bool) -> dict:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    src = WORKER.format(imports=CONFIGS[config], threads=threads, rounds=rounds)
    r = subprocess.run(
        [sys.executable, "-c", src], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=40, help="timed calls per case (default 40)")
    ap.add_argument("--repeats", type=int, default=2, help="processes per config (interleaved)")
    args = ap.parse_args(argv)

    results: dict[tuple[str, bool], list[dict]] = {}
    for _ in range(args.repeats):  # interleave configs, so a busy neighbour hits all alike
        for passive in (False, True):
            for config in CONFIGS:
                results.setdefault((config, passive), []).append(
                    run(config, args.threads, args.rounds, passive)
                )
    cases = list(next(iter(results.values()))[0]["times"])
    print(f"threads {args.threads}, {args.rounds} calls per case, {args.repeats} processes each")
    print("median ms per call (fastest call in brackets), best process of each config\n")
    cols = [(c, p) for p in (False, True) for c in CONFIGS]
    head = ["case"] + [f"{c}{' PASSIVE' if p else ''}" for c, p in cols]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for case in cases:
        row = [case]
        for key in cols:
            med = min(r["times"][case][0] for r in results[key])
            fast = min(r["times"][case][1] for r in results[key])
            row.append(f"{med * 1e3:.3f} ({fast * 1e3:.3f})")
        print("| " + " | ".join(row) + " |")
    print()
    for key in cols[: len(CONFIGS)]:
        print(f"{key[0]}: libgomp loaded: {', '.join(results[key][0]['libgomp'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

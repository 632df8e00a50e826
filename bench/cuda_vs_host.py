"""convcore on the GPU against convcore on the host, op by op, on the shared
problem list (the two models' layers and the edge cases of
convcore.problems), then one training step of each model.

* convolutions (output, grad input, grad weight, grad bias): the largest
  difference, relative to the largest magnitude, and as a fraction of the
  float32 bound the tests use (20 * sqrt(terms + 1) * u); both sides sum in
  another order, so they agree to rounding, not bitwise;
* max pooling (output, indices, grad input): bitwise;
* a training step's forward and backward (loss, every parameter gradient) of
  each model from the same weights.  (Adam after it is not compared here: it
  magnifies rounding differences in near-zero gradients into steps of +-lr;
  the optimiser kernels are compared bitwise on equal inputs by
  tests/test_training_device.py.)

    .venv/bin/python bench/cuda_vs_host.py --json host-vs-device.json

No PyTorch needed.  Exit status: 0 when everything agrees, 1 when something
does not (listed), 2 without a usable GPU (the reason is printed).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import convcore
import convcore.cuda as cc
import numpy as np
from convcore import models, nn
from convcore import problems as P

U32 = 2.0**-24


def _conv_rows(name: str, rng) -> list[dict]:
    p = P.parse(name)
    x = rng.standard_normal(p.input_shape, dtype=np.float32)
    w = rng.standard_normal(p.weight_shape, dtype=np.float32)
    b = rng.standard_normal(p.K, dtype=np.float32)
    kw = dict(stride=p.stride, padding=p.padding, dilation=p.dilation, groups=p.groups)
    y = convcore.conv2d(x, w, b, **kw)
    go = rng.standard_normal(y.shape, dtype=np.float32)
    host = (y, *convcore.conv2d_backward(go, x, w, **kw))
    d = cc.to_device
    yd = convcore.conv2d(d(x), d(w), d(b), **kw)
    dev = (yd, *convcore.conv2d_backward(d(go), d(x), d(w), **kw))
    Cg, R, S = p.weight_shape[1:]
    terms = (Cg * R * S, p.K // p.groups * R * S, p.N * math.prod(y.shape[2:]))
    rows = []
    for out, h, g, n in zip(
        ("output", "grad_input", "grad_weight", "grad_bias"),
        host,
        dev,
        (terms[0], terms[1], terms[2], terms[2]),
    ):
        got = g.numpy().astype(np.float64)
        scale = max(1.0, float(np.abs(h).max(initial=0.0)))
        err = float(np.abs(got - h).max(initial=0.0))
        bound = 20 * math.sqrt(n + 1) * U32 * scale
        rows.append(
            dict(
                problem=name,
                op="conv2d",
                output=out,
                max_abs_diff=err,
                scale=scale,
                diff_over_bound=err / bound,
                ok=bool(err <= bound),
            )
        )
    return rows


def _pool_rows(name: str, rng) -> list[dict]:
    p = P.parse(name)
    kw = p.kwargs()
    x = rng.standard_normal(p.input_shape, dtype=np.float32)
    y, idx = convcore.max_pool2d(x, return_indices=True, **kw)
    go = rng.standard_normal(y.shape, dtype=np.float32)
    gi = convcore.max_pool2d_backward(go, idx, x.shape)
    yd, idxd = convcore.max_pool2d(cc.to_device(x), return_indices=True, **kw)
    gid = convcore.max_pool2d_backward(cc.to_device(go), idxd, x.shape)
    rows = []
    for out, h, g in (("output", y, yd), ("indices", idx, idxd), ("grad_input", gi, gid)):
        same = np.array_equal(g.numpy(), h)
        rows.append(dict(problem=name, op="max_pool2d", output=out, bitwise=same, ok=same))
    return rows


def _host(a) -> np.ndarray:
    return a.numpy() if isinstance(a, cc.DeviceArray) else np.asarray(a)


def _train_rows(name: str) -> list[dict]:
    rng = np.random.default_rng(1)
    x = rng.random((100, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 100)
    host, dev = models.build(name, seed=0), models.build(name, seed=0).to("cuda")
    host.eval(), dev.eval()  # no dropout: both sides see the same network
    rows = []
    for model, xin in ((host, x), (dev, cc.to_device(x))):
        loss_fn = nn.CrossEntropyLoss()
        loss = loss_fn(model(xin), y)
        model.zero_grad()
        model.backward(loss_fn.backward())
        grads = [_host(p.grad) for p in model.parameters()]
        rows.append((loss, grads))
    (lh, gh), (ld, gd) = rows
    grad_rel = max(
        float(np.abs(a - b).max(initial=0.0)) / max(1e-30, float(np.abs(a).max(initial=0.0)))
        for a, b in zip(gh, gd)
    )
    loss_rel = abs(ld - lh) / abs(lh)
    return [
        dict(
            problem=f"train_step_{name}",
            op="train",
            output="loss",
            rel_diff=loss_rel,
            ok=bool(loss_rel <= 1e-5),
        ),
        dict(
            problem=f"train_step_{name}",
            op="train",
            output="grads",
            max_rel_diff=grad_rel,
            ok=bool(grad_rel <= 1e-4),
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/cuda_vs_host.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, default=None, help="write the rows as JSON")
    args = ap.parse_args(argv)
    if not cc.is_available():
        print(f"bench/cuda_vs_host.py: no CUDA device: {cc.unavailable_reason()}", file=sys.stderr)
        return 2
    print(f"GPU {cc.device_name(0)} against the host ({convcore.build_info()['isa_active']})")
    rng = np.random.default_rng(0)
    names = list(dict.fromkeys(P.TUTORIAL_LAYERS + P.WIDE_LAYERS + P.EDGE_CASES))
    rows = []
    for name in names:
        rows += _pool_rows(name, rng) if name.startswith("pool_") else _conv_rows(name, rng)
    for name in models.NAMES:
        rows += _train_rows(name)
    for r in rows:
        detail = {k: v for k, v in r.items() if k not in ("problem", "op", "output", "ok")}
        text = "  ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in detail.items()
        )
        print(f"  {'ok  ' if r['ok'] else 'DIFF'} {r['problem']:<34} {r['output']:<18} {text}")
    bad = [r for r in rows if not r["ok"]]
    print(f"{len(rows) - len(bad)} of {len(rows)} agree")
    if args.json:
        args.json.write_text(
            json.dumps({"device": cc.device_name(0), "rows": rows}, indent=1) + "\n"
        )
        print(f"wrote {args.json}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

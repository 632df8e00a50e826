"""Evaluate a checkpoint on the Fashion-MNIST test set.

Usage::

    python -m convcore.evaluate runs/tutorial/checkpoint-epoch010.npz

prints the test loss and accuracy and a per-class table (accuracy, i.e.
recall, and precision) with the most frequent confusion of each class.
``--json`` prints the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from . import nn
from ._backend import backend_of
from .data import CLASS_NAMES, MiniBatches

__all__ = ["confusion_matrix", "evaluate_model", "main", "per_class_table"]


def evaluate_model(
    model, images, labels, *, batch_size: int = 500, normalize: bool = False, tta: bool = False
) -> dict:
    """Loss and accuracy of ``model`` (put in eval mode) on a data set.

    The model may be on the GPU (``model.to('cuda')``): each batch is then
    copied there.  With ``tta`` (test-time augmentation) each image is
    classified from the mean of its logits and those of its mirror image,
    and the loss is that of the mean logits.

    Returns:
        dict with ``loss`` (mean cross-entropy), ``accuracy`` (fraction) and
        ``predictions`` (int64 array of predicted labels).
    """
    params = model.parameters()
    where = params[0].data if params else None
    backend = backend_of(where)
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total = 0.0
    preds = np.empty(len(labels), dtype=np.int64)
    start = 0
    for x, y in MiniBatches(images, labels, batch_size, shuffle=False, normalize=normalize):
        xh = x
        if where is not None:
            x = backend.from_host(x, like=where)
        if tta:
            logits = backend.to_numpy(model(x)).copy()  # the next call may reuse its output
            mirror = np.ascontiguousarray(xh[..., ::-1])
            if where is not None:
                mirror = backend.from_host(mirror, like=where)
            logits += backend.to_numpy(model(mirror))
            logits *= np.float32(0.5)
            total += loss_fn(logits, y)
        else:
            total += loss_fn(model(x), y)
        preds[start : start + len(y)] = loss_fn.predictions()
        start += len(y)
    n = max(len(labels), 1)
    return {
        "loss": total / n,
        "accuracy": float(np.mean(preds == np.asarray(labels))) if len(labels) else 0.0,
        "predictions": preds,
    }


def confusion_matrix(labels, predictions, num_classes: int = 10) -> np.ndarray:
    """(true, predicted) counts, int64 (num_classes, num_classes)."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels, np.int64), np.asarray(predictions, np.int64)), 1)
    return cm


def per_class_table(cm: np.ndarray, names=CLASS_NAMES) -> str:
    """Text table: per class, count, accuracy (recall), precision and the
    class it is most often mistaken for."""
    lines = [f"{'class':<12} {'images':>6} {'accuracy':>9} {'precision':>9}  most confused with"]
    for k, name in enumerate(names):
        n = cm[k].sum()
        recall = cm[k, k] / n if n else 0.0
        predicted = cm[:, k].sum()
        precision = cm[k, k] / predicted if predicted else 0.0
        off = cm[k].copy()
        off[k] = -1
        j = int(off.argmax())
        conf = f"{names[j]} ({cm[k, j]})" if cm[k, j] > 0 else "-"
        lines.append(f"{name:<12} {n:>6} {100 * recall:>8.2f}% {100 * precision:>8.2f}%  {conf}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m convcore.evaluate",
        description="Test accuracy and a per-class table for a convcore checkpoint.",
    )
    ap.add_argument("checkpoint", help="a checkpoint-epochNNN.npz written by convcore-train")
    ap.add_argument("--data", metavar="DIR", help="Fashion-MNIST folder (default: search path)")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--threads", type=int, help="convcore threads (default: OpenMP's)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    args = ap.parse_args(argv)

    from . import checkpoint, cuda
    from ._cli import EXIT_BAD_FILE, EXIT_FAILED, EXIT_USAGE, error
    from ._process import tune_process
    from ._runtime import set_num_threads
    from .data import DataError, load_fashion_mnist

    tune_process()
    if args.threads is not None:
        set_num_threads(args.threads)
    try:  # the whole file is validated before the data set loads
        ckpt = checkpoint.load(args.checkpoint)
    except checkpoint.CheckpointError as e:
        error(e)
        return EXIT_BAD_FILE
    try:
        _, _, xte, yte = load_fashion_mnist(args.data)
    except DataError as e:
        error(e)
        return EXIT_BAD_FILE
    model = ckpt.build_model()
    try:
        model.to(args.device)
    except (ValueError, RuntimeError) as e:
        error(f"--device {args.device}: {e}")
        return EXIT_USAGE
    try:
        res = evaluate_model(
            model,
            xte,
            yte,
            batch_size=args.batch_size,
            normalize=ckpt.config.get("normalize", False),
            tta=ckpt.config.get("tta", False),
        )
    except cuda.CudaError as e:  # out of GPU memory, a failed kernel...
        error(e)
        return EXIT_FAILED
    cm = confusion_matrix(yte, res["predictions"])
    if args.json:
        out = {
            "checkpoint": str(args.checkpoint),
            "model": ckpt.config["model"],
            "epoch": ckpt.epoch,
            "test_loss": res["loss"],
            "test_accuracy": res["accuracy"],
            "per_class_accuracy": {
                n: float(cm[k, k] / max(cm[k].sum(), 1)) for k, n in enumerate(CLASS_NAMES)
            },
            "confusion_matrix": cm.tolist(),
        }
        print(json.dumps(out, indent=2))
        return 0
    print(f"checkpoint {args.checkpoint}: model {ckpt.config['model']}, epoch {ckpt.epoch}")
    print(
        f"test loss {res['loss']:.4f}  test accuracy {100 * res['accuracy']:.2f}% "
        f"({int(np.trace(cm))}/{len(yte)})"
    )
    print()
    print(per_class_table(cm))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Classify 28x28 greyscale images with a checkpoint.

Usage::

    python -m convcore.predict runs/tutorial/checkpoint-epoch010.npz shoe.png shirt.npy

Images: PNG/JPEG/... through Pillow (converted to greyscale), or ``.npy``
arrays of shape (28, 28), (1, 28, 28) or (N, 28, 28) (uint8 in [0, 255], or
floats in [0, 1]).  Fashion-MNIST pictures are light objects on a black
background: ``--invert`` turns a dark-on-white picture into that form, and
``--resize`` scales other sizes to 28x28.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .data import CLASS_NAMES, to_float

__all__ = ["load_images", "main", "predict"]


def load_images(path, *, invert: bool = False, resize: bool = False) -> np.ndarray:
    """Read one image file (or a stack from ``.npy``) -> uint8 (N, 28, 28).

    Raises:
        ValueError: an unsupported shape, size or value range.
        ImportError: a picture file without Pillow installed.
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        a = np.load(path, allow_pickle=False)
        if a.ndim == 2:
            a = a[None]
        elif a.ndim == 4 and a.shape[1] == 1:
            a = a[:, 0]
        if a.ndim != 3 or a.shape[1:] != (28, 28):
            raise ValueError(
                f"{path}: expected an array of shape (28, 28), (1, 28, 28) or (N, 28, 28), "
                f"got {a.shape}"
            )
        if np.issubdtype(a.dtype, np.floating):
            if a.size and (a.min() < 0 or a.max() > 1):
                raise ValueError(f"{path}: float images must be in [0, 1]")
            a = np.rint(a * 255)
        elif a.size and (a.min() < 0 or a.max() > 255):
            raise ValueError(f"{path}: integer images must be in [0, 255]")
        a = a.astype(np.uint8)
    else:
        try:
            from PIL import Image
        except ImportError:
            raise ImportError(
                f"{path}: reading pictures needs Pillow (pip install 'convcore[images]'); "
                ".npy arrays work without it"
            ) from None
        with Image.open(path) as im:
            im = im.convert("L")
            if im.size != (28, 28):
                if not resize:
                    raise ValueError(
                        f"{path}: image is {im.size[0]}x{im.size[1]}, expected 28x28 "
                        "(use --resize to scale it)"
                    )
                im = im.resize((28, 28), getattr(Image, "Resampling", Image).LANCZOS)
            a = np.asarray(im, dtype=np.uint8)[None]
    if invert:
        a = 255 - a
    return a


def predict(model, images: np.ndarray, normalize: bool = False) -> np.ndarray:
    """Class probabilities (N, 10) of uint8 images (N, 28, 28) (model in eval mode)."""
    model.eval()
    logits = model(to_float(images, normalize)).astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m convcore.predict",
        description="Classify 28x28 greyscale images with a convcore checkpoint.",
    )
    ap.add_argument("checkpoint", help="a checkpoint-epochNNN.npz written by convcore-train")
    ap.add_argument("images", nargs="+", metavar="IMAGE", help="PNG/JPEG (Pillow) or .npy files")
    ap.add_argument("--top", type=int, default=3, help="classes to show per image (default 3)")
    ap.add_argument(
        "--invert",
        action="store_true",
        help="invert grey levels (for dark objects on a light background)",
    )
    ap.add_argument("--resize", action="store_true", help="scale images that are not 28x28")
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args(argv)

    from . import checkpoint
    from ._process import tune_process

    tune_process()
    try:
        ckpt = checkpoint.load(args.checkpoint)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model = ckpt.build_model()
    results = []
    status = 0
    for path in args.images:
        try:
            imgs = load_images(path, invert=args.invert, resize=args.resize)
        except (OSError, ValueError, ImportError) as e:
            print(f"error: {e}", file=sys.stderr)
            status = 1
            continue
        probs = predict(model, imgs, ckpt.config.get("normalize", False))
        for k, (img, p) in enumerate(zip(imgs, probs)):
            name = path if len(imgs) == 1 else f"{path}[{k}]"
            order = np.argsort(-p)[: max(1, args.top)]
            top = [(CLASS_NAMES[j], float(p[j])) for j in order]
            results.append(
                {
                    "image": name,
                    "class": top[0][0],
                    "label": int(order[0]),
                    "probability": top[0][1],
                    "top": top,
                }
            )
            if not args.json:
                rest = ", ".join(f"{c} {100 * q:.1f}%" for c, q in top[1:])
                print(
                    f"{name}: {top[0][0]} {100 * top[0][1]:.1f}%" + (f"  ({rest})" if rest else "")
                )
                border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
                if not args.invert and border.mean() > 128:
                    print(
                        "  note: light background; Fashion-MNIST images are light objects on "
                        "black, so --invert may help",
                        file=sys.stderr,
                    )
    if args.json:
        print(json.dumps(results, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())

"""Classify 28x28 greyscale images with a checkpoint.

Usage::

    python -m convcore.predict runs/tutorial/checkpoint-epoch010.npz shoe.png shirt.npy

Images: PNG/JPEG/... through Pillow (converted to greyscale), or ``.npy``
arrays of shape (28, 28), (1, 28, 28), (N, 28, 28) or (N, 1, 28, 28)
(integers in [0, 255], or floats in [0, 1]; ``--clip`` clips other values
into the range).  Every file is checked before any image is classified; a
bad one gives ``error: <file>: ...`` and exit status 1.  Fashion-MNIST
pictures are light objects on a black background: ``--invert`` turns a
dark-on-white picture into that form, and ``--resize`` scales other sizes
to 28x28.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from .data import CLASS_NAMES, to_float

__all__ = ["ImageError", "load_images", "main", "predict"]


class ImageError(ValueError):
    """An image file that cannot be classified; the message is one line,
    ``<path>: <what is wrong>; <what was expected>``."""


_SHAPES = "shape (28, 28), (1, 28, 28), (N, 28, 28) or (N, 1, 28, 28)"
_NPY_MAGIC = b"\x93NUMPY"


def load_images(
    path, *, invert: bool = False, resize: bool = False, clip: bool = False
) -> np.ndarray:
    """Read one image file (or a stack from ``.npy``) -> uint8 (N, 28, 28).

    ``.npy`` arrays must hold real numbers: integers in [0, 255] or floats in
    [0, 1].  Complex, boolean, text, date and structured arrays are refused,
    and so are NaN and infinite pixels and values outside the range, unless
    ``clip``: then values (infinities included) are clipped into the range;
    NaN is refused even then, having no value to clip to.

    Raises:
        ImageError (a ValueError): the file is missing, unreadable, not an
            image, or has an unsupported type, shape, size or value.
        ImportError: a picture file without Pillow installed.
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        a = _read_npy(path)
        return _to_uint8(a, path, clip=clip, invert=invert)
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(
            f"{path}: reading pictures needs Pillow (pip install 'convcore[images]'); "
            ".npy arrays work without it"
        ) from None
    expected = "expected a PNG, JPEG or other picture Pillow reads, or a .npy array"
    try:
        with Image.open(path) as im:
            if im.size != (28, 28) and not resize:
                raise ImageError(
                    f"{path}: image is {im.size[0]}x{im.size[1]}; expected 28x28 "
                    "(use --resize to scale it)"
                )
            im = im.convert("L")
            if im.size != (28, 28):
                im = im.resize((28, 28), getattr(Image, "Resampling", Image).LANCZOS)
            a = np.asarray(im, dtype=np.uint8)[None]
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: refused as a possible decompression bomb ({e})") from None
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file; {expected}") from None
    except OSError as e:  # not an image, truncated, unreadable (UnidentifiedImageError)
        raise ImageError(f"{path}: cannot read the picture ({e}); {expected}") from None
    except (ValueError, SyntaxError, EOFError) as e:
        if isinstance(e, ImageError):
            raise
        raise ImageError(f"{path}: damaged picture ({e}); {expected}") from None
    return 255 - a if invert else a


def _read_npy(path: Path) -> np.ndarray:
    """The array of a .npy file whose header and length were checked first
    (so a damaged header never makes numpy allocate or unpickle)."""
    fmt = np.lib.format
    expected = f"expected a .npy array of {_SHAPES}"
    try:
        with open(path, "rb") as f:
            head = f.read(len(_NPY_MAGIC))
            if not head:
                raise ImageError(f"{path}: the file is empty (0 bytes); {expected}")
            if head != _NPY_MAGIC:
                raise ImageError(
                    f"{path}: not a .npy file (it starts with the bytes {head.hex(' ')}); "
                    f"{expected}"
                )
            f.seek(0)
            try:
                version = fmt.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = fmt.read_array_header_1_0(f)
                else:
                    shape, fortran, dtype = fmt.read_array_header_2_0(f)
            except (ValueError, EOFError, SyntaxError, TypeError) as e:
                raise ImageError(f"{path}: damaged .npy header ({e}); {expected}") from None
            if dtype.hasobject:
                raise ImageError(
                    f"{path}: the array holds Python objects (dtype {dtype}); expected "
                    "uint8 (or another integer) in [0, 255], or floats in [0, 1]"
                )
            _check_shape(shape, path)
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
            need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if size - offset != need:
                what = "truncated" if size - offset < need else "longer than its header says"
                raise ImageError(
                    f"{path}: the file is {what}: {size - offset} bytes of data, expected "
                    f"{need} for {dtype} {tuple(shape)}"
                )
            a = np.fromfile(f, dtype=dtype, count=int(np.prod(shape, dtype=np.int64)))
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file; {expected}") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot read the file ({e.strerror or e}); {expected}") from None
    return a.reshape(shape, order="F" if fortran else "C")


def _check_shape(shape, path) -> None:
    ok = (
        tuple(shape[-2:]) == (28, 28)
        and len(shape) in (2, 3, 4)
        and (len(shape) != 4 or shape[1] == 1)
    )
    if not ok:
        raise ImageError(f"{path}: the array has shape {tuple(shape)}; expected {_SHAPES}")


def _to_uint8(a: np.ndarray, path, *, clip: bool, invert: bool) -> np.ndarray:
    """A checked real array of images -> uint8 (N, 28, 28)."""
    _check_shape(a.shape, path)
    a = a.reshape(-1, 28, 28)
    if len(a) == 0:
        raise ImageError(f"{path}: the array holds no images (shape {a.shape}); expected {_SHAPES}")
    kind = a.dtype.kind
    if kind not in "iuf":
        what = {
            "c": "complex numbers",
            "b": "booleans",
            "U": "text",
            "S": "bytes",
            "M": "dates",
            "m": "time intervals",
            "V": "structured records",
        }.get(kind, "values that are not real numbers")
        raise ImageError(
            f"{path}: the array holds {what} (dtype {a.dtype}); expected uint8 (or another "
            "integer) in [0, 255], or floats in [0, 1]"
        )
    if kind == "f":
        if a.size and np.isnan(a).any():
            raise ImageError(
                f"{path}: {int(np.isnan(a).sum())} pixel(s) are NaN; expected floats in [0, 1]"
            )
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if not clip and (lo < 0 or hi > 1):
            raise ImageError(
                f"{path}: float pixels range over [{lo:g}, {hi:g}]; expected [0, 1] "
                "(NaN and infinity refused; --clip clips into the range)"
            )
        a = np.rint(np.clip(a.astype(np.float64), 0.0, 1.0) * 255)
    else:
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if not clip and (lo < 0 or hi > 255):
            raise ImageError(
                f"{path}: integer pixels range over [{lo}, {hi}]; expected [0, 255] "
                "(--clip clips into the range)"
            )
        a = np.clip(a, 0, 255) if (lo < 0 or hi > 255) else a
    a = a.astype(np.uint8)
    return 255 - a if invert else a


def predict(model, images: np.ndarray, normalize: bool = False, tta: bool = False) -> np.ndarray:
    """Class probabilities (N, 10) of uint8 images (N, 28, 28) (model in eval mode);
    with ``tta``, from the mean logits of each image and its mirror image."""
    model.eval()
    x = to_float(images, normalize)
    logits = np.array(model(x), dtype=np.float32)
    if tta:
        logits += model(np.ascontiguousarray(x[..., ::-1]))
        logits *= np.float32(0.5)
    logits = logits.astype(np.float64)
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
    ap.add_argument(
        "--clip",
        action="store_true",
        help="clip .npy values outside [0, 255] (integers) or [0, 1] (floats) into the "
        "range instead of refusing the file (NaN is refused even then)",
    )
    args = ap.parse_args(argv)

    from . import checkpoint
    from ._cli import EXIT_BAD_FILE, error
    from ._process import tune_process

    tune_process()
    try:
        ckpt = checkpoint.load(args.checkpoint)
    except checkpoint.CheckpointError as e:
        error(e)
        return EXIT_BAD_FILE
    # Every image is read and checked before any is classified.
    loaded = []
    for path in args.images:
        try:
            loaded.append(
                (path, load_images(path, invert=args.invert, resize=args.resize, clip=args.clip))
            )
        except (ImageError, ImportError) as e:
            error(e)
    if len(loaded) != len(args.images):
        return EXIT_BAD_FILE
    model = ckpt.build_model()
    results = []
    for path, imgs in loaded:
        probs = predict(
            model, imgs, ckpt.config.get("normalize", False), ckpt.config.get("tta", False)
        )
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
    return 0


if __name__ == "__main__":
    sys.exit(main())

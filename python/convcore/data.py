"""Fashion-MNIST: find, verify (and if needed download) the official files.

The data set is the four idx files published by Zalando Research
(https://github.com/zalandoresearch/fashion-mnist): 60,000 training and
10,000 test images of 28x28 grey pixels (uint8, white object on black), and
their labels 0-9 (:data:`CLASS_NAMES`).

Where the files are looked for, in order (each file may be ``NAME.gz`` or
the decompressed ``NAME``):

1. ``root`` when given (and nowhere else);
2. ``$CONVCORE_DATA``;
3. the user cache, ``$XDG_CACHE_HOME/convcore/fashion-mnist`` (default
   ``~/.cache/convcore/fashion-mnist``);
4. ``/usr/share/datasets/fashion-mnist``, where Debian's and Ubuntu's package
   ``dataset-fashion-mnist`` installs them.

If no location has all four files, the missing ones are downloaded from the
official mirrors into ``root``, else ``$CONVCORE_DATA``, else the cache
(temporary file, verified, then renamed: an interrupted download never
leaves a partial file under the real name).

Verification: every file is parsed as idx (magic number, dimensions, exact
length) and the SHA-256 of its *decompressed* content must equal the official
one (:data:`FILES`).  Hashing the content rather than the ``.gz`` matters:
Debian ships the files recompressed (gzip header without the file name, a
2020 time stamp), so their ``.gz`` hashes differ from the published ones
although the deflate streams, and the data, are byte-identical.  Putting the
original header back reproduces the published MD5s
(8d4fb7e6c68d591d4c3dfef9ec88bf0d, 25c81989df183df01b3e8a0aad5dffbe,
bef4ecab320f06d8554ea6380940ec79, bb300cfdad3c16e7a12a480ee83cd310) and the
SHA-256s used by torchvision and TensorFlow Datasets (``gz_sha256`` below);
the content hashes below are those of that data.  A truncated, corrupt or
different file is therefore refused with a message naming it, and is never
trained on.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "CLASS_NAMES",
    "DataError",
    "FILES",
    "MAX_DOWNLOAD_BYTES",
    "MEAN",
    "MIRRORS",
    "STD",
    "MiniBatches",
    "cache_dir",
    "load_fashion_mnist",
    "read_idx",
    "search_path",
    "to_float",
]

#: The ten classes, by label.
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: Mean and standard deviation of the training pixels scaled to [0, 1].
MEAN, STD = 0.2860, 0.3530

#: Official download locations, tried in order: HTTPS first; the plain-HTTP
#: mirror (its website endpoint has no HTTPS) is a fallback, and what it
#: sends is only kept when its SHA-256 is the official one.
MIRRORS = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)

#: Largest download accepted for one file (bytes); the official ``.gz``
#: files are at most 26.4 MB.  A mirror that sends more is cut off.
MAX_DOWNLOAD_BYTES = 32 << 20

#: name -> idx magic number, shape, SHA-256 of the decompressed content and
#: SHA-256 / MD5 / size of the official .gz (see the module notes).
FILES = {
    "train-images-idx3-ubyte": dict(
        magic=0x0803,
        shape=(60000, 28, 28),
        sha256="c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        gz_sha256="3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        gz_md5="8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        gz_size=26421880,
    ),
    "train-labels-idx1-ubyte": dict(
        magic=0x0801,
        shape=(60000,),
        sha256="bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        gz_sha256="a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        gz_md5="25c81989df183df01b3e8a0aad5dffbe",
        gz_size=29515,
    ),
    "t10k-images-idx3-ubyte": dict(
        magic=0x0803,
        shape=(10000, 28, 28),
        sha256="5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        gz_sha256="346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        gz_md5="bef4ecab320f06d8554ea6380940ec79",
        gz_size=4422102,
    ),
    "t10k-labels-idx1-ubyte": dict(
        magic=0x0801,
        shape=(10000,),
        sha256="0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        gz_sha256="67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        gz_md5="bb300cfdad3c16e7a12a480ee83cd310",
        gz_size=5148,
    ),
}

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

# idx type code -> numpy dtype (big-endian, as stored)
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataError(RuntimeError):
    """The data set is missing, corrupt, or could not be downloaded."""


def read_idx(source) -> np.ndarray:
    """Parse an idx file (the MNIST format) into a numpy array.

    Args:
        source: a path (``.gz`` is decompressed) or the file's bytes.

    Returns:
        Array of the stored type (native byte order) and shape.

    Raises:
        ValueError: a bad magic number, an unknown type code, or a length
            that does not match the dimensions (truncated or padded file).
    """
    data = _read_bytes(Path(source)) if isinstance(source, (str, os.PathLike)) else bytes(source)
    if len(data) < 4:
        raise ValueError(f"idx: {len(data)} bytes is too short for an idx header")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES or data[3] == 0:
        raise ValueError(f"idx: bad magic number 0x{data[:4].hex()} (expected 0x0000TTNN)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"idx: truncated header ({len(data)} bytes, expected {header})")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = header + dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise ValueError(
            f"idx: file {what}: {len(data)} bytes, expected {expected} for shape {shape}"
        )
    # A writable copy in native byte order (frombuffer on bytes is read-only).
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _read_bytes(path: Path, limit: int | None = None) -> bytes:
    """The (decompressed) bytes of ``path``; with ``limit``, a file (or a
    gzip stream) longer than ``limit`` bytes is refused after reading at most
    ``limit + 1`` bytes, so a gzip bomb is never decompressed in full."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read() if limit is None else f.read(limit + 1)
    except EOFError:
        raise ValueError("gzip stream ends early: the file is truncated") from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise ValueError(f"not a valid gzip file ({e})") from None
    if limit is not None and len(data) > limit:
        raise ValueError(
            f"the data is longer than the {limit} bytes accepted for this file "
            "(stopped reading there)"
        )
    return data


def _raw_limit(name: str) -> int:
    """The most bytes read (decompressed) from a file claiming to be ``name``:
    twice the official length, so a wrong file of similar size is still
    parsed and described, while a gzip bomb is cut off early."""
    shape = FILES[name]["shape"]
    return 2 * (4 + 4 * len(shape) + int(np.prod(shape))) + 4096


def _check(raw: bytes, name: str) -> np.ndarray:
    """Parse the decompressed bytes of official file ``name`` and check its
    magic number, shape and SHA-256; ValueError says what is wrong."""
    spec = FILES[name]
    arr = read_idx(raw)
    magic = int.from_bytes(raw[:4], "big")
    if magic != spec["magic"] or arr.shape != spec["shape"] or arr.dtype != np.uint8:
        raise ValueError(
            f"idx magic 0x{magic:08x}, {arr.dtype} {arr.shape}; expected "
            f"0x{spec['magic']:08x}, uint8 {spec['shape']} for {name}"
        )
    digest = hashlib.sha256(raw).hexdigest()
    if digest != spec["sha256"]:
        raise ValueError(
            f"SHA-256 of the data is {digest}, expected {spec['sha256']} (the official "
            f"{name}): the file is corrupt or not the official one"
        )
    return arr


def _load_verified(path: Path, name: str) -> np.ndarray:
    """Read one official file, checking magic, shape and content SHA-256."""
    try:
        return _check(_read_bytes(path, _raw_limit(name)), name)
    except (ValueError, OSError) as e:
        raise DataError(
            f"{path}: {e}. Delete it to have it downloaded again, or reinstall it "
            "(apt-get install --reinstall dataset-fashion-mnist)."
        ) from None


def cache_dir() -> Path:
    """The user cache folder for the data set."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "convcore" / "fashion-mnist"


def search_path(root=None) -> list[Path]:
    """The folders :func:`load_fashion_mnist` looks in, in order."""
    if root is not None:
        return [Path(root)]
    dirs = []
    if os.environ.get("CONVCORE_DATA"):
        dirs.append(Path(os.environ["CONVCORE_DATA"]))
    dirs += [cache_dir(), SYSTEM_DIR]
    return dirs


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def _how_to_get(target: Path) -> str:
    names = ", ".join(f"{n}.gz" for n in FILES)
    return (
        "To get Fashion-MNIST, do one of:\n"
        "  - sudo apt-get install dataset-fashion-mnist\n"
        f"    (Debian/Ubuntu: installs the official files into {SYSTEM_DIR})\n"
        f"  - download {names}\n"
        "    from https://github.com/zalandoresearch/fashion-mnist#get-the-data\n"
        "    into a folder DIR, then pass --data DIR (or root=DIR) or set CONVCORE_DATA=DIR\n"
        f"  - run again with network access: the files are downloaded into {target}"
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _TooLarge(ValueError):
    pass


def _fetch(url: str, out, name: str, progress: bool):
    """Stream ``url`` into the open file ``out``; returns (bytes, SHA-256)."""
    from ._progress import Progress

    cap = MAX_DOWNLOAD_BYTES
    digest = hashlib.sha256()
    count = 0
    with urllib.request.urlopen(url, timeout=30) as resp:
        total = int(resp.headers.get("Content-Length") or 0)
        if total > cap:
            raise _TooLarge(f"the server announces {total} bytes, more than the {cap} accepted")
        bar = Progress(
            total, f"downloading {name}.gz", unit="bytes", mode="auto" if progress else "none"
        )
        if bar.mode == "lines":
            print(f"downloading {url}", file=sys.stderr, flush=True)
        try:
            while True:
                chunk = resp.read(1 << 16)
                if not chunk:
                    break
                count += len(chunk)
                if count > cap:
                    raise _TooLarge(f"more than the {cap} bytes accepted were sent; stopped")
                digest.update(chunk)
                out.write(chunk)
                bar.update(len(chunk))
        finally:
            bar.close()
    out.flush()
    os.fsync(out.fileno())
    return count, digest.hexdigest()


class _UnwritableFolder(DataError):
    pass


def _temporary_file(folder: Path, name: str) -> str:
    """A new empty temporary file in ``folder`` (created if needed)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part.gz", dir=folder)
    except OSError as e:
        raise _UnwritableFolder(
            f"{folder}: cannot write the downloaded data into this folder "
            f"({e.strerror or e}); expected a writable folder: set CONVCORE_DATA (or pass "
            "--data) to one, or install the data set (apt-get install dataset-fashion-mnist)"
        ) from None
    os.close(fd)
    return tmp


def _download(name: str, folder: Path, progress: bool) -> Path:
    """Fetch ``name.gz`` into ``folder`` atomically; verify before renaming.

    The download streams to a temporary file with a size cap
    (:data:`MAX_DOWNLOAD_BYTES`).  The official ``.gz`` (size and SHA-256)
    of the official size must have the official SHA-256; any ``.gz`` is
    then decompressed only up to twice the official data's length (a gzip
    bomb is cut off), and the content's magic, shape and SHA-256 checked.
    """
    from ._files import fsync_dir

    spec = FILES[name]
    tmp = _temporary_file(folder, name)
    dest = folder / f"{name}.gz"
    errors = []
    try:
        for base in MIRRORS:
            url = base + f"{name}.gz"
            try:
                os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files
                with open(tmp, "wb") as out:
                    size, gz_sha = _fetch(url, out, name, progress)
                if size == spec["gz_size"] and gz_sha != spec["gz_sha256"]:
                    raise ValueError(
                        f"SHA-256 of the .gz is {gz_sha}, expected {spec['gz_sha256']} (the "
                        f"official {name}.gz): the file is corrupt or not the official one"
                    )
                _check(_read_bytes(Path(tmp), _raw_limit(name)), name)
            except ValueError as e:
                errors.append(f"{url}: the downloaded file was refused: {e}")
                continue
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                errors.append(f"{url}: {getattr(e, 'reason', None) or e}")
                continue
            os.replace(tmp, dest)
            fsync_dir(folder)
            return dest
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    raise DataError("could not download " + f"{name}.gz:\n  " + "\n  ".join(errors))


def load_fashion_mnist(root=None, download: bool = True, *, progress: bool = True):
    """Load the verified official Fashion-MNIST arrays.

    Args:
        root: folder to use instead of the search path (see the module notes).
        download: fetch missing files from the official mirrors.
        progress: show a progress bar while downloading (on stderr).

    Returns:
        ``(train_images, train_labels, test_images, test_labels)``: uint8
        arrays of shapes (60000, 28, 28), (60000,), (10000, 28, 28), (10000,).

    Raises:
        DataError: a file is corrupt or truncated (the message names it), or
            the files are absent and could not be downloaded (the message says
            how to get them).
    """
    folders = search_path(root)
    for folder in folders:
        paths = {name: _find(folder, name) for name in FILES}
        if all(paths.values()):
            return _load_folder(paths)
    if root is not None:
        target = Path(root)
    elif os.environ.get("CONVCORE_DATA"):
        target = Path(os.environ["CONVCORE_DATA"])
    else:
        target = cache_dir()
    looked = "\n".join(f"  {f}" for f in folders)
    if not download:
        raise DataError(
            "Fashion-MNIST not found (download disabled). "
            f"Looked in:\n{looked}\n{_how_to_get(target)}"
        )
    paths = {name: _find(target, name) for name in FILES}
    try:
        for name, path in paths.items():
            if path is None:
                paths[name] = _download(name, target, progress)
    except _UnwritableFolder:
        raise
    except DataError as e:
        raise DataError(
            f"Fashion-MNIST not found and the download failed ({e}).\n"
            f"Looked in:\n{looked}\n{_how_to_get(target)}"
        ) from None
    return _load_folder(paths)


def _load_folder(paths: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # Smallest files first, so a bad file is reported without waiting.
    order = sorted(paths, key=lambda name: int(np.prod(FILES[name]["shape"])))
    arrays = {name: _load_verified(paths[name], name) for name in order}
    return (
        arrays["train-images-idx3-ubyte"],
        arrays["train-labels-idx1-ubyte"],
        arrays["t10k-images-idx3-ubyte"],
        arrays["t10k-labels-idx1-ubyte"],
    )


def to_float(images: np.ndarray, normalize: bool = False) -> np.ndarray:
    """uint8 images (N, 28, 28) -> float32 (N, 1, 28, 28) in [0, 1], or
    standardised with :data:`MEAN` and :data:`STD` when ``normalize``."""
    x = np.asarray(images)
    x = x.reshape(x.shape[0], 1, *x.shape[-2:]).astype(np.float32)
    x /= np.float32(255)
    if normalize:
        x -= np.float32(MEAN)
        x /= np.float32(STD)
    return x


class MiniBatches:
    """Mini-batches of one pass (epoch) over a data set.

    The order is drawn from ``rng`` when the object is created (one
    ``rng.permutation``), so a generator's state saved after an epoch fixes
    every later epoch.  Iterating yields ``(x, y)``: float32 images
    (B, 1, 28, 28) (see :func:`to_float`) and int64 labels (B,).

    Args:
        images: uint8 array (N, 28, 28).
        labels: integer array (N,).
        batch_size: images per batch; the last batch may be smaller unless
            ``drop_last``.
        rng: numpy Generator (or seed) for the order; ``shuffle=False`` keeps
            the stored order.
        normalize: standardise instead of scaling to [0, 1].
    """

    def __init__(
        self,
        images,
        labels,
        batch_size: int,
        *,
        rng=None,
        shuffle: bool = True,
        drop_last: bool = False,
        normalize: bool = False,
    ):
        if len(images) != len(labels):
            raise ValueError(f"images and labels differ in length: {len(images)} vs {len(labels)}")
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        self.images, self.labels = images, labels
        self.batch_size, self.drop_last, self.normalize = int(batch_size), drop_last, normalize
        n = len(images)
        if shuffle:
            gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
            self.order = gen.permutation(n)
        else:
            self.order = np.arange(n)

    def __len__(self) -> int:
        n, b = len(self.order), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self):
        b = self.batch_size
        for k in range(len(self)):
            idx = self.order[k * b : (k + 1) * b]
            yield to_float(self.images[idx], self.normalize), self.labels[idx].astype(np.int64)


def _main(argv=None) -> int:  # python -m convcore.data: fetch and verify
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m convcore.data",
        description="Find, download if needed, and verify Fashion-MNIST. Looks in: "
        + ", ".join(str(p) for p in search_path())
        + f" (in that order; $CONVCORE_DATA first when set). Missing files are downloaded "
        f"into $CONVCORE_DATA or {cache_dir()}.",
    )
    ap.add_argument("--data", metavar="DIR", help="folder to use instead of the search path")
    args = ap.parse_args(argv)
    try:
        xtr, ytr, xte, yte = load_fashion_mnist(args.data)
    except DataError as e:
        from ._cli import EXIT_BAD_FILE, error

        error(e)
        return EXIT_BAD_FILE
    print(f"Fashion-MNIST OK: train {xtr.shape} test {xte.shape} (SHA-256 verified)")
    return 0


if __name__ == "__main__":
    sys.exit(_main())

"""convcore.data: idx parsing, verification of the official files, the
search path, downloads (from a local server), the offline error, batches."""

from __future__ import annotations

import functools
import gzip
import http.server
import os
import shutil
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
from convcore import data
from convcore.data import FILES, DataError, MiniBatches, load_fashion_mnist, read_idx

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _real_dir() -> Path | None:
    for folder in data.search_path():
        if all(data._find(folder, n) for n in FILES):
            return folder
    return None


@pytest.fixture(scope="module")
def real_dir() -> Path:
    folder = _real_dir()
    if folder is None:
        msg = "Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"
        if IN_CI:
            pytest.fail(f"{msg}: required in CI")
        pytest.skip(msg)
    return folder


def _idx(arr: np.ndarray, code: int) -> bytes:
    head = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def _copy_set(real: Path, dest: Path, skip: str | None = None) -> None:
    """Link the real files into dest, except ``skip`` (the test writes it)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        if name != skip:
            src = data._find(real, name)
            os.symlink(src.resolve(), dest / src.name)


def _labels_gz(real: Path, name="train-labels-idx1-ubyte") -> bytes:
    return data._find(real, name).read_bytes()


# --- idx format ------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype,code",
    [
        (np.uint8, 0x08),
        (np.int8, 0x09),
        (np.int16, 0x0B),
        (np.int32, 0x0C),
        (np.float32, 0x0D),
        (np.float64, 0x0E),
    ],
)
def test_read_idx_round_trip(dtype, code, tmp_path):
    arr = (np.arange(2 * 3 * 4) - 7).astype(dtype).reshape(2, 3, 4)
    raw = _idx(arr, code)
    out = read_idx(raw)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative and out.flags.writeable
    np.testing.assert_array_equal(out, arr)
    (tmp_path / "a.gz").write_bytes(gzip.compress(raw))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)
    (tmp_path / "a").write_bytes(raw)
    np.testing.assert_array_equal(read_idx(str(tmp_path / "a")), arr)


@pytest.mark.parametrize(
    "raw,match",
    [
        (b"\x00\x00", "too short"),
        (b"\x01\x00\x08\x01" + b"\x00" * 8, "magic"),
        (b"\x00\x00\x07\x01" + b"\x00" * 8, "magic"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x02", "truncated header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05abc", "truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x02abc", "trailing"),
    ],
)
def test_read_idx_refuses_malformed_data(raw, match):
    with pytest.raises(ValueError, match=match):
        read_idx(raw)


# --- the real files ---------------------------------------------------------


def test_load_official_data(real_dir):
    xtr, ytr, xte, yte = load_fashion_mnist(real_dir, download=False)
    assert xtr.shape == (60000, 28, 28) and xte.shape == (10000, 28, 28)
    assert ytr.shape == (60000,) and yte.shape == (10000,)
    assert all(a.dtype == np.uint8 for a in (xtr, ytr, xte, yte))
    assert np.bincount(ytr).tolist() == [6000] * 10
    assert np.bincount(yte).tolist() == [1000] * 10
    assert ytr[:5].tolist() == [9, 0, 0, 3, 0] and yte[:3].tolist() == [9, 2, 1]
    assert abs(xtr.mean() / 255 - data.MEAN) < 1e-3 and abs(xtr.std() / 255 - data.STD) < 1e-3
    assert len(data.CLASS_NAMES) == 10 and data.CLASS_NAMES[9] == "Ankle boot"


def test_search_order_prefers_convcore_data(real_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CONVCORE_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = data.search_path()
    assert path[:2] == [tmp_path / "env", tmp_path / "cache" / "convcore" / "fashion-mnist"]
    assert path[-1] == Path("/usr/share/datasets/fashion-mnist")
    assert data.search_path(tmp_path / "x") == [tmp_path / "x"]
    # A set in $CONVCORE_DATA is used (here: recognisably, with a bad label file).
    _copy_set(real_dir, tmp_path / "env", skip="t10k-labels-idx1-ubyte")
    (tmp_path / "env" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"junk")
    with pytest.raises(DataError, match="env"):
        load_fashion_mnist()


def test_uncompressed_files_are_accepted(real_dir, tmp_path):
    _copy_set(real_dir, tmp_path, skip="t10k-labels-idx1-ubyte")
    raw = gzip.decompress(_labels_gz(real_dir, "t10k-labels-idx1-ubyte"))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(raw)
    *_, yte = load_fashion_mnist(tmp_path, download=False)
    assert yte[:3].tolist() == [9, 2, 1]


def _corrupt_truncated(gz: bytes) -> bytes:
    return gz[: len(gz) // 2]


def _corrupt_flipped(gz: bytes) -> bytes:
    b = bytearray(gz)
    b[len(b) // 2] ^= 0xFF
    return bytes(b)


def _corrupt_relabelled(gz: bytes) -> bytes:
    raw = bytearray(gzip.decompress(gz))
    raw[100] = (raw[100] + 1) % 10  # a valid idx file, one label changed
    return gzip.compress(bytes(raw))


def _corrupt_short_valid_gzip(gz: bytes) -> bytes:
    return gzip.compress(gzip.decompress(gz)[:-10])


def _corrupt_wrong_file(gz: bytes) -> bytes:
    return gzip.compress(_idx(np.zeros((60000, 1), np.uint8), 0x08))  # right size, wrong shape


@pytest.mark.parametrize(
    "corrupt,match",
    [
        (_corrupt_truncated, "truncated"),
        (_corrupt_flipped, "gzip|SHA-256|truncated"),
        (_corrupt_relabelled, "SHA-256"),
        (_corrupt_short_valid_gzip, "truncated"),
        (_corrupt_wrong_file, "expected 0x00000801, uint8 \\(60000,\\)"),
    ],
)
def test_corrupted_copies_are_refused(real_dir, tmp_path, corrupt, match):
    _copy_set(real_dir, tmp_path, skip="train-labels-idx1-ubyte")
    bad = tmp_path / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(corrupt(_labels_gz(real_dir)))
    with pytest.raises(DataError, match=match) as info:
        load_fashion_mnist(tmp_path, download=False)
    assert str(bad) in str(info.value)  # the message names the file


# --- downloads --------------------------------------------------------------


@pytest.fixture
def server(tmp_path):
    """An HTTP server on localhost serving tmp_path/'served'."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))

    class Quiet(handler.func):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def _closed_port_url() -> str:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/"


def test_download_fills_in_missing_files_atomically(
    real_dir, tmp_path, server, monkeypatch, capsys
):
    served, url = server
    for name in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copy(data._find(real_dir, name), served / f"{name}.gz")
    dest = tmp_path / "dest"
    _copy_set(real_dir, dest, skip="train-labels-idx1-ubyte")
    (dest / "t10k-labels-idx1-ubyte.gz").unlink()
    # The first mirror is down: the second one is used.
    monkeypatch.setattr(data, "MIRRORS", (_closed_port_url(), url))
    xtr, ytr, xte, yte = load_fashion_mnist(dest)
    assert ytr[:5].tolist() == [9, 0, 0, 3, 0] and yte[:3].tolist() == [9, 2, 1]
    got = sorted(p.name for p in dest.iterdir())
    assert got == sorted(f"{n}.gz" for n in FILES)  # no temporary files left
    mode = stat.S_IMODE((dest / "t10k-labels-idx1-ubyte.gz").stat().st_mode)
    assert mode & 0o044  # readable by others as umask allows, not mkstemp's 0600
    assert f"downloading {url}t10k-labels-idx1-ubyte.gz" in capsys.readouterr().err


def test_corrupt_download_is_refused_and_not_kept(real_dir, tmp_path, server, monkeypatch):
    served, url = server
    (served / "train-labels-idx1-ubyte.gz").write_bytes(_corrupt_relabelled(_labels_gz(real_dir)))
    dest = tmp_path / "dest"
    _copy_set(real_dir, dest, skip="train-labels-idx1-ubyte")
    monkeypatch.setattr(data, "MIRRORS", (url,))
    with pytest.raises(DataError, match="SHA-256"):
        load_fashion_mnist(dest, progress=False)
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        f"{n}.gz" for n in FILES if n != "train-labels-idx1-ubyte"
    )


def test_offline_error_says_how_to_get_the_data(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MIRRORS", (_closed_port_url(),))
    with pytest.raises(DataError) as info:
        load_fashion_mnist(tmp_path / "nothing", progress=False)
    msg = str(info.value)
    assert "download failed" in msg and "Connection refused" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "CONVCORE_DATA" in msg and "--data DIR" in msg
    assert str(tmp_path / "nothing") in msg
    with pytest.raises(DataError, match="download disabled"):
        load_fashion_mnist(tmp_path / "nothing", download=False)
    assert not any((tmp_path / "nothing").glob("*.part"))


# --- batches ------------------------------------------------------------------


def test_minibatches_are_seeded_and_cover_the_data():
    images = np.arange(10 * 28 * 28, dtype=np.uint8).reshape(10, 28, 28) % 251
    labels = np.arange(10) % 10
    a = MiniBatches(images, labels, 4, rng=np.random.default_rng(1))
    b = MiniBatches(images, labels, 4, rng=np.random.default_rng(1))
    c = MiniBatches(images, labels, 4, rng=np.random.default_rng(2))
    assert len(a) == 3
    batches = list(a)
    assert [len(y) for _, y in batches] == [4, 4, 2]
    seen = np.concatenate([y for _, y in batches])
    assert sorted(seen.tolist()) == list(range(10)) and seen.tolist() != list(range(10))
    np.testing.assert_array_equal(a.order, b.order)
    assert not np.array_equal(a.order, c.order)
    x, y = batches[0]
    assert x.shape == (4, 1, 28, 28) and x.dtype == np.float32 and x.flags.c_contiguous
    assert y.dtype == np.int64
    np.testing.assert_array_equal(x[:, 0], images[a.order[:4]] / np.float32(255))
    assert len(MiniBatches(images, labels, 4, drop_last=True, shuffle=False)) == 2
    x0, _ = next(iter(MiniBatches(images, labels, 10, shuffle=False, normalize=True)))
    np.testing.assert_allclose(
        x0, (images[:, None] / 255 - data.MEAN) / data.STD, rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError):
        MiniBatches(images, labels[:3], 4)

"""Every file the commands read is validated before any work starts.

Each kind of damaged checkpoint is fed to the three commands that read one
(``evaluate``, ``predict``, ``convcore-train --resume``): each must print one
line ``error: <file>: ...`` and exit with the same status
(``_cli.EXIT_BAD_FILE``), without loading the data set first.  Then bad
images for ``predict`` and an unwritable or hostile data folder for
``data``.  Nothing here uses the network.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from convcore import checkpoint, data, evaluate, models, nn, optim, predict, train
from convcore._cli import EXIT_BAD_FILE

# --- a valid checkpoint, and ways to damage it -------------------------------


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A real tutorial checkpoint after one Adam step (non-empty optimiser state)."""
    model = models.build("tutorial")
    opt = optim.Adam(model.parameters())
    x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(model(x), np.arange(4))
    model.zero_grad()
    model.backward(loss_fn.backward())
    opt.step()
    config = {k: v for k, v in train._complete({}).items() if k in train.DEFAULTS}
    path = tmp_path_factory.mktemp("ckpt") / "good.npz"
    checkpoint.save(
        path,
        checkpoint.Checkpoint(
            config=config,
            epoch=1,
            model_state=model.state_dict(),
            optimizer_state=opt.state_dict(),
            optimizer_type="adam",
            rng={"shuffle": models.seed_stream(0, 2).bit_generator.state, "dropout": {}},
            metrics=[],
        ),
    )
    return path


def _entries(path: Path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _npz(entries: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **entries)
    return buf.getvalue()


def _edit(drop=(), replace=None):
    def damage(path: Path) -> bytes:
        e = _entries(path)
        for k in drop:
            del e[k]
        e.update(replace or {})
        return _npz(e)

    return damage


def _config(**changes):
    def damage(path: Path) -> bytes:
        e = _entries(path)
        cfg = json.loads(str(e["config"]))
        cfg.update(changes)
        e["config"] = np.array(json.dumps(cfg))
        return _npz(e)

    return damage


def _bad_crc(path: Path) -> bytes:
    raw = bytearray(path.read_bytes())
    w = _entries(path)["model/9.weight"]
    at = bytes(raw).index(w.tobytes()) + w.nbytes // 2  # inside the stored entry
    raw[at] ^= 0x55
    return bytes(raw)


def _wrong_shape(path: Path) -> bytes:
    e = _entries(path)
    e["model/0.weight"] = np.zeros((6, 1, 3, 3), np.float32)
    return _npz(e)


def _pickled_entry(path: Path) -> bytes:
    e = _entries(path)
    e["metrics"] = np.array([{"epoch": 1}], dtype=object)
    return _npz(e)


# kind -> (bytes of the damaged file, or None for no file; words the message must hold)
DAMAGE = {
    "truncated": (lambda p: p.read_bytes()[: p.stat().st_size // 2], "truncated or damaged"),
    "empty": (lambda p: b"", "empty (0 bytes)"),
    "random bytes": (
        lambda p: np.random.default_rng(1).bytes(4096),
        "not a .npz (zip) archive",
    ),
    "a .npy instead of a .npz": (
        lambda p: (lambda b: (np.save(b, np.zeros(3)), b.getvalue())[1])(io.BytesIO()),
        "single .npy array",
    ),
    "no format entry": (_edit(drop=["format"]), "no 'format' entry"),
    "no version entry": (_edit(drop=["version"]), "'version' is missing"),
    "no config entry": (_edit(drop=["config"]), "'config' is missing"),
    "no epoch entry": (_edit(drop=["epoch"]), "'epoch' is missing"),
    "no rng entry": (_edit(drop=["rng"]), "'rng' is missing"),
    "no metrics entry": (_edit(drop=["metrics"]), "'metrics' is missing"),
    "a missing weight": (_edit(drop=["model/9.bias"]), "do not fit model 'tutorial'"),
    "bad CRC in an entry": (_bad_crc, "'model/9.weight.npy' is damaged (its CRC-32"),
    "a weight of the wrong shape": (_wrong_shape, "0.weight has shape (6, 1, 3, 3)"),
    "a float64 weight": (
        _edit(replace={"model/0.bias": np.zeros(6, np.float64)}),
        "'model/0.bias' has dtype float64; expected float32",
    ),
    "an unknown model name": (_config(model="resnet"), "unknown model 'resnet'"),
    "a bad setting": (_config(seed="x"), "config 'seed' is 'x'; expected an integer"),
    "config not JSON": (_edit(replace={"config": np.array("{")}), "'config' is not valid JSON"),
    "a newer version": (
        _edit(replace={"version": np.array(9, np.int64)}),
        "version 9 is not supported",
    ),
    "a pickled entry": (_pickled_entry, "'metrics' is not a plain numpy array"),
    "optimiser state of the wrong shape": (
        _edit(replace={"optimizer/0/exp_avg": np.zeros(3, np.float32)}),
        "optimiser or random-generator state does not fit",
    ),
    "a bad generator state": (
        _edit(replace={"rng": np.array(json.dumps({"shuffle": {"bit_generator": "MT19937"}}))}),
        "optimiser or random-generator state does not fit",
    ),
    "a missing file": (None, "cannot read the file"),
}


@pytest.fixture
def no_data(monkeypatch):
    """Fail loudly if a command loads the data set before checking its files."""

    def refuse(*args, **kwargs):
        raise AssertionError("the data set was loaded before the checkpoint was validated")

    monkeypatch.setattr(data, "load_fashion_mnist", refuse)
    monkeypatch.setattr(train, "load_fashion_mnist", refuse)


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "image.npy"
    np.save(path, np.zeros((28, 28), np.uint8))
    return path


def _damaged(kind: str, good: Path, tmp_path: Path) -> Path:
    make, _ = DAMAGE[kind]
    path = tmp_path / "damaged.npz"
    if make is not None:
        path.write_bytes(make(good))
    return path


COMMANDS = {
    "evaluate": lambda ckpt, tmp, img: evaluate.main([str(ckpt), "--data", str(tmp / "d")]),
    "predict": lambda ckpt, tmp, img: predict.main([str(ckpt), str(img)]),
    "train --resume": lambda ckpt, tmp, img: train.main(
        ["--resume", str(ckpt), "--out", str(tmp / "out"), "--progress", "none", "--no-plots"]
    ),
}


def _one_error_line(err: str, path: Path, words: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {path}: "), err
    assert words in lines[0], err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_checkpoint_gives_one_error_line(
    kind, command, good, tmp_path, image, no_data, capsys
):
    bad = _damaged(kind, good, tmp_path)
    assert COMMANDS[command](bad, tmp_path, image) == EXIT_BAD_FILE
    captured = capsys.readouterr()
    line = _one_error_line(captured.err, bad, DAMAGE[kind][1])
    assert captured.out == ""
    if kind == "random bytes":
        assert "pickle" not in line  # numpy's misleading guess is not passed on
    assert not (tmp_path / "out").exists()  # nothing was written


def test_the_good_checkpoint_loads(good):
    ckpt = checkpoint.load(good)
    assert ckpt.epoch == 1 and ckpt.config["model"] == "tutorial"
    assert ckpt.optimizer_state["state"][0]["step"] == 1
    assert ckpt.build_model()(np.zeros((1, 1, 28, 28), np.float32)).shape == (1, 10)


def test_load_raises_checkpoint_error_a_value_error(good, tmp_path):
    bad = _damaged("truncated", good, tmp_path)
    with pytest.raises(ValueError, match="truncated"):
        checkpoint.load(bad)
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(tmp_path)  # a folder


def _run(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=dict(os.environ, CONVCORE_DATA=str(cwd / "no-data")),
        timeout=120,
    )


@pytest.mark.parametrize("kind", ["random bytes", "truncated"])
def test_commands_in_a_process_exit_with_the_same_status(kind, good, tmp_path, image):
    """The real programs, in their own process: one line, the same status, no traceback."""
    bad = _damaged(kind, good, tmp_path)
    runs = [
        _run("convcore.evaluate", str(bad), cwd=tmp_path),
        _run("convcore.predict", str(bad), str(image), cwd=tmp_path),
        _run("convcore.train", "--resume", str(bad), "--out", str(tmp_path / "o"), cwd=tmp_path),
    ]
    for r in runs:
        assert r.returncode == EXIT_BAD_FILE, r.stderr
        _one_error_line(r.stderr, bad, DAMAGE[kind][1])


# --- images for predict --------------------------------------------------------


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _npy_header(shape) -> bytes:
    """A .npy header claiming ``shape`` (uint8), followed by 10 bytes."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "|u1", "fortran_order": False, "shape": shape}
    )
    return buf.getvalue() + bytes(10)


def _png(size=(28, 28)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full(size[::-1], 7, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


ok = np.full((28, 28), 0.5)
BAD_IMAGES = {
    "complex": ("x.npy", lambda: _npy(ok.astype(np.complex64)), "complex numbers"),
    "all NaN": (
        "x.npy",
        lambda: _npy(np.full((28, 28), np.nan, np.float32)),
        "784 pixel(s) are NaN",
    ),
    "one NaN": ("x.npy", lambda: _npy(np.where(np.eye(28) > 0, np.nan, ok)), "are NaN"),
    "infinity": ("x.npy", lambda: _npy(np.where(np.eye(28) > 0, np.inf, ok)), "[0.5, inf]"),
    "float above 1": ("x.npy", lambda: _npy(ok * 3), "range over [1.5, 1.5]; expected [0, 1]"),
    "negative float": ("x.npy", lambda: _npy(-ok), "expected [0, 1]"),
    "integer above 255": ("x.npy", lambda: _npy(np.full((28, 28), 300)), "expected [0, 255]"),
    "text": ("x.npy", lambda: _npy(np.full((28, 28), "a")), "holds text"),
    "bytes": ("x.npy", lambda: _npy(np.full((28, 28), b"a")), "holds bytes"),
    "datetime": (
        "x.npy",
        lambda: _npy(np.full((28, 28), np.datetime64("2026-01-01"))),
        "holds dates",
    ),
    "structured": ("x.npy", lambda: _npy(np.zeros((28, 28), "u1,f4")), "structured records"),
    "bool": ("x.npy", lambda: _npy(np.zeros((28, 28), bool)), "holds booleans"),
    "objects": ("x.npy", lambda: _npy(np.full((28, 28), None, object)), "Python objects"),
    "wrong shape": ("x.npy", lambda: _npy(np.zeros((27, 28), np.uint8)), "shape (27, 28)"),
    "no images": ("x.npy", lambda: _npy(np.zeros((0, 28, 28), np.uint8)), "holds no images"),
    "npy truncated": ("x.npy", lambda: _npy(np.zeros((28, 28)))[:-100], "truncated"),
    "npy empty": ("x.npy", lambda: b"", "empty (0 bytes)"),
    "npy random bytes": ("x.npy", lambda: np.random.default_rng(2).bytes(999), "not a .npy"),
    "npy huge shape in the header": ("x.npy", lambda: _npy_header((10**12, 28, 28)), "truncated"),
    "npy damaged header": (
        "x.npy",
        lambda: _npy(np.zeros((28, 28), np.uint8)).replace(b"'descr'", b"'dexcr'"),
        "damaged .npy header",
    ),
    "png random bytes": ("x.png", lambda: np.random.default_rng(3).bytes(999), "cannot read"),
    "png truncated": ("x.png", lambda: _png()[:45], "x.png: "),
    "png of another size": ("x.png", lambda: _png((30, 28)), "30x28; expected 28x28"),
    "missing": ("gone.png", None, "no such file"),
}


@pytest.mark.parametrize("kind", list(BAD_IMAGES))
def test_predict_refuses_bad_images(kind, good, tmp_path, capsys):
    name, make, words = BAD_IMAGES[kind]
    if name.endswith(".png"):
        pytest.importorskip("PIL")
    path = tmp_path / name
    if make is not None:
        path.write_bytes(make())
    assert predict.main([str(good), str(path)]) == EXIT_BAD_FILE
    captured = capsys.readouterr()
    _one_error_line(captured.err, path, words)
    assert captured.out == ""


def test_predict_checks_every_file_before_classifying_any(good, tmp_path, image, capsys):
    bad = tmp_path / "nan.npy"
    np.save(bad, np.full((28, 28), np.nan, np.float32))
    assert predict.main([str(good), str(image), str(bad)]) == EXIT_BAD_FILE
    captured = capsys.readouterr()
    assert captured.out == ""  # the good image was not classified either
    _one_error_line(captured.err, bad, "NaN")


@pytest.mark.parametrize(
    "arr",
    [np.full((28, 28), 300), np.full((28, 28), -2.0), np.where(np.eye(28) > 0, np.inf, 0.5)],
)
def test_clip_accepts_out_of_range_values(arr, good, tmp_path, capsys):
    path = tmp_path / "x.npy"
    np.save(path, arr)
    assert predict.main([str(good), str(path)]) == EXIT_BAD_FILE
    capsys.readouterr()
    assert predict.main([str(good), str(path), "--clip", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["image"] == str(path)
    expect = np.clip(
        np.where(np.isinf(arr), np.sign(arr), arr), 0, 1 if arr.dtype.kind == "f" else 255
    )
    scale = 255 if arr.dtype.kind == "f" else 1
    np.testing.assert_array_equal(
        predict.load_images(path, clip=True)[0], np.rint(expect * scale).astype(np.uint8)
    )
    np.save(path, np.where(np.eye(28) > 0, np.nan, 0.5))
    with pytest.raises(predict.ImageError, match="NaN"):
        predict.load_images(path, clip=True)  # NaN has no value to clip to


def test_decompression_bomb_is_refused(good, tmp_path, monkeypatch, capsys):
    image_mod = pytest.importorskip("PIL.Image")
    path = tmp_path / "bomb.png"
    path.write_bytes(_png())
    monkeypatch.setattr(image_mod, "MAX_IMAGE_PIXELS", 100)  # 784 pixels > 2 x 100
    assert predict.main([str(good), str(path)]) == EXIT_BAD_FILE
    _one_error_line(capsys.readouterr().err, path, "decompression bomb")


def test_npy_layouts_still_accepted(tmp_path):
    for arr in (np.zeros((28, 28), np.uint8), np.ones((2, 1, 28, 28), np.float32)):
        np.save(tmp_path / "a.npy", arr)
        got = predict.load_images(tmp_path / "a.npy")
        assert got.dtype == np.uint8 and got.shape == (len(arr) if arr.ndim == 4 else 1, 28, 28)
    np.save(tmp_path / "f.npy", np.asfortranarray(np.arange(784).reshape(28, 28) % 256))
    np.testing.assert_array_equal(
        predict.load_images(tmp_path / "f.npy")[0], np.arange(784).reshape(28, 28) % 256
    )


# --- the data set ---------------------------------------------------------------


def test_unwritable_data_folder_names_it_and_convcore_data(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    folder = blocker / "fashion-mnist"  # cannot be created: its parent is a file
    monkeypatch.setenv("CONVCORE_DATA", str(folder))
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "none")
    monkeypatch.setattr(data, "cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(data, "MIRRORS", ("http://127.0.0.1:9/",))
    with pytest.raises(data.DataError) as info:
        data.load_fashion_mnist(progress=False)
    msg = str(info.value)
    assert str(folder) in msg and "CONVCORE_DATA" in msg and "\n" not in msg
    assert data._main([]) == EXIT_BAD_FILE
    _one_error_line(capsys.readouterr().err, folder, "cannot write")


def test_data_command_exit_status_for_a_damaged_file(tmp_path, capsys):
    for name in data.FILES:
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(b"\0\0\x08\x01\0\0\0\x01x"))
    assert data._main(["--data", str(tmp_path)]) == EXIT_BAD_FILE
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path}") and "Traceback" not in err


def test_gzip_bomb_is_not_inflated_in_full(tmp_path):
    name = "t10k-labels-idx1-ubyte"
    bomb = tmp_path / f"{name}.gz"
    # 64 MB of zeros behind a valid-looking header compress to about 64 kB.
    with gzip.open(bomb, "wb") as f:
        f.write(b"\0\0\x08\x01" + (10000).to_bytes(4, "big"))
        for _ in range(64):
            f.write(bytes(1 << 20))
    with pytest.raises(data.DataError, match="longer than the 24112 bytes accepted"):
        data._load_verified(bomb, name)


def test_download_size_cap(tmp_path, monkeypatch):
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    name = "t10k-labels-idx1-ubyte"
    (served / f"{name}.gz").write_bytes(bytes(5000))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))

    class Quiet(handler.func):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(served))
    )
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(data, "MIRRORS", (f"http://127.0.0.1:{httpd.server_address[1]}/",))
        monkeypatch.setattr(data, "MAX_DOWNLOAD_BYTES", 4096)
        dest = tmp_path / "dest"
        with pytest.raises(data.DataError, match="5000 bytes, more than the 4096 accepted"):
            data._download(name, dest, progress=False)
        assert list(dest.iterdir()) == []  # the partial file was removed
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_mirrors_prefer_https():
    assert data.MIRRORS[0].startswith("https://")
    assert all(m.startswith("https://") for m in data.MIRRORS[:-1])


# --- what the programs write ------------------------------------------------------


def test_pictures_are_written_atomically(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from convcore import plots

    renamed = []
    real_replace = os.replace

    def spy(src, dst):
        renamed.append((Path(src).name, Path(dst).name))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    path = plots.plot_confusion(np.eye(10, dtype=np.int64), tmp_path / "cm.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(renamed) == 1 and renamed[0][1] == "cm.png" and renamed[0][0].endswith(".tmp")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cm.png"]


def test_write_atomic_fsyncs_the_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(os.path.isdir(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    checkpoint.write_atomic(tmp_path / "m.json", lambda f: f.write(b"{}"))
    assert synced == [False, True]  # the file, then its folder after the rename

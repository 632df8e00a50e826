"""Training checkpoints: one ``.npz`` file, readable without convcore.

Format (version 1).  A NumPy ``.npz`` archive (a zip of ``.npy`` arrays) that
``numpy.load(path)`` opens with the default ``allow_pickle=False``; text
entries are 0-d unicode arrays holding JSON::

    format                  "convcore-checkpoint"
    version                 1
    config                  JSON: the run's settings (model, dropout, optimizer,
                            lr, momentum, weight_decay, batch_size, epochs, seed,
                            normalize, limit_train, schedule, warmup,
                            label_smoothing, flip, crop, tta, val_split, recipe;
                            keys missing in older files take their defaults)
    epoch                   number of epochs completed (int64)
    model/<name>            float32 weights, PyTorch names: model/0.weight ...
    optimizer               JSON: {"type": "adam"|"sgd", "param_groups": [...]}
    optimizer/<i>/<key>     per-parameter state i (PyTorch's index): exp_avg,
                            exp_avg_sq, step (Adam); momentum_buffer (SGD)
    rng                     JSON: numpy bit-generator states: "shuffle" (data
                            order), "augment" (flips and crops) and "dropout"
                            ({layer name: state})
    metrics                 JSON: the per-epoch records so far

With PyTorch, ``{k[6:]: torch.from_numpy(v) for k, v in np.load(p).items()
if k.startswith("model/")}`` is a ``state_dict`` for the equivalent
``torch.nn.Sequential``.  Files are written atomically (a temporary file in
the same folder, then ``os.replace``, then an fsync of the folder), so a
crash never leaves a half-written checkpoint under the real name.

Buffers are saved beside the weights under their PyTorch names:
``model/1.running_mean`` (float32) and ``model/1.num_batches_tracked`` (a 0-d
int64 array, the only integer entries allowed under ``model/``).

:func:`load` validates the whole file before anything uses it and raises
:class:`CheckpointError` with one line naming the file, what is wrong and
what was expected.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._files import fsync_dir, write_atomic  # noqa: F401  (re-exported: the writers use them)

__all__ = ["FORMAT", "VERSION", "Checkpoint", "CheckpointError", "load", "save", "write_atomic"]

FORMAT = "convcore-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    """The content of a checkpoint file."""

    config: dict
    epoch: int
    model_state: OrderedDict
    optimizer_state: dict | None = None
    optimizer_type: str | None = None
    rng: dict = field(default_factory=dict)
    metrics: list = field(default_factory=list)

    def build_model(self):
        """The network of this checkpoint with its weights, in eval mode."""
        from . import models

        model = models.build(
            self.config["model"],
            seed=self.config.get("seed", 0),
            dropout=self.config.get("dropout"),
        )
        model.load_state_dict(self.model_state)
        return model.eval()


def _text(obj) -> np.ndarray:
    return np.array(json.dumps(obj))


def save(path, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` to ``path`` atomically (format above)."""
    arrays = {
        "format": np.array(FORMAT),
        "version": np.array(VERSION, dtype=np.int64),
        "config": _text(ckpt.config),
        "epoch": np.array(ckpt.epoch, dtype=np.int64),
        "rng": _text(ckpt.rng),
        "metrics": _text(ckpt.metrics),
    }
    for name, value in ckpt.model_state.items():
        value = np.asarray(value)
        # Integer buffers (num_batches_tracked) stay int64, as in PyTorch.
        dtype = np.int64 if value.dtype.kind in "iu" else np.float32
        arrays[f"model/{name}"] = np.asarray(value, dtype=dtype)
    if ckpt.optimizer_state is not None:
        arrays["optimizer"] = _text(
            {"type": ckpt.optimizer_type, "param_groups": ckpt.optimizer_state["param_groups"]}
        )
        for i, entry in ckpt.optimizer_state["state"].items():
            for key, value in entry.items():
                if value is not None:
                    arrays[f"optimizer/{i}/{key}"] = np.asarray(value)
    write_atomic(path, lambda f: np.savez(f, **arrays))


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used.  The message is one line,
    ``<path>: <what is wrong>; <what was expected>``."""


_ZIP_MAGIC = b"PK\x03\x04"
_EXPECTED = "expected a .npz checkpoint written by convcore-train"


def load(path) -> Checkpoint:
    """Read and fully validate a checkpoint written by :func:`save`.

    Everything a run needs is checked before returning: the archive and
    every entry (CRC), the required entries and their types, the settings,
    the model name, every weight's name and shape, the optimiser state and
    the random generators' states (a dry restore into a freshly built model
    and optimiser).  So :meth:`Checkpoint.build_model` and ``--resume`` cannot
    fail on the file afterwards.

    Raises:
        CheckpointError (a ValueError): the file is missing, unreadable,
            empty, truncated, not a convcore checkpoint, damaged, has a newer
            version, or does not match its own model; the message names the
            file and says what was expected.
    """
    path = Path(path)
    arrays = _read_arrays(path)

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: {what}")

    fmt = arrays.get("format")
    if fmt is None or fmt.shape != () or fmt.dtype.kind != "U" or str(fmt) != FORMAT:
        got = "no 'format' entry" if fmt is None else f"'format' is {_describe(fmt)}"
        raise bad(f"not a convcore checkpoint ({got}); expected format={FORMAT!r}")
    version = _scalar_int(arrays, "version", bad)
    if version < 1 or version > VERSION:
        raise bad(
            f"checkpoint version {version} is not supported; expected 1..{VERSION} "
            "(a newer version needs a newer convcore)"
        )
    config = _json(arrays, "config", dict, bad)
    epoch = _scalar_int(arrays, "epoch", bad)
    if epoch < 0:
        raise bad(f"entry 'epoch' is {epoch}; expected a count >= 0")
    rng = _json(arrays, "rng", dict, bad)
    metrics = _json(arrays, "metrics", list, bad)
    model_state = OrderedDict()
    for k, v in arrays.items():
        if k.startswith("model/"):
            if v.dtype != np.float32 and v.dtype != np.int64:
                raise bad(
                    f"weight {k!r} has dtype {v.dtype}; expected float32 "
                    "(int64 for a counter such as num_batches_tracked)"
                )
            model_state[k[len("model/") :]] = v
    opt_state = opt_type = None
    if "optimizer" in arrays:
        meta = _json(arrays, "optimizer", dict, bad)
        opt_type = meta.get("type")
        groups = meta.get("param_groups")
        if opt_type not in ("adam", "sgd") or not isinstance(groups, list):
            raise bad(
                "entry 'optimizer' is not valid; expected JSON "
                '{"type": "adam"|"sgd", "param_groups": [...]}'
            )
        state: dict[int, dict] = {}
        for k, value in arrays.items():
            if k.startswith("optimizer/"):
                parts = k.split("/", 2)
                if len(parts) != 3 or not parts[1].isdigit():
                    raise bad(f"entry {k!r} is not valid; expected optimizer/<index>/<name>")
                key = parts[2]
                if key == "step":
                    value = _scalar_int(arrays, k, bad)
                elif value.dtype.kind != "f":
                    raise bad(f"entry {k!r} has dtype {value.dtype}; expected floating point")
                state.setdefault(int(parts[1]), {})[key] = value
        opt_state = {"state": dict(sorted(state.items())), "param_groups": groups}
    ckpt = Checkpoint(
        config=config,
        epoch=epoch,
        model_state=model_state,
        optimizer_state=opt_state,
        optimizer_type=opt_type,
        rng=rng,
        metrics=metrics,
    )
    _dry_restore(ckpt, bad)
    return ckpt


def _read_arrays(path: Path) -> dict:
    """Every entry of the archive at ``path``, CRC-checked, as arrays."""
    import zipfile
    import zlib

    try:
        with open(path, "rb") as f:
            head = f.read(len(_ZIP_MAGIC))
    except OSError as e:
        raise CheckpointError(
            f"{path}: cannot read the file ({e.strerror or e}); {_EXPECTED}"
        ) from None
    if not head:
        raise CheckpointError(f"{path}: the file is empty (0 bytes); {_EXPECTED}")
    if head != _ZIP_MAGIC:
        what = (
            "a single .npy array, not a .npz archive"
            if head.startswith(b"\x93NUM")
            else f"not a .npz (zip) archive, it starts with the bytes {head.hex(' ')}"
        )
        raise CheckpointError(f"{path}: not a convcore checkpoint: {what}; {_EXPECTED}")
    try:
        with zipfile.ZipFile(path) as zf:
            damaged = zf.testzip()  # reads every entry and checks its CRC-32
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(
            f"{path}: truncated or damaged .npz archive ({e}); {_EXPECTED}"
        ) from None
    if damaged is not None:
        raise CheckpointError(
            f"{path}: entry {damaged!r} is damaged (its CRC-32 does not match); {_EXPECTED}"
        )
    arrays = {}
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable .npz archive ({e}); {_EXPECTED}") from None
    with z:
        for name in z.files:
            try:
                arrays[name] = z[name]
            except ValueError as e:  # pickled objects, a bad .npy header...
                raise CheckpointError(
                    f"{path}: entry {name!r} is not a plain numpy array ({e}); {_EXPECTED}"
                ) from None
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
                raise CheckpointError(
                    f"{path}: entry {name!r} cannot be read ({e}); {_EXPECTED}"
                ) from None
    return arrays


def _describe(a: np.ndarray) -> str:
    if a.shape == () and a.dtype.kind in "USiub":
        return f"{a.dtype} {a.item()!r}"
    return f"an array of dtype {a.dtype} and shape {a.shape}"


def _scalar_int(arrays: dict, key: str, bad) -> int:
    a = arrays.get(key)
    if a is None:
        raise bad(f"entry {key!r} is missing; expected a 0-d integer array")
    if a.shape != () or a.dtype.kind not in "iu":
        raise bad(f"entry {key!r} is {_describe(a)}; expected a 0-d integer array")
    return int(a)


def _json(arrays: dict, key: str, kind: type, bad):
    a = arrays.get(key)
    what = "a JSON object" if kind is dict else "a JSON list"
    if a is None:
        raise bad(f"entry {key!r} is missing; expected {what} (0-d text array)")
    if a.shape != () or a.dtype.kind != "U":
        raise bad(f"entry {key!r} is {_describe(a)}; expected {what} (0-d text array)")
    try:
        value = json.loads(str(a))
    except ValueError as e:
        raise bad(f"entry {key!r} is not valid JSON ({e}); expected {what}") from None
    if not isinstance(value, kind):
        raise bad(f"entry {key!r} holds a JSON {type(value).__name__}; expected {what}")
    return value


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


# The settings a run reads from ``config`` (None means the default).
_CONFIG_TYPES = {
    "seed": (lambda v: _is_int(v) and 0 <= v < 2**63, "an integer >= 0"),
    "dropout": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "normalize": (lambda v: isinstance(v, bool), "true or false"),
    "epochs": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "limit_train": (lambda v: _is_int(v) and v >= 1, "an integer >= 1 or null"),
    "optimizer": (lambda v: v in ("adam", "sgd"), "'adam' or 'sgd'"),
    "lr": (_is_number, "a finite number"),
    "momentum": (_is_number, "a finite number"),
    "weight_decay": (_is_number, "a finite number"),
    "schedule": (lambda v: v in ("constant", "onecycle"), "'constant' or 'onecycle'"),
    "warmup": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "label_smoothing": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "flip": (lambda v: isinstance(v, bool), "true or false"),
    "crop": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "tta": (lambda v: isinstance(v, bool), "true or false"),
    "val_split": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "recipe": (lambda v: isinstance(v, str), "a recipe name or null"),
}


def _dry_restore(ckpt: Checkpoint, bad) -> None:
    """Restore ``ckpt`` into a fresh model, optimiser and generators, as
    ``--resume`` does, so every inconsistency is found now."""
    from . import models, optim

    config = ckpt.config
    name = config.get("model")
    if name not in models.NAMES:
        raise bad(
            f"unknown model {name!r} in the 'config' entry; expected one of "
            f"{', '.join(repr(n) for n in models.NAMES)}"
        )
    for key, (ok, expected) in _CONFIG_TYPES.items():
        if key in config and config[key] is not None and not ok(config[key]):
            raise bad(f"config {key!r} is {config[key]!r}; expected {expected}")
    try:
        model = ckpt.build_model()
    except (TypeError, ValueError, KeyError) as e:
        msg = str(e.args[0]) if e.args else type(e).__name__
        raise bad(f"the weights do not fit model {name!r}: {msg}") from None
    try:
        if ckpt.optimizer_state is not None:
            params = model.parameters()
            for i in ckpt.optimizer_state["state"]:
                if i >= len(params):
                    raise ValueError(
                        f"state for parameter {i}, but model {name!r} has {len(params)}"
                    )
            cls = optim.Adam if ckpt.optimizer_type == "adam" else optim.SGD
            cls(params, lr=1e-3).load_state_dict(ckpt.optimizer_state)
        for stream in ("shuffle", "augment"):
            if stream in ckpt.rng:
                np.random.default_rng(0).bit_generator.state = ckpt.rng[stream]
        dropout = ckpt.rng.get("dropout", {})
        if not isinstance(dropout, dict):
            raise TypeError("rng 'dropout' is not a JSON object")
        model.set_rng_state(dropout)
    except (TypeError, ValueError, KeyError, IndexError, OverflowError) as e:
        msg = str(e.args[0]) if e.args else type(e).__name__
        raise bad(f"the optimiser or random-generator state does not fit: {msg}") from None

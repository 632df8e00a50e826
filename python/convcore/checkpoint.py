"""Training checkpoints: one ``.npz`` file, readable without convcore.

Format (version 1).  A NumPy ``.npz`` archive (a zip of ``.npy`` arrays) that
``numpy.load(path)`` opens with the default ``allow_pickle=False``; text
entries are 0-d unicode arrays holding JSON::

    format                  "convcore-checkpoint"
    version                 1
    config                  JSON: the run's settings (model, dropout, optimizer,
                            lr, momentum, weight_decay, batch_size, epochs, seed,
                            normalize, limit_train)
    epoch                   number of epochs completed (int64)
    model/<name>            float32 weights, PyTorch names: model/0.weight ...
    optimizer               JSON: {"type": "adam"|"sgd", "param_groups": [...]}
    optimizer/<i>/<key>     per-parameter state i (PyTorch's index): exp_avg,
                            exp_avg_sq, step (Adam); momentum_buffer (SGD)
    rng                     JSON: numpy bit-generator states: "shuffle" (data
                            order) and "dropout" ({layer name: state})
    metrics                 JSON: the per-epoch records so far

With PyTorch, ``{k[6:]: torch.from_numpy(v) for k, v in np.load(p).items()
if k.startswith("model/")}`` is a ``state_dict`` for the equivalent
``torch.nn.Sequential``.  Files are written atomically (a temporary file in
the same folder, then ``os.replace``), so a crash never leaves a half-written
checkpoint under the real name.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["FORMAT", "VERSION", "Checkpoint", "load", "save", "write_atomic"]

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


def write_atomic(path, write) -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, then
    rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
        arrays[f"model/{name}"] = np.asarray(value, dtype=np.float32)
    if ckpt.optimizer_state is not None:
        arrays["optimizer"] = _text(
            {"type": ckpt.optimizer_type, "param_groups": ckpt.optimizer_state["param_groups"]}
        )
        for i, entry in ckpt.optimizer_state["state"].items():
            for key, value in entry.items():
                if value is not None:
                    arrays[f"optimizer/{i}/{key}"] = np.asarray(value)
    write_atomic(path, lambda f: np.savez(f, **arrays))


def load(path) -> Checkpoint:
    """Read a checkpoint written by :func:`save`.

    Raises:
        ValueError: the file is not a convcore checkpoint or has a newer version.
    """
    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable .npz checkpoint ({e})") from None
    with z:
        if "format" not in z.files or str(z["format"]) != FORMAT:
            raise ValueError(f"{path}: not a convcore checkpoint (no format={FORMAT!r} entry)")
        version = int(z["version"])
        if version > VERSION:
            raise ValueError(
                f"{path}: checkpoint version {version} is newer than this convcore ({VERSION})"
            )
        model_state = OrderedDict(
            (k[len("model/") :], z[k]) for k in z.files if k.startswith("model/")
        )
        opt_state = opt_type = None
        if "optimizer" in z.files:
            meta = json.loads(str(z["optimizer"]))
            opt_type = meta["type"]
            state: dict[int, dict] = {}
            for k in z.files:
                if k.startswith("optimizer/"):
                    _, i, key = k.split("/", 2)
                    value = z[k]
                    state.setdefault(int(i), {})[key] = int(value) if key == "step" else value
            opt_state = {"state": dict(sorted(state.items())), "param_groups": meta["param_groups"]}
        return Checkpoint(
            config=json.loads(str(z["config"])),
            epoch=int(z["epoch"]),
            model_state=model_state,
            optimizer_state=opt_state,
            optimizer_type=opt_type,
            rng=json.loads(str(z["rng"])),
            metrics=json.loads(str(z["metrics"])),
        )

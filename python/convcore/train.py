"""Train a CNN on Fashion-MNIST with convcore: ``python -m convcore.train``.

Also installed as ``convcore-train``.  Defaults: the ``tutorial`` model, Adam
with lr 1e-3, batch 100, 10 epochs, inputs scaled to [0, 1].  Examples::

    convcore-train                                   # tutorial model, 10 epochs
    convcore-train --model wide --out runs/wide
    convcore-train --epochs 12 --resume runs/wide/checkpoint-epoch010.npz
    convcore-train --limit-train 2000 --epochs 1     # a quick smoke run
    convcore-train --recipe fast --out runs/fast     # the speedrun: >= 93.5 % in < 4 min
    convcore-train --device cuda                     # on the GPU (a CUDA build)

Writes into ``--out`` (default ``runs/<model>-<date>-<time>``):

- ``checkpoint-epochNNN.npz`` after every epoch (format: :mod:`convcore.checkpoint`);
- ``metrics.json``: ``model``, ``test_accuracy`` (of the final model),
  ``test_loss``, ``epochs`` (per epoch: ``epoch``, ``train_loss``,
  ``train_accuracy``, ``test_loss``, ``test_accuracy``, ``seconds`` of
  training, ``eval_seconds``, ``images_per_second``, ``wall_seconds`` since
  the command started (data loading included), and with ``--val-split``
  ``val_loss`` and ``val_accuracy``, with a one-cycle schedule ``lr_last``),
  ``seconds_to_93`` (the wall clock at the first epoch whose test accuracy
  reached 93 %, or null), ``validation`` (the held-out split, or null),
  ``per_class_accuracy``, ``confusion_matrix`` (rows: true class),
  ``config``, ``checkpoint``, ``wall_seconds``, ``pictures`` and, when they
  were not drawn, ``pictures_skipped``;
- PNG pictures when matplotlib is installed (:mod:`convcore.plots`).

Both files are rewritten atomically after each epoch.  ``--resume`` restores
the weights, the optimiser state and the random generators (data order and
dropout) saved after an epoch, so the run ends with bitwise the same weights
as an uninterrupted run with the same settings and thread count.

``--device cuda`` keeps the parameters, gradients, activations and optimiser
state on the GPU (see :mod:`convcore.cuda`); each batch of images is copied
there, and the loss comes back once per step.  The device is not a setting
of the run: a checkpoint written on one device resumes on the other.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path

import numpy as np

from . import augment, models, nn, optim
from . import checkpoint as ckpt_io
from ._progress import Progress
from .data import CLASS_NAMES, DataError, MiniBatches, load_fashion_mnist, to_float
from .evaluate import confusion_matrix, evaluate_model

__all__ = ["DEFAULTS", "UsageError", "main", "make_optimizer", "run"]

#: Settings of a run (``lr=None``: 1e-3 for Adam, 0.01 for SGD;
#: ``dropout=None``: the model's default).
DEFAULTS = dict(
    model="tutorial",
    epochs=10,
    batch_size=100,
    optimizer="adam",
    lr=None,
    momentum=0.9,
    weight_decay=0.0,
    dropout=None,
    normalize=False,
    seed=0,
    limit_train=None,
    schedule="constant",
    warmup=0.25,
    label_smoothing=0.0,
    flip=False,
    crop=0,
    tta=False,
    val_split=0,
    recipe=None,
)
DEFAULT_LR = {"adam": 1e-3, "sgd": 1e-2}
SCHEDULES = ("constant", "onecycle")

#: Named sets of settings (``--recipe``); settings given explicitly win.
#: ``fast``: the Fashion-MNIST speedrun (README, "Speedrun"), chosen on a
#: validation split of the training images.
RECIPES = {
    "fast": dict(
        model="wide-bn",
        epochs=6,
        batch_size=100,
        optimizer="adam",
        lr=3e-3,
        normalize=True,
        schedule="onecycle",
        warmup=0.2,
        label_smoothing=0.1,
        flip=True,
    ),
}

#: The validation split (``--val-split N``) holds out the first N images of
#: this fixed permutation of the training set, the same for every seed.
VALIDATION_SEED = 20261128

# Settings that define the computation; a resumed run must keep them.
_FIXED_ON_RESUME = (
    "model",
    "batch_size",
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "dropout",
    "normalize",
    "seed",
    "limit_train",
    "schedule",
    "warmup",
    "label_smoothing",
    "flip",
    "crop",
    "val_split",
)


def make_optimizer(config: dict, params) -> optim.Optimizer:
    if config["optimizer"] == "adam":
        return optim.Adam(params, lr=config["lr"], weight_decay=config["weight_decay"])
    if config["optimizer"] == "sgd":
        return optim.SGD(
            params,
            lr=config["lr"],
            momentum=config["momentum"],
            weight_decay=config["weight_decay"],
        )
    raise ValueError(f"optimizer: expected 'adam' or 'sgd', got {config['optimizer']!r}")


def _complete(config: dict) -> dict:
    c = dict(DEFAULTS)
    recipe = config.get("recipe")
    if recipe is not None:
        if recipe not in RECIPES:
            raise UsageError(f"recipe: expected one of {', '.join(RECIPES)}, got {recipe!r}")
        c.update(RECIPES[recipe])
    c.update({k: v for k, v in config.items() if v is not None})
    if c["model"] not in models.NAMES:
        raise UsageError(f"model: expected one of {', '.join(models.NAMES)}, got {c['model']!r}")
    if c["optimizer"] not in DEFAULT_LR:
        raise UsageError(f"optimizer: expected 'adam' or 'sgd', got {c['optimizer']!r}")
    if c["lr"] is None:
        c["lr"] = DEFAULT_LR[c["optimizer"]]
    if c["dropout"] is None:
        c["dropout"] = models.DEFAULT_DROPOUT[c["model"]]
    for key in ("epochs", "batch_size"):
        if int(c[key]) < 1:
            raise UsageError(f"{key}: must be >= 1, got {c[key]}")
    if c["schedule"] not in SCHEDULES:
        raise UsageError(f"schedule: expected one of {', '.join(SCHEDULES)}, got {c['schedule']!r}")
    for key in ("warmup", "label_smoothing"):
        if not 0.0 <= float(c[key]) <= 1.0:
            raise UsageError(f"{key}: must be in [0, 1], got {c[key]}")
    for key in ("crop", "val_split"):
        if int(c[key]) < 0:
            raise UsageError(f"{key}: must be >= 0, got {c[key]}")
    return c


def split_validation(images, labels, n: int):
    """``(train_images, train_labels, val_images, val_labels)``: the first
    ``n`` images of a fixed permutation (seed :data:`VALIDATION_SEED`) are
    held out; the rest keep their order."""
    n = int(n)
    if not 0 <= n < len(labels):
        raise UsageError(
            f"val_split: must be in [0, {len(labels)}) for {len(labels)} training images, got {n}"
        )
    held = np.zeros(len(labels), dtype=bool)
    held[np.random.default_rng(VALIDATION_SEED).permutation(len(labels))[:n]] = True
    return images[~held], labels[~held], images[held], labels[held]


def _augment(x, config: dict, rng, background: float) -> np.ndarray:
    """The training augmentation of one host batch (see :mod:`convcore.augment`);
    crops pad with ``background``, the value of a black pixel."""
    if config["flip"]:
        augment.random_flip(x, rng)
    if config["crop"]:
        x = augment.random_crop(x, config["crop"], rng, value=background)
    return x


def _resolve_device(device: str):
    """``(backend, index)`` of ``device`` (index None for the CPU);
    UsageError when it cannot be used here, saying why."""
    from ._backend import resolve_device

    try:
        return resolve_device(device)
    except ValueError as e:
        raise UsageError(f"--device: {e}") from None
    except RuntimeError as e:
        raise UsageError(f"--device {device}: {e}") from None


def _write_json(path: Path, obj) -> None:
    text = json.dumps(obj, indent=2) + "\n"
    ckpt_io.write_atomic(path, lambda f: f.write(text.encode()))


class UsageError(ValueError):
    """Bad settings, or a checkpoint that cannot be resumed with them."""


class _Stop(Exception):
    pass


def run(
    config: dict,
    out_dir,
    *,
    data=None,
    data_dir=None,
    resume=None,
    progress: str = "auto",
    plots: bool = True,
    limit_test: int | None = None,
    device: str = "cpu",
    log=print,
    started: float | None = None,
) -> dict:
    """Train (or continue training) and write checkpoints, metrics and pictures.

    Args:
        config: settings (keys of :data:`DEFAULTS`; missing ones take the
            defaults).  With ``resume`` the checkpoint's settings are used and
            only ``epochs`` (the total) may be raised.
        out_dir: output folder (created).
        data: the four arrays of :func:`convcore.data.load_fashion_mnist`
            (loaded from ``data_dir`` or the search path when None).
        resume: path of a checkpoint to continue from.
        progress: ``'auto'``, ``'bar'``, ``'lines'`` or ``'none'``.
        plots: draw the PNG pictures (when matplotlib is installed).
        limit_test: evaluate on the first N test images only (smoke tests).
        device: ``'cpu'``, ``'cuda'`` or ``'cuda:N'``: where to train.
        log: function that prints one line.
        started: ``time.perf_counter()`` when the run's clock started (the
            per-epoch ``wall_seconds`` count from it; default: now).  The
            command passes the time it started, so data loading counts.

    Returns:
        The metrics dictionary written to ``metrics.json``.
    """
    from . import _runtime
    from ._process import tune_process

    if started is None:
        started = time.perf_counter()
    backend, device_index = _resolve_device(device)
    tune_process()
    out_dir = Path(out_dir)
    ckpt = None
    if resume is not None:
        try:
            ckpt = ckpt_io.load(resume)
        except (OSError, ValueError) as e:
            raise UsageError(f"--resume: {e}") from None
        saved = _complete(ckpt.config)
        asked = {k: v for k, v in config.items() if v is not None}
        for key in _FIXED_ON_RESUME:
            if key in asked and key in saved and asked[key] != saved[key]:
                raise UsageError(
                    f"--{key.replace('_', '-')} {asked[key]} differs from the "
                    f"checkpoint's {saved[key]}; "
                    "a resumed run keeps the checkpoint's settings"
                )
        config = dict(saved, epochs=asked.get("epochs", saved["epochs"]))
        if saved["schedule"] == "onecycle" and config["epochs"] != saved["epochs"]:
            raise UsageError(
                f"--epochs {config['epochs']}: the checkpoint's one-cycle schedule spans "
                f"{saved['epochs']} epochs and cannot be extended; start a new run"
            )
    else:
        config = _complete(config)
    config = {k: config[k] for k in DEFAULTS}

    if data is None:
        data = load_fashion_mnist(data_dir)
    xtr, ytr, xte, yte = data
    xva = yva = None
    if config["val_split"]:
        xtr, ytr, xva, yva = split_validation(xtr, ytr, config["val_split"])
    if config["limit_train"]:
        xtr, ytr = xtr[: config["limit_train"]], ytr[: config["limit_train"]]
    if limit_test:
        xte, yte = xte[:limit_test], yte[:limit_test]

    if device_index is not None and config["model"] in models.CPU_ONLY:
        raise UsageError(
            f"--device {device}: model {config['model']} uses batch norm, which runs on the "
            "CPU only in this version; train it with --device cpu"
        )
    model = models.build(config["model"], seed=config["seed"], dropout=config["dropout"])
    model.to(device)  # before the optimiser, whose state lives beside the parameters
    opt = make_optimizer(config, model.parameters())
    shuffle_rng = models.seed_stream(config["seed"], 2)
    augment_rng = models.seed_stream(config["seed"], 3)
    history: list[dict] = []
    start_epoch = 0
    if ckpt is not None:
        model.load_state_dict(ckpt.model_state)
        if ckpt.optimizer_state is not None:
            opt.load_state_dict(ckpt.optimizer_state)
        shuffle_rng.bit_generator.state = ckpt.rng["shuffle"]
        if "augment" in ckpt.rng:
            augment_rng.bit_generator.state = ckpt.rng["augment"]
        model.set_rng_state(ckpt.rng.get("dropout", {}))
        start_epoch = ckpt.epoch
        history = list(ckpt.metrics)
    steps_per_epoch = -(-len(ytr) // config["batch_size"])
    schedule = None
    if config["schedule"] == "onecycle":
        schedule = optim.OneCycleLR(
            opt,
            config["lr"],
            config["epochs"] * steps_per_epoch,
            pct_start=config["warmup"],
            last_step=start_epoch * steps_per_epoch - 1,
        )
    augmenting = bool(config["flip"] or config["crop"])
    black = float(to_float(np.zeros((1, 1, 1), np.uint8), config["normalize"])[0, 0, 0, 0])
    # The clock of a resumed run goes on from the checkpoint's last epoch.
    clock0 = started - (history[-1].get("wall_seconds", 0.0) if history else 0.0)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config["label_smoothing"])
    n_params = sum(p.data.size for p in model.parameters())
    info = _runtime.build_info()

    out_dir.mkdir(parents=True, exist_ok=True)
    threads = f"{info['num_threads']} thread" + ("s" if info["num_threads"] != 1 else "")
    if device_index is None:
        where = f"{info['isa_active']}, {threads}"
        device_label = "cpu"
    else:
        device_label = backend.describe(device_index)
        where = device_label
    recipe = f"recipe {config['recipe']} | " if config["recipe"] else ""
    sched = " one-cycle" if schedule is not None else ""
    held = f" / {len(yva)} validation" if yva is not None else ""
    log(
        f"convcore {_runtime.__version__} ({where}) | {recipe}"
        f"model {config['model']} ({n_params:,} parameters) | "
        f"{config['optimizer']} lr {config['lr']:g}{sched} | "
        f"batch {config['batch_size']} | {len(ytr)} train{held} / {len(yte)} test images"
        f" | out {out_dir}"
    )
    if ckpt is not None:
        log(f"resumed from {resume} after epoch {start_epoch}")

    last_eval = None
    last_ckpt = None
    for epoch in range(start_epoch + 1, config["epochs"] + 1):
        model.train()
        batches = MiniBatches(
            xtr, ytr, config["batch_size"], rng=shuffle_rng, normalize=config["normalize"]
        )
        bar = Progress(len(batches), f"epoch {epoch}/{config['epochs']}", mode=progress)
        loss_sum, correct, seen = 0.0, 0, 0
        t0 = time.perf_counter()
        try:
            for x, y in batches:
                if augmenting:
                    x = _augment(x, config, augment_rng, black)
                x = backend.from_host(x, device_index)
                loss = loss_fn(model(x), y)
                if not np.isfinite(loss):
                    raise _Stop(f"the loss became {loss} in epoch {epoch}; try a smaller --lr")
                correct += int(np.count_nonzero(loss_fn.predictions() == y))
                opt.zero_grad()  # the packed gradient in one fill
                model.backward(loss_fn.backward())
                opt.step()
                if schedule is not None:
                    schedule.step()
                loss_sum += loss * len(y)
                seen += len(y)
                elapsed = time.perf_counter() - t0
                bar.update(
                    1,
                    loss=loss_sum / seen,
                    acc=f"{100 * correct / seen:.2f}%",
                    **{"img/s": f"{seen / max(elapsed, 1e-9):,.0f}"},
                )
        finally:
            bar.close()
        seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        val = None
        if yva is not None:
            val = evaluate_model(model, xva, yva, normalize=config["normalize"], tta=config["tta"])
        last_eval = evaluate_model(
            model, xte, yte, normalize=config["normalize"], tta=config["tta"]
        )
        eval_seconds = time.perf_counter() - t1
        record = {
            "epoch": epoch,
            "train_loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            "test_loss": last_eval["loss"],
            "test_accuracy": last_eval["accuracy"],
            "seconds": seconds,
            "eval_seconds": eval_seconds,
            "images_per_second": seen / seconds,
            "wall_seconds": time.perf_counter() - clock0,
        }
        if val is not None:
            record["val_loss"], record["val_accuracy"] = val["loss"], val["accuracy"]
        if schedule is not None:
            record["lr_last"] = opt.lr
        history.append(record)
        shown = f"val acc {100 * val['accuracy']:.2f}%  " if val is not None else ""
        log(
            f"epoch {epoch:>{len(str(config['epochs']))}}/{config['epochs']}  "
            f"train loss {record['train_loss']:.4f} acc {100 * record['train_accuracy']:.2f}%  "
            f"{shown}test loss {record['test_loss']:.4f} acc {100 * record['test_accuracy']:.2f}%  "
            f"{seconds:.1f} s ({record['images_per_second']:,.0f} img/s)  "
            f"[{record['wall_seconds']:.0f} s]"
        )
        last_ckpt = out_dir / f"checkpoint-epoch{epoch:03d}.npz"
        ckpt_io.save(
            last_ckpt,
            ckpt_io.Checkpoint(
                config=config,
                epoch=epoch,
                model_state=model.state_dict(),
                optimizer_state=opt.state_dict(),
                optimizer_type=config["optimizer"],
                rng={
                    "shuffle": shuffle_rng.bit_generator.state,
                    "augment": augment_rng.bit_generator.state,
                    "dropout": model.rng_state(),
                },
                metrics=history,
            ),
        )
        metrics = _metrics(
            config, history, last_eval, yte, last_ckpt, info, n_params, clock0, device_label
        )
        _write_json(out_dir / "metrics.json", metrics)

    if last_eval is None:  # nothing left to train: report the checkpoint's model
        last_eval = evaluate_model(
            model, xte, yte, normalize=config["normalize"], tta=config["tta"]
        )
        last_ckpt = Path(resume)
    metrics = _metrics(
        config, history, last_eval, yte, last_ckpt, info, n_params, clock0, device_label
    )
    cm = np.array(metrics["confusion_matrix"])
    model.to("cpu")  # the pictures run the model on host arrays
    if plots:
        try:
            from . import plots as plots_mod

            pictures = plots_mod.save_all(
                out_dir,
                history=history,
                model=model,
                confusion=cm,
                image=xte[0],
                label=int(yte[0]),
                normalize=config["normalize"],
                images=xte,
                labels=yte,
                label_smoothing=config["label_smoothing"],
            )
            metrics["pictures"] = [p.name for p in pictures]
            log(f"pictures: {', '.join(metrics['pictures'])}")
        except ImportError as e:
            metrics["pictures_skipped"] = f"matplotlib is not installed ({e})"
            log("pictures skipped: matplotlib is not installed (pip install 'convcore[plots]')")
    else:
        metrics["pictures_skipped"] = "disabled with --no-plots"
    metrics["wall_seconds"] = time.perf_counter() - clock0
    _write_json(out_dir / "metrics.json", metrics)
    log(
        f"final test accuracy {100 * metrics['test_accuracy']:.2f}%  "
        f"(checkpoint {last_ckpt}, metrics {out_dir / 'metrics.json'})"
    )
    return metrics


def _metrics(config, history, last_eval, labels, last_ckpt, info, n_params, clock0, device):
    cm = confusion_matrix(labels, last_eval["predictions"])
    reached = [
        r["wall_seconds"] for r in history if r["test_accuracy"] >= 0.93 and "wall_seconds" in r
    ]
    validation = None
    if config["val_split"]:
        validation = {
            "images": config["val_split"],
            "rule": f"the first {config['val_split']} indices of "
            f"numpy.random.default_rng({VALIDATION_SEED}).permutation(N), "
            "N the number of training images (60,000)",
            "accuracy": history[-1].get("val_accuracy") if history else None,
        }
    return {
        "model": config["model"],
        "test_accuracy": last_eval["accuracy"],
        "test_loss": last_eval["loss"],
        "epochs": history,
        "per_class_accuracy": {
            name: float(cm[k, k] / max(cm[k].sum(), 1)) for k, name in enumerate(CLASS_NAMES)
        },
        "confusion_matrix": cm.tolist(),
        "class_names": list(CLASS_NAMES),
        "config": config,
        "parameters": int(n_params),
        "checkpoint": last_ckpt.name if last_ckpt is not None else None,
        "pictures": [],
        "threads": info["num_threads"],
        "isa": info["isa_active"],
        "convcore_version": info["version"],
        "device": device,
        "wall_seconds": time.perf_counter() - clock0,
        "seconds_to_93": reached[0] if reached else None,
        "validation": validation,
    }


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="convcore-train",
        description="Train a convolutional network on Fashion-MNIST with convcore's kernels.",
        epilog="Evaluate a checkpoint with: python -m convcore.evaluate CHECKPOINT",
    )
    d = DEFAULTS
    ap.add_argument("--model", choices=models.NAMES, help=f"network (default {d['model']})")
    ap.add_argument("--epochs", type=int, help=f"total epochs (default {d['epochs']})")
    ap.add_argument("--batch-size", type=int, help=f"images per step (default {d['batch_size']})")
    ap.add_argument("--optimizer", choices=("adam", "sgd"), help="default adam")
    ap.add_argument("--lr", type=float, help="learning rate (default 1e-3 for adam, 0.01 for sgd)")
    ap.add_argument("--momentum", type=float, help=f"SGD momentum (default {d['momentum']})")
    ap.add_argument("--weight-decay", type=float, help="L2 penalty (default 0)")
    ap.add_argument("--dropout", type=float, help="dropout of the wide model (default 0.5)")
    ap.add_argument(
        "--normalize",
        action="store_const",
        const=True,
        help="standardise inputs (mean 0.2860, std 0.3530) instead of [0, 1]",
    )
    ap.add_argument("--seed", type=int, help="seed of weights, dropout and data order (default 0)")
    ap.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        help="a named set of settings; 'fast' is the speedrun (wide-bn model, 6 epochs, one-cycle "
        "Adam, label smoothing, flips); explicit options override it",
    )
    ap.add_argument(
        "--schedule",
        choices=SCHEDULES,
        help="learning rate per step: constant (default) or onecycle (warm-up to --lr, "
        "then a half cosine down, as PyTorch's OneCycleLR)",
    )
    ap.add_argument(
        "--warmup", type=float, help="one-cycle: fraction of the steps spent warming up (0.25)"
    )
    ap.add_argument("--label-smoothing", type=float, help="label smoothing in [0, 1] (default 0)")
    ap.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        help="mirror a random half of each training batch (default off)",
    )
    ap.add_argument(
        "--crop", type=int, metavar="PIXELS", help="random crops after padding by PIXELS (0: off)"
    )
    ap.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        help="evaluate on the mean logits of each image and its mirror (default off)",
    )
    ap.add_argument(
        "--val-split",
        type=int,
        metavar="N",
        help="hold out N training images (a fixed draw, the same for every seed) and report "
        "their accuracy each epoch (default 0)",
    )
    ap.add_argument("--threads", type=int, help="convcore threads (default: OpenMP's)")
    ap.add_argument(
        "--device",
        default="cpu",
        metavar="DEVICE",
        help="cpu (default), cuda or cuda:N (needs convcore built with CUDA and a GPU)",
    )
    ap.add_argument(
        "--data",
        metavar="DIR",
        help="Fashion-MNIST folder (default: search path, see python -m convcore.data --help)",
    )
    ap.add_argument(
        "--out",
        metavar="DIR",
        help="output folder (default runs/<model>-<date>-<time>, "
        "or the checkpoint's folder with --resume)",
    )
    ap.add_argument("--resume", metavar="CHECKPOINT", help="continue from a checkpoint")
    ap.add_argument("--limit-train", type=int, metavar="N", help="train on the first N images only")
    ap.add_argument(
        "--limit-test", type=int, metavar="N", help="evaluate on the first N test images only"
    )
    ap.add_argument(
        "--progress",
        choices=("auto", "bar", "lines", "none"),
        default="auto",
        help="progress display (default: a bar on a terminal, else lines)",
    )
    ap.add_argument("--no-plots", action="store_true", help="do not draw the PNG pictures")
    return ap


def main(argv=None) -> int:
    started = time.perf_counter()  # the run's clock: data loading counts
    args = _parser().parse_args(argv)
    from . import cuda
    from ._runtime import set_num_threads

    if args.threads is not None:
        if args.threads < 1:
            print("error: --threads must be >= 1", file=sys.stderr)
            return 2  # EXIT_USAGE
        set_num_threads(args.threads)
    config = {k: getattr(args, k) for k in DEFAULTS}
    if args.out:
        out = Path(args.out)
    elif args.resume:
        out = Path(args.resume).parent
    else:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        name = args.model or (RECIPES[args.recipe]["model"] if args.recipe else DEFAULTS["model"])
        out = Path("runs") / f"{name}-{stamp}"
    from ._cli import EXIT_BAD_FILE, EXIT_FAILED, EXIT_USAGE, error

    if args.resume is not None:
        try:  # the whole checkpoint is validated before the data loads
            ckpt_io.load(args.resume)
        except ckpt_io.CheckpointError as e:
            error(e)
            return EXIT_BAD_FILE
    try:
        _resolve_device(args.device)  # before loading the data
        data = load_fashion_mnist(args.data)
        run(
            config,
            out,
            data=data,
            resume=args.resume,
            progress=args.progress,
            plots=not args.no_plots,
            limit_test=args.limit_test,
            device=args.device,
            log=lambda s: print(s, flush=True),
            started=started,
        )
    except DataError as e:
        error(e)
        return EXIT_BAD_FILE
    except (UsageError, _Stop) as e:
        error(e)
        return EXIT_USAGE
    except cuda.CudaError as e:  # out of GPU memory, a failed kernel...
        error(e)
        return EXIT_FAILED
    except KeyboardInterrupt:
        done = sorted(out.glob("checkpoint-epoch*.npz"))
        hint = f"; continue with --resume {done[-1]}" if done else ""
        print(f"\ninterrupted{hint}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

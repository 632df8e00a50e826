"""The two Fashion-MNIST networks, built by name.

``tutorial`` is the classic network of the PyTorch tutorials on this data
set (33 thousand parameters); ``wide`` is a small VGG-style network
(3x3 convolutions, 0.87 million parameters) that trades time for
accuracy; ``wide-bn`` is ``wide`` with batch normalisation after each
convolution (the speedrun's network: it learns in 5 epochs what ``wide``
learns in 10).  Both take (N, 1, 28, 28) float32 images and return (N, 10) logits.

Seeds: ``numpy.random.SeedSequence(seed)`` is split into independent
streams by spawn key: child 0 draws the initial weights, child 1 the dropout
masks, child 2 (used by :mod:`convcore.train`) the order of the training
images.  The same seed therefore gives the same run, and changing the
architecture does not change the data order.
"""

from __future__ import annotations

import numpy as np

from . import nn

__all__ = ["CPU_ONLY", "NAMES", "DEFAULT_DROPOUT", "build", "seed_stream"]

NAMES = ("tutorial", "wide", "wide-bn")

#: Networks with layers that have no GPU kernel yet (batch norm): they train
#: on the CPU only.
CPU_ONLY = ("wide-bn",)

#: Dropout before the last layer when ``build`` is given ``dropout=None``.
DEFAULT_DROPOUT = {"tutorial": 0.0, "wide": 0.5, "wide-bn": 0.3}


def seed_stream(seed: int, index: int) -> np.random.Generator:
    """Generator for stream ``index`` of ``seed`` (0 weights, 1 dropout, 2 data order)."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(index,)))


def build(name: str, seed: int = 0, dropout: float | None = None) -> nn.Sequential:
    """Build a network with freshly initialised weights.

    Args:
        name: ``'tutorial'``: conv 1->6 k5, ReLU, maxpool 2, conv 6->12 k5,
            ReLU, maxpool 2, flatten (192), linear 120, ReLU, linear 60, ReLU,
            linear 10.  ``'wide'``: conv 1->32 k3 p1, ReLU, conv 32->32 k3 p1,
            ReLU, maxpool 2, conv 32->64 k3 p1, ReLU, conv 64->64 k3 p1, ReLU,
            maxpool 2, flatten (3136), linear 256, ReLU, dropout, linear 10.
            ``'wide-bn'``: ``wide`` with each convolution's bias and ReLU
            replaced by a batch norm fused with its ReLU
            (``nn.BatchNorm2d(relu=True)``; in PyTorch a ``BatchNorm2d``
            then a ``ReLU``), and dropout 0.3.
        seed: seeds the initial weights (and the dropout masks).
        dropout: probability of the wide model's dropout layer (default 0.5);
            the tutorial model has none, so only 0 or None is accepted there.

    Returns:
        A :class:`convcore.nn.Sequential` in training mode whose parameter
        names match the equivalent ``torch.nn.Sequential`` ('0.weight', ...).
        Its ``input_grad`` is False: ``backward`` returns None and skips the
        gradient with respect to the images (set ``model.input_grad = True``
        to get it).  Its parameters are packed into one buffer
        (:meth:`convcore.nn.Module.pack_parameters`), so optimisers update
        them with one call per step.
    """
    if name not in NAMES:
        raise ValueError(f"name: unknown model {name!r}; expected one of {', '.join(NAMES)}")
    if dropout is None:
        dropout = DEFAULT_DROPOUT[name]
    dropout = float(dropout)
    init = seed_stream(seed, 0)
    if name == "tutorial":
        if dropout != 0.0:
            raise ValueError("dropout: the tutorial model has no dropout layer; use 0 or None")
        model = nn.Sequential(
            nn.Conv2d(1, 6, 5, rng=init),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 12, 5, rng=init),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(12 * 4 * 4, 120, rng=init),
            nn.ReLU(inplace=True),
            nn.Linear(120, 60, rng=init),
            nn.ReLU(inplace=True),
            nn.Linear(60, 10, rng=init),
        )
    else:  # wide and wide-bn: the same stack, with or without batch norm

        def block(c, k):
            if name == "wide":
                return [nn.Conv2d(c, k, 3, padding=1, rng=init), nn.ReLU(inplace=True)]
            return [
                nn.Conv2d(c, k, 3, padding=1, bias=False, rng=init),
                nn.BatchNorm2d(k, relu=True),
            ]

        model = nn.Sequential(
            *block(1, 32),
            *block(32, 32),
            nn.MaxPool2d(2),
            *block(32, 64),
            *block(64, 64),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 256, rng=init),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout, rng=seed_stream(seed, 1)),
            nn.Linear(256, 10, rng=init),
        )
    model.input_grad = False
    model.pack_parameters()
    return model

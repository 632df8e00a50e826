"""``python -m convcore COMMAND ...``: train, evaluate, predict, or data."""

from __future__ import annotations

import sys

COMMANDS = {
    "train": ("convcore.train", "train a network on Fashion-MNIST (also: convcore-train)"),
    "evaluate": ("convcore.evaluate", "test accuracy and per-class table of a checkpoint"),
    "predict": ("convcore.predict", "classify 28x28 greyscale images with a checkpoint"),
    "data": ("convcore.data", "find, download if needed, and verify Fashion-MNIST"),
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        print("usage: python -m convcore {train,evaluate,predict,data} [--help] ...\n")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<9} {text}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    import importlib

    module = importlib.import_module(COMMANDS[argv[0]][0])
    entry = getattr(module, "main", None) or module._main
    return entry(argv[1:])


if __name__ == "__main__":
    sys.exit(main())

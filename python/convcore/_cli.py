"""Exit statuses and the error line shared by the commands (private).

Every command (``convcore-train``, ``python -m convcore.evaluate``,
``python -m convcore.predict``, ``python -m convcore.data``) ends with:

- 0 on success;
- :data:`EXIT_BAD_FILE` (1) when a file it reads is missing, unreadable or
  damaged (checkpoint, image, ``.npy``, data set);
- :data:`EXIT_FAILED` (also 1) when the run itself failed (a GPU error);
- :data:`EXIT_USAGE` (2) for bad arguments or settings (argparse's code).

A bad file is reported as one line on stderr,
``error: <file>: <what is wrong>; <what was expected>``, never a traceback.
"""

from __future__ import annotations

import sys

EXIT_OK = 0
EXIT_BAD_FILE = 1
EXIT_FAILED = 1
EXIT_USAGE = 2


def error(message) -> None:
    """Print ``error: <message>`` on stderr."""
    print(f"error: {message}", file=sys.stderr, flush=True)

"""A crash-free fuzz of every public function (see tests/fuzz.py).

CI runs a short, fixed budget; ``CONVCORE_FUZZ_CASES`` and
``CONVCORE_FUZZ_SEED`` change it (``python tests/fuzz.py --seconds 600`` is
the long run).  The harness itself is checked: a case that segfaults,
aborts or hangs must be reported with its number, and fuzzing must go on
after it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import fuzz  # noqa: E402

CASES = int(os.environ.get("CONVCORE_FUZZ_CASES", "1500"))
SEED = int(os.environ.get("CONVCORE_FUZZ_SEED", "0"))


def test_public_functions_never_crash_or_hang():
    summary = fuzz.fuzz(SEED, CASES, None, timeout=120, log=lambda s: None)
    assert summary["cases"] == CASES
    assert summary["failures"] == [], summary["failures"]
    # Every class of call ran, and the kernels did run (not only refusals).
    assert set(summary["outcomes"]) == {c[0] for c in fuzz.CASES}
    for op in (
        "conv2d",
        "conv2d_backward",
        "max_pool2d",
        "max_pool2d_backward",
        "pad",
        "batch_norm",
    ):
        assert summary["outcomes"][op].get("ok", 0) > 0, (op, summary["outcomes"][op])


@pytest.mark.parametrize("kind", ["segfault", "abort", "hang"])
def test_the_harness_reports_crashes_and_hangs(kind, monkeypatch):
    monkeypatch.setenv("CONVCORE_FUZZ_SELFTEST", kind)
    summary = fuzz.fuzz(
        0, 8, None, batch=8, timeout=5 if kind == "hang" else 60, log=lambda s: None
    )
    assert [f["case"] for f in summary["failures"]] == [3]
    failure = summary["failures"][0]
    assert failure["what"] == "hang" if kind == "hang" else "signal" in failure["what"]
    assert "--case 3" in failure["replay"]
    assert summary["cases"] == 8  # the cases after the crash ran in a new child

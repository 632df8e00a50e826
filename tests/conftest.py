"""Shared pytest setup for convcore's tests.

* PyTorch is the oracle.  With ``CI=true`` a missing (or broken) PyTorch is
  a failure of the whole run; locally, tests marked ``torch`` (and every
  test in the kernel test modules) are skipped with the import error as the
  reason.  Mark a test that needs PyTorch with ``@pytest.mark.torch``.
* Hypothesis: profile ``ci`` (derandomized, so CI is reproducible) when
  ``CI=true``, else ``dev``; ``CONVCORE_HYPOTHESIS_SCALE`` multiplies every
  test's ``max_examples`` (``oracle.examples``), for example 0.1 under the
  sanitizers.  Deadlines are off: a shared 2-core machine has noisy timing.
* ``CONVCORE_REQUIRE_GPU=1`` (bench/gpu_check.sh sets it): a GPU test that
  skips fails instead, with the skip's reason, so a GPU run cannot pass with
  zero GPU coverage.  GPU tests are those marked ``gpu`` (test_cuda.py's
  ``@gpu``), the ``cuda`` half of test_training_device.py's ``gpu`` fixture,
  and any test whose skip reason says there is no CUDA device.
* Every test starts with the ISA cap and thread count it found and gets
  them back afterwards, whatever it changed.
* At the end of the session, a summary of the oracle checks: per op and
  output, how many ran, how many hypothesis generated, the largest error
  (absolute, in units of u * scale, and as a fraction of the bound).  With
  ``CONVCORE_TEST_REPORT=path`` the same summary is written as JSON.
"""

from __future__ import annotations

import json
import os

import pytest

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REQUIRE_GPU = os.environ.get("CONVCORE_REQUIRE_GPU", "").lower() in ("1", "true", "yes")
# Skip reasons that mean "this ran without a usable GPU" (convcore.cuda's
# unavailable reasons, a PyTorch without CUDA).
GPU_SKIP_REASONS = ("no CUDA device", "has no CUDA")

try:
    import torch  # noqa: F401

    TORCH_ERROR = None
except Exception as e:  # ImportError, or a broken install (OSError, ...)
    TORCH_ERROR = f"{type(e).__name__}: {e}"

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if CI else "dev"))

import convcore  # noqa: E402
import oracle  # noqa: E402

if TORCH_ERROR is None:
    # The oracle's problems are small: PyTorch on one thread.  Its OpenMP
    # teams on a busy 2-core machine otherwise stall for up to a second per
    # call.  PyTorch and convcore share libgomp, and torch.set_num_threads
    # changes OpenMP's default, so convcore's count is pinned explicitly to
    # what it was (the tests that need another count set it themselves).
    _threads = convcore.get_num_threads()
    torch.set_num_threads(1)
    convcore.set_num_threads(_threads)

# Test modules whose every test needs the PyTorch oracle.
_TORCH_MODULES = {"test_conv2d.py", "test_pool.py", "test_pad.py"}


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "torch: the test needs PyTorch (a failure in CI when missing)"
    )
    config.addinivalue_line(
        "markers", "gpu: the test needs a CUDA device (a failure under CONVCORE_REQUIRE_GPU=1)"
    )
    # The test process is a program like convcore-train: one BLAS thread
    # beside convcore's OpenMP threads (see convcore.tune_process), so the
    # Linear layers do not fight the kernels for the two cores.
    convcore.tune_process()
    if TORCH_ERROR is not None and CI:
        raise pytest.UsageError(
            f"CI=true but PyTorch, the test oracle, cannot be imported ({TORCH_ERROR}); "
            "install it with pip install '.[test]'"
        )


def _is_gpu_test(item) -> bool:
    params = getattr(item, "callspec", None)
    return item.get_closest_marker("gpu") is not None or (
        params is not None and params.params.get("gpu") == "cuda"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if not REQUIRE_GPU:
        return
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if _is_gpu_test(item) or any(r in reason for r in GPU_SKIP_REASONS):
        report.outcome = "failed"
        report.longrepr = f"CONVCORE_REQUIRE_GPU=1: a GPU test was skipped: {reason}"


def pytest_collection_modifyitems(config, items):
    if TORCH_ERROR is None:
        return
    skip = pytest.mark.skip(reason=f"PyTorch (the oracle) is not importable: {TORCH_ERROR}")
    for item in items:
        if item.get_closest_marker("torch") or item.path.name in _TORCH_MODULES:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_runtime():
    isa = convcore._core.active_isa()
    threads = convcore.get_num_threads()
    yield
    convcore.set_max_isa(isa)
    convcore.set_num_threads(threads)


@pytest.fixture(params=oracle.ISAS)
def isa(request):
    """Each instruction-set path in turn; the cap is restored afterwards."""
    name = request.param
    if name not in oracle.available_isas():
        info = convcore.build_info()
        if name not in info["isa_compiled"]:
            pytest.skip(f"convcore was built without {name} kernels ({info['isa_compiled']})")
        pytest.skip(f"the CPU does not support {name} (isa_detected={info['isa_detected']!r})")
    with oracle.isa_cap(name):
        yield name


@pytest.fixture(scope="module")
def fmnist():
    """The four Fashion-MNIST arrays from disk (apt-get install
    dataset-fashion-mnist); a failure in CI when missing, else a skip."""
    from convcore import data

    try:
        return data.load_fashion_mnist(download=False, progress=False)
    except data.DataError as e:
        if CI:
            pytest.fail(f"Fashion-MNIST is required in CI: {e}")
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


@pytest.fixture
def one_thread():
    """Kernels on one thread (training tests: on a busy two-core machine an
    OpenMP team of two waits in steps of milliseconds)."""
    before = convcore.get_num_threads()
    convcore.set_num_threads(1)
    yield
    convcore.set_num_threads(before)


def _summary() -> dict:
    ops = {
        key: {
            "checks": s.checks,
            "generated": s.generated,
            "max_abs_error": s.max_abs,
            "max_error_in_u_times_scale": s.max_rel_scale,
            "max_error_over_bound": s.max_bound_ratio,
            "worst_case": s.worst_case,
        }
        for key, s in sorted(oracle.STATS.items())
    }
    return {
        "ops": ops,
        "generated_examples_per_test": dict(sorted(oracle.GENERATED_BY_TEST.items())),
        "generated_examples_total": sum(oracle.GENERATED_BY_TEST.values()),
    }


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not oracle.STATS and not oracle.GENERATED_BY_TEST:
        return
    data = _summary()
    tr = terminalreporter
    tr.section("convcore oracle summary")
    tr.write_line(
        f"{'op.output':34} {'checks':>7} {'generated':>9} {'max |err|':>10} "
        f"{'err/(u*scale)':>13} {'err/bound':>9}"
    )
    for key, s in data["ops"].items():
        tr.write_line(
            f"{key:34} {s['checks']:7d} {s['generated']:9d} {s['max_abs_error']:10.3e} "
            f"{s['max_error_in_u_times_scale']:13.2f} {s['max_error_over_bound']:9.4f}"
        )
    tr.write_line(
        f"hypothesis examples run: {data['generated_examples_total']} "
        f"over {len(data['generated_examples_per_test'])} tests"
    )
    for name, n in data["generated_examples_per_test"].items():
        tr.write_line(f"  {name}: {n}")
    path = os.environ.get("CONVCORE_TEST_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(data, f, indent=1)
        tr.write_line(f"written to {path}")

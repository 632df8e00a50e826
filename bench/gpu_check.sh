#!/usr/bin/env bash
# Everything the CUDA path must show, in one command, on a bare GPU machine:
#
#   CONVCORE_DATA=/path/to/fashion-mnist bash bench/gpu_check.sh RESULTS_DIR
#
#   1 versions     GPU, driver, nvcc, cmake, Python, torch
#   2 install      convcore with CONVCORE_CUDA=ON, --no-build-isolation, into a
#                  venv (build/gpu-check-venv, sees the system packages);
#                  build_info() and cuda.is_available()
#   3 tests        tests/test_cuda.py, then tests/test_training_device.py and
#                  tests/test_fake_cuda.py, with CONVCORE_REQUIRE_GPU=1 (a
#                  skipped GPU test fails)
#   4 compare      bench/cuda_vs_host.py (GPU against the host, op by op) and
#                  bench/cuda.py --json (against PyTorch/cuDNN, TF32 off)
#   5 train        convcore-train --device cuda: 2 epochs of the tutorial model,
#                  then 1 of the wide model, from $CONVCORE_DATA; images/s
#   6 sanitizer    compute-sanitizer --tool memcheck on a small test subset,
#                  where the tool exists and works
#
# Every log and JSON goes into RESULTS_DIR, with summary.txt (step, status,
# seconds, key numbers) and summary.json.  Each step runs under its own time
# limit, clipped to what is left of a 440 s budget (the short helper commands
# between steps too), so it ends within 8 minutes whatever fails; CONVCORE_CHECK_TIME_SCALE=N multiplies every limit (a slow machine).
# Offline: nothing is downloaded (pip --no-index, no apt).
#
# CONVCORE_CHECK_FORCE=1 runs the GPU steps even without a GPU, to test the
# script itself (they fail there).
#
# Exit status: 0 when no step failed or timed out (skips are listed in the
# summary: without a GPU every GPU step skips with the reason, so a dry run
# on a machine with nvcc but no GPU exits 0); 1 otherwise; 2 on bad usage.
set -uo pipefail

if [ $# -ne 1 ]; then
  echo "usage: [CONVCORE_DATA=DIR] bash bench/gpu_check.sh RESULTS_DIR" >&2
  exit 2
fi
if [ -n "${CONVCORE_DATA:-}" ] && [ -d "$CONVCORE_DATA" ]; then
  CONVCORE_DATA=$(cd "$CONVCORE_DATA" && pwd) # relative to where it was called
  export CONVCORE_DATA
fi
cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
mkdir -p "$1" || exit 2
R=$(cd "$1" && pwd)
START=$SECONDS
SCALE=${CONVCORE_CHECK_TIME_SCALE:-1}
BUDGET=$((440 * SCALE))
PY=${PYTHON:-python3}
VENV="$ROOT/build/gpu-check-venv"
VPY="$VENV/bin/python"
SUMMARY="$R/summary.txt"
: >"$R/steps.tsv"
export PYTHONUNBUFFERED=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi

# record STEP STATUS SECONDS KEY-NUMBERS
record() {
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$R/steps.tsv"
  printf '[%4ds] %-22s %-7s %4ss  %s\n' "$((SECONDS - START))" "$1" "$2" "$3" "$4"
}

# limited STEP LIMIT LOG CMD...: runs CMD under min(LIMIT*SCALE, what is left
# of the budget), output to LOG; sets RC (124: timed out) and SECS.
limited() {
  local step=$1 limit=$(($2 * SCALE)) log=$3
  shift 3
  local left=$((BUDGET - (SECONDS - START)))
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$SECONDS
  if [ "$limit" -lt 5 ]; then
    echo "no time left in the ${BUDGET} s budget" >"$log"
    RC=124
  else
    echo "\$ $* (limit ${limit} s)" >"$log"
    timeout --kill-after=5 "$limit" "$@" >>"$log" 2>&1 </dev/null
    RC=$?
    [ "$RC" -eq 137 ] && RC=124
  fi
  SECS=$((SECONDS - t0))
  [ "$RC" -eq 124 ] && echo "TIMEOUT after ${limit} s (step $step)" >>"$log"
}

# aux N: a limit of N seconds for a helper command, clipped to the budget left
aux() {
  local left=$((BUDGET - (SECONDS - START)))
  [ "$left" -lt "$1" ] && { [ "$left" -gt 1 ] && echo "$left" || echo 1; } || echo "$1"
}

status_of() { # RC -> PASS / FAIL / TIMEOUT
  case "$1" in 0) echo PASS ;; 124) echo TIMEOUT ;; *) echo FAIL ;; esac
}

# pytest's final counts line ("3 passed, 1 failed in 2.0s"), or the exit code
pytest_counts() {
  local line
  line=$(grep -E '^=*.* (passed|failed|error|errors|skipped|deselected|no tests ran).* in [0-9.]+s' "$1" | tail -1 | tr -d '=')
  echo "${line:-exit $2}" | sed 's/^ *//; s/ *$//'
}

echo "convcore GPU check: results in $R (budget ${BUDGET} s)"

# ---------------------------------------------------------------- 1 versions
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "git: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
  echo "host: $(uname -srm); $(nproc) CPUs"
  if command -v nvidia-smi >/dev/null 2>&1; then
    timeout 10 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
    timeout 10 nvidia-smi
  else
    echo "nvidia-smi: not found"
  fi
  echo "nvcc: $(nvcc --version 2>/dev/null | grep -i release || echo 'not found')"
  echo "cmake: $(cmake --version 2>/dev/null | head -1 || echo 'not found')"
  echo "ninja: $(ninja --version 2>/dev/null || echo 'not found')"
  echo "python: $("$PY" --version 2>&1)"
  timeout 30 "$PY" - <<'EOF'
import importlib
for name in ("numpy", "pybind11", "scikit_build_core", "pytest", "hypothesis"):
    try:
        print(f"{name}: {importlib.import_module(name).__version__}")
    except Exception as e:
        print(f"{name}: not importable ({type(e).__name__}: {e})")
try:
    import torch

    ok = torch.cuda.is_available()
    dev = torch.cuda.get_device_name(0) if ok else "-"
    print(f"torch: {torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
          f"{torch.backends.cudnn.version()}, cuda.is_available {ok}, {dev})")
except Exception as e:
    print(f"torch: not importable ({type(e).__name__}: {e})")
EOF
} >"$R/1-versions.txt" 2>&1
gpu_line=$(grep -m1 -v -e '^date' -e '^git' -e '^host' "$R/1-versions.txt" | head -1)
record versions INFO "$((SECONDS - START))" \
  "$gpu_line; $(grep -m1 '^nvcc' "$R/1-versions.txt" | sed 's/.*release/nvcc/'); $(grep -m1 '^torch' "$R/1-versions.txt" | cut -d'(' -f1)"

# ---------------------------------------------------------------- 2 install
INSTALL_OK=0
AVAILABLE=0
REASON="convcore was not installed"
if [ ! -x "$VPY" ]; then
  # --without-pip: no ensurepip needed (Debian's python3 lacks it without
  # python3-venv); the system's pip, seen through the system site packages,
  # installs into the venv it runs in.
  "$PY" -m venv --system-site-packages --without-pip "$VENV" >"$R/2-venv.log" 2>&1 ||
    echo "python -m venv failed, see 2-venv.log" >>"$R/2-venv.log"
fi
if [ -x "$VPY" ]; then
  # All cores for the build, and nvcc compiles the architectures in parallel.
  export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
  limited install 150 "$R/2-install.log" env CONVCORE_CUDA=ON CUDAFLAGS="${CUDAFLAGS:---threads=0}" \
    "$VPY" -m pip install \
    --no-build-isolation --no-deps --no-index --progress-bar off \
    -Cbuild-dir=build/gpu-check -Ccmake.define.CMAKE_INTERPROCEDURAL_OPTIMIZATION=OFF .
else
  RC=1 SECS=0
  cp "$R/2-venv.log" "$R/2-install.log" 2>/dev/null
fi
if [ "$RC" -eq 0 ]; then
  (cd "$R" && timeout "$(aux 20)" "$VPY" - >"$R/2-build-info.json" 2>"$R/2-build-info.err") <<'EOF'
import json, convcore, convcore.cuda as cc
info = convcore.build_info()
info["cuda_is_available"] = cc.is_available()
info["cuda_unavailable_reason"] = cc.unavailable_reason()
info["cuda_device_name"] = cc.device_name(0) if cc.is_available() else None
info["module"] = convcore.__file__
print(json.dumps(info, indent=1))
EOF
  if bi=$("$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(int(d["cuda"]), int(d["cuda_is_available"])); print(d["cuda_unavailable_reason"] or "-"); print(d["cuda_architectures"], d["cuda_version"])' "$R/2-build-info.json" 2>>"$R/2-build-info.err"); then
    read -r CUDA_BUILT AVAILABLE <<<"$(echo "$bi" | sed -n 1p)"
    REASON=$(echo "$bi" | sed -n 2p)
    if [ "$CUDA_BUILT" = 1 ]; then
      INSTALL_OK=1
      record install PASS "$SECS" "build_info cuda=True ($(echo "$bi" | sed -n 3p)); cuda.is_available()=$([ "$AVAILABLE" = 1 ] && echo True || echo "False: $REASON")"
    else
      record install FAIL "$SECS" "installed WITHOUT CUDA (build_info()['cuda'] is False); see 2-install.log"
    fi
  else
    record install FAIL "$SECS" "convcore does not import after the install; see 2-build-info.err"
  fi
else
  record install "$(status_of "$RC")" "$SECS" "pip install failed (exit $RC); last line: $(tail -1 "$R/2-install.log" | cut -c1-160)"
fi

# CONVCORE_CHECK_FORCE=1 runs the GPU steps even without a GPU (they then
# fail): a test of this script's own plumbing on a machine without one.
if [ "${CONVCORE_CHECK_FORCE:-0}" = 1 ] && [ "$INSTALL_OK" = 1 ] && [ "$AVAILABLE" != 1 ]; then
  echo "CONVCORE_CHECK_FORCE=1: running the GPU steps without a GPU (they will fail)"
  AVAILABLE=1
fi

# skip_or STEP: records a skip with the reason when the GPU steps cannot run;
# returns 0 when the step should run.
skip_or() {
  if [ "$INSTALL_OK" != 1 ]; then
    record "$1" SKIP 0 "convcore with CUDA was not installed (step install)"
    return 1
  fi
  if [ "$AVAILABLE" != 1 ]; then
    record "$1" SKIP 0 "no CUDA device: $REASON"
    return 1
  fi
  return 0
}

# ---------------------------------------------------------------- 3 tests
# -v: a run cut short by its limit still shows which tests ran and how.
export CONVCORE_HYPOTHESIS_SCALE=${CONVCORE_HYPOTHESIS_SCALE:-0.5}
if skip_or tests-cuda; then
  limited tests-cuda 90 "$R/3-test_cuda.log" env CONVCORE_REQUIRE_GPU=1 \
    "$VPY" -m pytest tests/test_cuda.py -v -p no:cacheprovider -rfEs --durations=10 \
    --junitxml="$R/3-test_cuda.xml"
  record tests-cuda "$(status_of "$RC")" "$SECS" "$(pytest_counts "$R/3-test_cuda.log" "$RC")"
fi
if skip_or tests-training; then
  limited tests-training 80 "$R/3-test_training_device.log" env CONVCORE_REQUIRE_GPU=1 \
    "$VPY" -m pytest tests/test_training_device.py tests/test_fake_cuda.py -v -p no:cacheprovider \
    -rfEs --durations=10 --junitxml="$R/3-test_training_device.xml"
  record tests-training "$(status_of "$RC")" "$SECS" "$(pytest_counts "$R/3-test_training_device.log" "$RC")"
fi

# ---------------------------------------------------------------- 4 compare
if skip_or host-vs-device; then
  limited host-vs-device 30 "$R/4-host-vs-device.log" "$VPY" bench/cuda_vs_host.py \
    --json "$R/4-host-vs-device.json"
  record host-vs-device "$(status_of "$RC")" "$SECS" "$(grep -E '^[0-9]+ of [0-9]+ agree' "$R/4-host-vs-device.log" || echo "exit $RC")"
fi
if skip_or bench-cuda; then
  limited bench-cuda 45 "$R/4-bench-cuda.log" "$VPY" bench/cuda.py --rounds 5 --steps 60 \
    --chunks 3 --json "$R/4-bench-cuda.json"
  key="exit $RC"
  if [ -s "$R/4-bench-cuda.json" ]; then
    key=$("$PY" - "$R/4-bench-cuda.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
parts = [f"ops geomean torch/convcore {d['ops_geomean_ratio']:.2f}"] if "ops_geomean_ratio" in d else []
for r in d.get("train", []):
    parts.append(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
parts.append(f"TF32: {d['meta'].get('torch_fp32')}")
print("; ".join(parts))
EOF
)
  fi
  record bench-cuda "$(status_of "$RC")" "$SECS" "$key"
fi

# ---------------------------------------------------------------- 5 train
DATA_OK=0
if [ "$INSTALL_OK" = 1 ]; then
  if timeout "$(aux 20)" "$VPY" -c 'from convcore import data; data.load_fashion_mnist(download=False, progress=False)' \
      >"$R/5-data.log" 2>&1; then
    DATA_OK=1
  fi
fi
train() { # NAME MODEL EPOCHS LIMIT
  if ! skip_or "$1"; then return; fi
  if [ "$DATA_OK" != 1 ]; then
    record "$1" SKIP 0 "no Fashion-MNIST files (set CONVCORE_DATA to the folder of the four .gz files; see 5-data.log)"
    return
  fi
  limited "$1" "$4" "$R/5-$1.log" "$VENV/bin/convcore-train" --device cuda --model "$2" \
    --epochs "$3" --progress none --no-plots --out "$R/5-$1"
  local key="exit $RC"
  if [ -s "$R/5-$1/metrics.json" ]; then
    cp "$R/5-$1/metrics.json" "$R/5-$1.metrics.json"
    key=$("$PY" - "$R/5-$1/metrics.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
ips = ", ".join(f"{e['images_per_second']:,.0f}" for e in m["epochs"])
print(f"images/s per epoch {ips}; test accuracy {m['test_accuracy']:.4f}")
EOF
)
  fi
  rm -f "$R/5-$1"/checkpoint-*.npz # weights: not needed in the results
  record "$1" "$(status_of "$RC")" "$SECS" "$key"
}
train train-tutorial tutorial 2 35
train train-wide wide 1 30

# ---------------------------------------------------------------- 6 sanitizer
SAN=$(command -v compute-sanitizer || true)
for c in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
  [ -z "$SAN" ] && [ -x "$c" ] && SAN=$c
done
if [ -z "$SAN" ]; then
  record memcheck SKIP 0 "compute-sanitizer not found (PATH, /usr/local/cuda)"
elif ! timeout "$(aux 10)" "$SAN" --version >"$R/6-memcheck.log" 2>&1; then
  record memcheck SKIP 0 "compute-sanitizer does not run ($SAN --version failed; see 6-memcheck.log)"
elif skip_or memcheck; then
  limited memcheck 30 "$R/6-memcheck.log" env CONVCORE_REQUIRE_GPU=1 CONVCORE_HYPOTHESIS_SCALE=0.05 \
    "$SAN" --tool memcheck --error-exitcode 99 --print-limit 20 "$VPY" -m pytest \
    tests/test_cuda.py -q -p no:cacheprovider -x -k \
    "conv_edge_cases or pool_backward_many_hits or pool_windows_in_padding or pad_constant_value or repeatable_bitwise"
  record memcheck "$(status_of "$RC")" "$SECS" "$(grep -m1 'ERROR SUMMARY' "$R/6-memcheck.log" | sed 's/^=* *//'); $(pytest_counts "$R/6-memcheck.log" "$RC")"
fi

# ---------------------------------------------------------------- summary
{
  echo "convcore GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), $((SECONDS - START)) s in all"
  printf '%-16s %-7s %5s  %s\n' step status secs "key numbers"
  while IFS=$'\t' read -r step st secs key; do
    [ ${#key} -gt 240 ] && key="${key:0:237}..." # in full in summary.json
    printf '%-16s %-7s %5s  %s\n' "$step" "$st" "$secs" "$key"
  done <"$R/steps.tsv"
} >"$SUMMARY"
"$PY" - "$R/steps.tsv" "$R/summary.json" <<'EOF'
import json, sys
rows = [dict(zip(("step", "status", "seconds", "key"), line.rstrip("\n").split("\t")))
        for line in open(sys.argv[1]) if line.strip()]
json.dump({"steps": rows}, open(sys.argv[2], "w"), indent=1)
EOF
echo
cat "$SUMMARY"
if cut -f2 "$R/steps.tsv" | grep -qE '^(FAIL|TIMEOUT)$'; then
  exit 1
fi
exit 0

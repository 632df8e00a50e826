#!/usr/bin/env bash
# Does the host emulation catch bugs in the kernels' own code?  Builds it once
# per mutant -- a copy of csrc/cuda with one deliberate bug -- and expects it
# to report failures.  Nothing in the source tree is changed.
#
#   bash csrc/cuda/emulation/mutants.sh BUILD_DIR
#
# BUILD_DIR: a Ninja build configured with CONVCORE_CUDA=ON in which target
# convcore_cuda_emulation was built (as .ci/run does).  Exit status 1 if the
# emulation passes with any mutant.
set -euo pipefail
B=$(cd "${1:?usage: mutants.sh BUILD_DIR}" && pwd)
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# The compile and link lines of the emulation, as Ninja runs them.
CMDS=$(ninja -C "$B" -t commands convcore_cuda_emulation)
COMPILE=$(grep -F 'emulation/emulate_kernels.cu' <<<"$CMDS" | grep -F -- ' -c ' | tail -1)
LINK=$(grep -F -- '-o convcore_cuda_emulation' <<<"$CMDS" | tail -1)
OBJ=CMakeFiles/convcore_cuda_emulation.dir/csrc/cuda/emulation/emulate_kernels.cu.o
if ! grep -qF -- "-I$ROOT/csrc" <<<"$COMPILE" || ! grep -qF "$OBJ" <<<"$LINK"; then
  echo "mutants.sh: unexpected build commands in $B" >&2
  exit 1
fi

# name | file under csrc/cuda | text | replacement
MUTANTS=$(cat <<'EOF'
pool backward: the leader adds its own value for every peer|maxpool2d.cu|acc += vals[lowest_lane(m)];|acc += vals[lane];
pool backward: bad-index memset byte|maxpool2d.cu|kNoBadIndexByte = 0xff;|kNoBadIndexByte = 0x7f;
grad bias: the tree starts at a quarter of the block|conv2d.cu|return (kBiasThreads / 2) >> step;|return (kBiasThreads / 4) >> step;
grad weight: the reduce drops the last chunk|conv2d.cu|for (int64_t j = 0; j < splits; ++j) acc|for (int64_t j = 0; j + 1 < splits; ++j) acc
implicit GEMM: column tiles stride twice the grid|conv2d.cu|nt < n_tiles; nt += gx)|nt < n_tiles; nt += 2 * gx)
launch plan: row-tile grid capped at 65536|conv2d.cu|std::min<int64_t>(m_tiles, 65535)|std::min<int64_t>(m_tiles, 65536)
EOF
)

survived=0
while IFS='|' read -r name file old new; do
  M="$WORK/m"
  rm -rf "$M" && mkdir -p "$M/cuda" && cp -r "$ROOT/csrc/cuda/." "$M/cuda/"
  python3 - "$M/cuda/$file" "$old" "$new" <<'PY'
import sys
path, old, new = sys.argv[1:]
text = open(path).read()
assert text.count(old) == 1, f"{path}: {old!r} found {text.count(old)} times"
open(path, "w").write(text.replace(old, new))
PY
  # The mutant's copy: its folder first on the include path, so "cuda/*.cu"
  # and "cuda/*.h" come from it; object and program in $M, so the build
  # directory is left as it was.
  c=${COMPILE//"$ROOT/csrc/cuda/emulation/emulate_kernels.cu"/"$M/cuda/emulation/emulate_kernels.cu"}
  c=${c//"-I$ROOT/csrc"/"-I$M -I$ROOT/csrc"}
  c=${c//"$OBJ"/"$M/emu.o"}
  l=${LINK//"$OBJ"/"$M/emu.o"}
  l=${l//"-o convcore_cuda_emulation"/"-o $M/emu"}
  (cd "$B" && eval "$c" && eval "$l") >"$M/build.log" 2>&1 ||
    { cat "$M/build.log" >&2; echo "mutant '$name' did not build" >&2; exit 1; }
  if "$M/emu" >"$M/out.txt" 2>&1; then
    echo "SURVIVED  $name"
    survived=$((survived + 1))
  else
    echo "caught    $name: $(tail -1 "$M/out.txt"); first: $(grep -m1 FAIL "$M/out.txt" | cut -c1-110)"
  fi
done <<<"$MUTANTS"
[ "$survived" -eq 0 ]

#!/usr/bin/env bash
# Formatting check (STYLE.md: clang-format for C++ and CUDA, ruff for Python).
#
#   tools/check_format.sh          check; exit 1 and list the files that differ
#   tools/check_format.sh --fix    rewrite the files in place
#   tools/check_format.sh FILE...  only these files
#
# Uses the repository's .clang-format and pyproject.toml.  clang-format comes
# from the distribution (apt-get install clang-format); CLANG_FORMAT picks
# another binary.
set -euo pipefail
cd "$(dirname "$0")/.."

fix=0
if [[ "${1:-}" == "--fix" ]]; then
  fix=1
  shift
fi
clang_format="${CLANG_FORMAT:-clang-format}"
if ! command -v "$clang_format" >/dev/null; then
  echo "check_format: $clang_format not found (apt-get install clang-format)" >&2
  exit 2
fi

if [[ $# -gt 0 ]]; then
  files=("$@")
else
  mapfile -t files < <(git ls-files -- '*.h' '*.hpp' '*.cpp' '*.cc' '*.cu' '*.cuh' '*.py')
fi
cxx=()
py=()
for f in "${files[@]}"; do
  case "$f" in
    *.py) py+=("$f") ;;
    *) cxx+=("$f") ;;
  esac
done

status=0
if [[ ${#cxx[@]} -gt 0 ]]; then
  if [[ $fix -eq 1 ]]; then
    "$clang_format" -i --style=file "${cxx[@]}"
  else
    bad=()
    for f in "${cxx[@]}"; do
      "$clang_format" --style=file --dry-run --Werror "$f" >/dev/null 2>&1 || bad+=("$f")
    done
    if [[ ${#bad[@]} -gt 0 ]]; then
      printf 'not clang-formatted: %s\n' "${bad[@]}" >&2
      echo "(run tools/check_format.sh --fix, or see: $clang_format --style=file FILE | diff FILE -)" >&2
      status=1
    fi
  fi
fi
if [[ ${#py[@]} -gt 0 ]]; then
  if [[ $fix -eq 1 ]]; then
    ruff format --quiet "${py[@]}"
  else
    ruff format --check --quiet "${py[@]}" || status=1
  fi
fi
exit $status

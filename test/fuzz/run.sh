#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, H2REV_FUZZ=ON) and runs each for a
# bounded time on a copy of its seed corpus (test/fuzz/corpus/<stem>), after
# the inputs of test/fuzz/crashes/<stem>-* (known and fixed crashes: none may
# crash). Fails when a target crashes; the input is kept in
# <build>/fuzz-artifacts. Environment: FUZZ_SECONDS (per target, default 60),
# FUZZ_BUILD (build directory, default build-fuzz), FUZZ_TARGETS (stems,
# default all).
set -euo pipefail
cd "$(dirname "$0")/../.."

secs=${FUZZ_SECONDS:-60}
build=${FUZZ_BUILD:-build-fuzz}

CC=clang cmake -S . -B "$build" -DH2REV_FUZZ=ON -DBUILD_TESTING=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j2 --target fuzz

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$build/fuzz-artifacts"
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

targets=${FUZZ_TARGETS:-$(for f in test/fuzz/fuzz-*.c; do f=${f##*/fuzz-}; echo "${f%.c}"; done)}
failed=()
for stem in $targets; do
  exe="$build/test/fuzz/fuzz-$stem"
  mkdir -p "$work/$stem"
  cp test/fuzz/corpus/"$stem"/* "$work/$stem/"
  known=(test/fuzz/crashes/"$stem"-*)
  if [ -e "${known[0]}" ] && ! "$exe" "${known[@]}" >"$work/$stem.known.log" 2>&1; then
    echo "fuzz-$stem: an input of test/fuzz/crashes crashes it:" >&2
    tail -n 40 "$work/$stem.known.log" >&2
    failed+=("$stem")
    continue
  fi
  echo "+ fuzz-$stem for ${secs}s" >&2
  stamp="$work/$stem.start"
  touch "$stamp"
  rc=0
  "$exe" -max_total_time="$secs" -print_final_stats=1 \
    -artifact_prefix="$build/fuzz-artifacts/$stem-" "$work/$stem" >"$work/$stem.log" 2>&1 || rc=$?
  if [ "$rc" = 0 ]; then
    grep -E '^#[0-9]+ +DONE' "$work/$stem.log" | tail -n 1 >&2 || true
  elif [ -z "$(find "$build/fuzz-artifacts" -name "$stem-*" -newer "$stamp" 2>/dev/null)" ]; then
    # Killed by a signal libFuzzer does not catch, or exited: no input to show.
    echo "fuzz-$stem: died with exit status $rc and left no input:" >&2
    grep -v -E '^#[0-9]+ +(NEW|REDUCE|pulse)|NEW_FUNC' "$work/$stem.log" | tail -n 20 >&2
    failed+=("$stem")
  else
    echo "fuzz-$stem: crashed (input in $build/fuzz-artifacts):" >&2
    grep -v -E '^#[0-9]+ +(NEW|REDUCE|pulse)|NEW_FUNC' "$work/$stem.log" | tail -n 60 >&2
    # The whole-tunnel targets carry state from one input to the next (pooled
    # connections, timing): an input that does not crash again, alone, three
    # times, is reported and kept, not counted as a failure.
    crash=$(ls -t "$build/fuzz-artifacts/$stem"-* | head -n 1)
    again=0
    for _ in 1 2 3; do
      [ -n "$crash" ] && ! "$exe" "$crash" >/dev/null 2>&1 && again=1
    done
    if [ "$again" = 1 ] || [ -z "$crash" ]; then
      failed+=("$stem")
    else
      echo "fuzz-$stem: $crash does not crash again alone: not counted (look at it)" >&2
    fi
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failed: ${failed[*]}" >&2
  exit 1
fi

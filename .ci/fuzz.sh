#!/usr/bin/env bash
# Fuzz run for CI (docs/fuzzing.md): builds every cargo-fuzz target in
# fuzz/ and runs each for a bounded time, seeded with a copy of its corpus
# in fuzz/corpus/<target> (the repository's corpus is not grown).
#
#   .ci/fuzz.sh [SECONDS_PER_TARGET]      default 20
#
# Fails (exit 1) when any target crashes (a panic is a failed property),
# takes more than 100 ms on one input (LEASEGATE_FUZZ_MAX_MS, measured by
# the targets themselves; libFuzzer's -timeout=1 catches hangs), or runs
# out of memory. Prints the executions of each target. A failing input is
# kept in fuzz/artifacts/<target>/ with the command that replays it.
#
# Works as root on a fresh Debian with only a rustup toolchain: installs a
# C++ compiler (libFuzzer is C++) and cargo-fuzz when missing. A stable
# toolchain is enough: RUSTC_BOOTSTRAP=1 lets cargo fuzz pass its -Z
# flags. Environment: FUZZ_JOBS (targets run at once; default: 2 or the
# number of CPUs if fewer), LEASEGATE_FUZZ_KNOWN (reported bugs to step
# over, comma-separated; see docs/fuzzing.md), CARGO_TARGET_DIR (default
# fuzz/target).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-20}
case $seconds in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET]" >&2; exit 2 ;;
esac
export RUSTC_BOOTSTRAP=1
export LEASEGATE_FUZZ_MAX_MS=${LEASEGATE_FUZZ_MAX_MS:-100}
# SQLite and ring are C; nothing fuzzed runs SQLite, and optimizing its
# 250,000 lines took a third of the build.
export CFLAGS="${CFLAGS:-} -O0 -g0"
cargo_fuzz_version=0.13.2
started=$(date +%s)

echo "== fuzz: tools"
if ! command -v c++ >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++ >/dev/null
  else
    echo "fuzz: no C++ compiler (c++); install g++" >&2
    exit 1
  fi
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  # --debug: it only drives cargo and libFuzzer; 20 s instead of minutes.
  cargo install cargo-fuzz --locked --debug --version "$cargo_fuzz_version"
fi
cargo fuzz --version

echo "== fuzz: build (release, debug assertions, no sanitizer)"
# -s none: leasegate has no unsafe code, and AddressSanitizer doubled the
# time per input, which made the 100 ms bound depend on the machine's load
# (figures in docs/fuzzing.md).
cargo fuzz build -O -a -s none
# The seed maker is no target, so the build above does not see it; it
# went stale once when modules moved.
echo "== fuzz: the seed maker still compiles"
cargo check --quiet --manifest-path fuzz/Cargo.toml --example make_seeds
host=$(rustc -vV | sed -n 's/^host: //p')
bin_dir="${CARGO_TARGET_DIR:-fuzz/target}"
case $bin_dir in /*) ;; *) bin_dir="$PWD/$bin_dir" ;; esac
bin_dir="$bin_dir/$host/release"
built=$(date +%s)

mapfile -t targets < <(cargo fuzz list)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/tmp"

# One target: its own copy of the corpus, its own TMPDIR (the spool target
# writes segment files there), artifacts kept in fuzz/artifacts/<target>/.
run_target() {
  local t=$1
  local corpus="$work/corpus/$t" art="$PWD/fuzz/artifacts/$t"
  rm -rf "$art"
  mkdir -p "$corpus" "$art" "$work/tmp/$t"
  if [ -d "fuzz/corpus/$t" ]; then
    cp -r "fuzz/corpus/$t/." "$corpus/"
  fi
  local rc=0
  TMPDIR="$work/tmp/$t" "$bin_dir/$t" "$corpus" \
    -max_total_time="$seconds" -timeout=1 -rss_limit_mb=2048 \
    -artifact_prefix="$art/" -print_final_stats=1 \
    >"$work/$t.log" 2>&1 || rc=$?
  echo "$rc" >"$work/$t.rc"
}

jobs_max=${FUZZ_JOBS:-$(($(nproc) < 2 ? $(nproc) : 2))}
echo "== fuzz: ${#targets[@]} targets, ${seconds}s each, $jobs_max at a time"
running=0
for t in "${targets[@]}"; do
  if [ "$running" -ge "$jobs_max" ]; then
    wait -n || true
    running=$((running - 1))
  fi
  run_target "$t" &
  running=$((running + 1))
done
wait

failed=()
total=0
printf '%-18s %12s %8s %10s  %s\n' target executions seconds "exec/s" result
for t in "${targets[@]}"; do
  rc=$(cat "$work/$t.rc")
  done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$work/$t.log" | tail -n1 || true)
  runs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$work/$t.log" | tail -n1)
  runs=${runs:-$(echo "$done_line" | sed -nE 's/^Done ([0-9]+) runs.*/\1/p')}
  runs=${runs:-0}
  secs=$(echo "$done_line" | sed -nE 's/.* in ([0-9]+) second.*/\1/p')
  secs=${secs:-?}
  rate=?
  if [ "$secs" != "?" ] && [ "$secs" -gt 0 ]; then rate=$((runs / secs)); fi
  total=$((total + runs))
  if [ "$rc" = 0 ]; then
    result=ok
  else
    result="FAILED (exit $rc)"
    failed+=("$t")
  fi
  printf '%-18s %12s %8s %10s  %s\n' "$t" "$runs" "$secs" "$rate" "$result"
done
echo "total executions: $total; build $((built - started)) s, all $(( $(date +%s) - started )) s"

for t in "${failed[@]}"; do
  echo
  echo "== fuzz: $t FAILED"
  grep -m1 -A8 'panicked at' "$work/$t.log" | grep -vE '^stack backtrace' || true
  echo "-- the end of its log (without progress lines and backtrace frames):"
  grep -vE '^#[0-9]+[[:space:]]|^ +[0-9]+: |^ +at ' "$work/$t.log" | tail -n 25
  for a in "fuzz/artifacts/$t"/*; do
    [ -f "$a" ] || continue
    echo "-- input $a ($(wc -c <"$a") bytes), first bytes:"
    head -c 300 "$a" | od -An -c | head -n 8
    echo "-- replay: RUSTC_BOOTSTRAP=1 cargo fuzz run -O -a -s none $t $a"
  done
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: all ${#targets[@]} targets passed"

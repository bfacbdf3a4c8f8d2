#!/usr/bin/env bash
# Runs the cargo-fuzz targets one after another (docs/testing.md, "Fuzzing"): each for
# FUZZ_SECONDS (default 600), one libFuzzer job, at the lowest CPU priority, then minimises its
# corpus (cargo fuzz cmin) into fuzz/corpus/<target>/. A crash stops that target; its input is
# left in fuzz/artifacts/<target>/ and the script goes on with the next one and fails at the end.
# Usage: fuzz/run.sh [target...]   (default: every target). Needs nightly Rust and cargo-fuzz.
# Two invocations with different targets may run at once (each target logs to its own file).
set -uo pipefail
cd "$(dirname "$0")"
export PATH="$HOME/.cargo/bin:$PATH"
SECONDS_EACH="${FUZZ_SECONDS:-600}"
# No sanitizer: the parsers are safe Rust (a panic is what we look for, and overflow checks are
# on with -a); ASan would halve the executions per second for nothing to find.
FLAGS=(-s none -a)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
failed=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "== $t: ${SECONDS_EACH}s ($(date -u +%H:%M:%S))" >&2
  # One in-process libFuzzer run (no -jobs: with it libFuzzer logs to a shared fuzz-0.log, so two
  # invocations of this script at once would clobber each other's log). Its output, final stats
  # included, goes to fuzz-<target>.log; a crash is told by a new file in the artifacts directory.
  before=$(ls "artifacts/$t" 2>/dev/null | wc -l)
  start=$(date +%s)
  nice -n 19 cargo +nightly fuzz run "${FLAGS[@]}" "$t" "corpus/$t" -- \
      -max_total_time="$SECONDS_EACH" -max_len=8192 -rss_limit_mb=2048 \
      -print_final_stats=1 >"fuzz-$t.log" 2>&1 || true
  echo "== $t: ran $(( $(date +%s) - start ))s" >&2
  grep -E '^(stat::|Done |==[0-9]+== ERROR|SUMMARY|thread .* panicked)' "fuzz-$t.log" >&2
  after=$(ls "artifacts/$t" 2>/dev/null | wc -l)
  [ "$after" -gt "$before" ] && failed+=("$t")
  nice -n 19 cargo +nightly fuzz cmin "${FLAGS[@]}" "$t" "corpus/$t" >/dev/null 2>&1 \
    || echo "cmin $t failed" >&2
  echo "== $t: corpus $(ls "corpus/$t" | wc -l) files, $(du -sh "corpus/$t" | cut -f1)" >&2
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi

#!/usr/bin/env bash
# Runs the cargo-fuzz targets one after another (docs/testing.md, "Fuzzing"): each for
# FUZZ_SECONDS (default 600), one libFuzzer job, at the lowest CPU priority, then minimises its
# corpus (cargo fuzz cmin) into fuzz/corpus/<target>/. A crash stops that target; its input is
# left in fuzz/artifacts/<target>/ and the script goes on with the next one and fails at the end.
# Usage: fuzz/run.sh [target...]   (default: every target). Needs nightly Rust and cargo-fuzz.
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
  # -jobs=1: libFuzzer runs the job in a child and logs to fuzz-0.log; its exit status does not
  # say whether it crashed, the artifacts directory does.
  before=$(ls "artifacts/$t" 2>/dev/null | wc -l)
  nice -n 19 cargo +nightly fuzz run "${FLAGS[@]}" "$t" "corpus/$t" -- \
      -jobs=1 -max_total_time="$SECONDS_EACH" -max_len=8192 -rss_limit_mb=2048 \
      -print_final_stats=1 || true
  [ -f fuzz-0.log ] && tail -n 25 fuzz-0.log >&2 && mv fuzz-0.log "fuzz-$t.log"
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

#!/bin/sh
# The long fuzz run (tests/it/fuzz.rs): every fuzz target for SECONDS each
# (default 120), release build, at low priority, with a random seed (printed;
# set CALLLOG_FUZZ_SEED to repeat a run). A normal `cargo test` runs each
# target for about a second. An input that fails is minimised and written to
# tests/fuzz/regressions/<target>/: commit it with the fix, and every later
# run replays it.
#
#   scripts/fuzz.sh            # 2 minutes per target
#   scripts/fuzz.sh 300        # 5 minutes per target
set -eu
secs=${1:-120}
seed=${CALLLOG_FUZZ_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
cd "$(dirname "$0")/.."
echo "fuzz: ${secs} s per target, seed ${seed}"
CALLLOG_FUZZ_SECS=$secs CALLLOG_FUZZ_SEED=$seed exec nice -n 19 cargo test --release --locked --test it fuzz:: -- \
    --nocapture --test-threads="${FUZZ_THREADS:-2}"

#!/usr/bin/env bash
# The one debug build every test step uses: `cargo test --locked --no-run`
# (extra arguments are passed on, e.g. --all-targets to compile the
# benchmarks too). It prints the path of the bridge binary that build made,
# the one the integration tests run (CARGO_BIN_EXE_calllog-bridge), for the
# dashboard test and the packaging check to reuse.
#
# Why not `cargo build --bin calllog-bridge`: without the test targets,
# Cargo resolves the dependencies' features without the dev-dependencies'
# (tokio's test-util, for one) and compiles about 210 crates a second time.
# When the test build is already there, this builds nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --locked --no-run "$@" >&2
target_dir=$(cargo metadata --locked --no-deps --format-version 1 |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin="$target_dir/debug/calllog-bridge"
if [ ! -x "$bin" ]; then
    echo "test-build: no bridge binary at $bin after the test build" >&2
    exit 1
fi
echo "$bin"

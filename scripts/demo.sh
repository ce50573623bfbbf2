#!/usr/bin/env bash
# The newcomer's first minutes: build the kasbah CLI and the example and
# hostile guests, run the hello pipeline, then run every hostile guest through
# the CLI under a deny-by-default policy and print what happened to each.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -q -p kasbah
cargo build -q --target wasm32-wasip2 --profile guest -p hello -p hostile -p net-probe
KASBAH=target/debug/kasbah
G=target/wasm32-wasip2/guest

echo "== hello pipeline =="
echo "hello from kasbah" | $KASBAH run $G/hello.wasm
echo

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/data"
echo "original" > "$work/data/existing.txt"
echo "TOP-SECRET" > "$work/secret.txt"
ln -s ../secret.txt "$work/data/link"
cat > "$work/policy.toml" <<TOML
[[files]]
host = "$work/data"
guest = "/data"
mode = "ro"

[network]
allow = ["127.0.0.1:9"]

[limits]
memory_bytes = 33554432
wall_time_ms = 500
max_output_bytes = 1048576
TOML

echo "== hostile suite (policy: /data read-only, network 127.0.0.1:9 only, 32 MiB, 500 ms) =="
printf '%-14s %-18s %-18s %s\n' ATTACK EXPECTED GOT VERDICT
fail=0
probe() { # attack expected-kind input [module]
    local attack=$1 expected=$2 input=$3 module=${4:-hostile}
    local json got
    # exit status 1 = "the pipeline did not return a response": expected here.
    json=$(printf '%s' "$input" | $KASBAH run "$G/$module.wasm" --policy "$work/policy.toml" \
          --meta "attack=$attack" --json 2>/dev/null) || true
    got=$(printf '%s' "$json" | python3 -c 'import json,sys; o=json.load(sys.stdin)["outcome"]; print(o["kind"] + ("/" + o["code"] if "code" in o else ""))' 2>/dev/null \
          || echo "cli-failed")
    local verdict=contained
    [ "$got" = "$expected" ] || { verdict="UNEXPECTED"; fail=1; }
    printf '%-14s %-18s %-18s %s\n' "$attack" "$expected" "$got" "$verdict"
}
probe read-passwd  guest_error/denied ""
probe read-outside guest_error/denied "$work/secret.txt"
probe traversal    guest_error/denied "secret.txt"
probe symlink      guest_error/denied "/data/link"
probe write-ro     guest_error/denied "/data/existing.txt"
probe env          guest_error/denied "PATH"
probe loop         deadline_exceeded  ""
probe sleep        deadline_exceeded  ""
probe oom          memory_limit       ""
probe recursion    trap               ""
probe panic        trap               ""
probe giant-output output_too_large   "4194304"
probe tcp          guest_error/denied "127.0.0.1:22" net_probe
probe udp          guest_error/denied "127.0.0.1:53" net_probe
probe bind         guest_error/denied "127.0.0.1:0" net_probe
grep -q original "$work/data/existing.txt" || { echo "read-only file was modified!"; fail=1; }

echo
echo "== after all of that, hello still runs =="
echo "still serving" | $KASBAH run $G/hello.wasm 2>/dev/null
exit $fail

#!/usr/bin/env bash
# The newcomer's first minutes: build the kasbah CLI and the example and
# hostile guests; start the platform on embedded defaults (SQLite, local blob
# store) and go through its main job: an operator and a tenant, a policy,
# publish, run, refusals, usage. Then run every hostile guest through the CLI
# under a deny-by-default policy and print what happened to each. Last, the
# fleet: scripts/demo-fleet.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -q -p kasbah
cargo build -q --target wasm32-wasip2 --profile guest -p hello -p gpu-matmul -p minilm-embed -p hostile -p net-probe -p gpu-hostile
T=${CARGO_TARGET_DIR:-target}
KASBAH=$T/debug/kasbah
G=$T/wasm32-wasip2/guest

work=$(mktemp -d)
server_pid=""
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

echo "== the platform: kasbah serve on embedded defaults =="
$KASBAH serve --data-dir "$work/platform" --listen 127.0.0.1:0 > "$work/serve.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do grep -q "listening on" "$work/serve.log" 2>/dev/null && break; sleep 0.1; done
cat "$work/serve.log" | sed 's/^/  serve| /'
export KASBAH_URL=$(sed -n 's/^listening on //p' "$work/serve.log")
ADMIN=$(sed -n 's/^admin token: //p' "$work/serve.log")
step() { echo; echo "\$ kasbah $*"; }

step operator create telecom --max-tenants 10
OP=$(KASBAH_TOKEN=$ADMIN $KASBAH operator create telecom --max-tenants 10 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
echo "  operator $OP"
OPTOK=$(KASBAH_TOKEN=$ADMIN $KASBAH operator token "$OP")
step "tenant create ministry-of-health   (as the operator)"
TN=$(KASBAH_TOKEN=$OPTOK $KASBAH tenant create ministry-of-health --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
echo "  tenant $TN"
DEV=$(KASBAH_TOKEN=$OPTOK $KASBAH tenant token "$TN")
step "policy show $TN"
KASBAH_TOKEN=$OPTOK $KASBAH policy show "$TN" | sed 's/^/  /'
step "publish hello.wasm   (as the tenant's developer)"
KASBAH_TOKEN=$DEV $KASBAH publish $G/hello.wasm --version 1.0.0
HELLO=$(KASBAH_TOKEN=$DEV $KASBAH modules --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["digest"])')
step "run $HELLO"
echo "salam, bonjour, hello" | KASBAH_TOKEN=$DEV $KASBAH run "$HELLO"
RUN=$(KASBAH_TOKEN=$DEV $KASBAH runs list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
KEY=$($KASBAH audit key --data-dir "$work/platform")
step "runs receipt $RUN -o receipt.json; audit verify receipt.json --key … --module $HELLO   (offline, as a sovereign client)"
KASBAH_TOKEN=$DEV $KASBAH runs receipt "$RUN" -o "$work/receipt.json"
$KASBAH audit verify "$work/receipt.json" --key "$KEY" --module "$HELLO"

cat > "$work/gpu.toml" <<TOML
zones = ["local"]
datasets = true

[gpu]
zones = ["local"]
TOML
step "policy set $TN gpu.toml   (as the operator: residency zone 'local', datasets, the GPU in zone 'local')"
KASBAH_TOKEN=$OPTOK $KASBAH policy set "$TN" "$work/gpu.toml" | sed "s/^/  /"
step "publish gpu_matmul.wasm"
KASBAH_TOKEN=$DEV $KASBAH publish $G/gpu_matmul.wasm --version 1.0.0
MATMUL=$(KASBAH_TOKEN=$DEV $KASBAH modules --json | python3 -c 'import json,sys; print([m["digest"] for m in json.load(sys.stdin) if m["name"]=="gpu-matmul"][0])')
step "run $MATMUL   (128x128 f32 matmul on kasbah:gpu, checked against the CPU inside the guest)"
echo "128" | KASBAH_TOKEN=$DEV $KASBAH run "$MATMUL"
MODEL=$(./scripts/fetch-minilm.sh)
cat > "$work/minilm.toml" <<TOML
zones = ["local"]
datasets = true

[limits]
memory_bytes = 268435456
wall_time_ms = 300000
max_output_bytes = 4194304

[gpu]
zones = ["local"]
max_total_bytes = 536870912
max_dispatches = 1000000
TOML
step "policy set $TN minilm.toml   (room for a 90 MB model: 256 MiB memory, 512 MiB of GPU buffers)"
KASBAH_TOKEN=$OPTOK $KASBAH policy set "$TN" "$work/minilm.toml" | sed "s/^/  /"
step "dataset create model.safetensors, vocab.txt --zones local   (all-MiniLM-L6-v2 weights as residency-labelled datasets)"
KASBAH_TOKEN=$DEV $KASBAH dataset create "$MODEL/model.safetensors" --name model.safetensors --zones local
KASBAH_TOKEN=$DEV $KASBAH dataset create "$MODEL/vocab.txt" --name vocab.txt --zones local
step "publish minilm_embed.wasm"
KASBAH_TOKEN=$DEV $KASBAH publish $G/minilm_embed.wasm --version 1.0.0
MINILM=$(KASBAH_TOKEN=$DEV $KASBAH modules --json | python3 -c 'import json,sys; print([m["digest"] for m in json.load(sys.stdin) if m["name"]=="minilm-embed"][0])')
step "run $MINILM --dataset model.safetensors --dataset vocab.txt   (BERT tokenizer + 6-layer encoder on kasbah:gpu kernels)"
echo '["Patient records must stay in the country.", "Medical data may not leave national borders.", "A cat is sleeping on the sofa.", "The football match ended in a draw."]' \
    | KASBAH_TOKEN=$DEV $KASBAH run "$MINILM" --dataset model.safetensors --dataset vocab.txt --json \
    | python3 -c '
import json, sys
r = json.load(sys.stdin)
if not (r.get("outcome") or {}).get("kind") == "ok":
    sys.exit("minilm run failed: %s" % json.dumps(r.get("outcome"))[:400])
emb = json.loads(r["output"]["inline"]["bytes"])["embeddings"]
s = ["Patient records must stay in the country.", "Medical data may not leave national borders.", "A cat is sleeping on the sofa.", "The football match ended in a draw."]
print("  %d embeddings of %d floats, zone %s, adapter %s" % (len(emb), len(emb[0]), r.get("zone"), r.get("adapter")))
for i in range(1, len(emb)):
    c = sum(a * b for a, b in zip(emb[0], emb[i]))
    print("  cosine(%r, %r) = %.3f" % (s[0], s[i], c))
'
echo "reference notes, to stay in zone local" > "$work/notes.txt"
step "dataset create notes.txt --name notes --zones local   (a residency-labelled dataset)"
KASBAH_TOKEN=$DEV $KASBAH dataset create "$work/notes.txt" --name notes --zones local
step "run $HELLO --dataset notes   (placed in a zone the tenant and the dataset allow; mounted read-only at /datasets/notes)"
echo "zoned run" | KASBAH_TOKEN=$DEV $KASBAH run "$HELLO" --dataset notes
step "run $HELLO --dataset notes --input-label eu-paris-1   (refused before anything runs: no zone fits every label)"
echo "zoned run" | KASBAH_TOKEN=$DEV $KASBAH run "$HELLO" --dataset notes --input-label eu-paris-1 2>&1 | cut -c1-200 || true
step "publish net_probe.wasm   (imports wasi:sockets; the policy grants no network)"
KASBAH_TOKEN=$DEV $KASBAH publish $G/net_probe.wasm --version 1.0.0 2>&1 | cut -c1-160 || true
step "runs list"
KASBAH_TOKEN=$DEV $KASBAH runs list
step "usage   (as the operator, for billing)"
KASBAH_TOKEN=$OPTOK $KASBAH usage
step "runs list   (as the operator: refused, operators see usage only)"
KASBAH_TOKEN=$OPTOK $KASBAH runs list 2>&1 || true
AUD=$(KASBAH_TOKEN=$OPTOK $KASBAH auditor create ministry-auditor --tenant "$TN")
echo
echo "== the web console (issue 17): served by kasbah serve at / =="
echo "  open $KASBAH_URL/ and paste one of these tokens (each sees what its role may):"
echo "    admin:     $ADMIN"
echo "    operator:  $OPTOK"
echo "    developer: $DEV"
echo "    auditor:   $AUD"
echo "  as the auditor, pin the log's public key on 'Log key' first (receipts are verified in the page): $KEY"
if [ -n "${KASBAH_DEMO_CONSOLE:-}" ] && [ -t 0 ]; then
    read -r -p "  the server stays up for the console; press Enter to go on with the demo " _
else
    echo "  (this server stops when the demo moves on; KASBAH_DEMO_CONSOLE=1 make demo keeps it up until you press Enter)"
fi
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
echo
mkdir -p "$work/data" "$work/rw"
echo "original" > "$work/data/existing.txt"
echo "TOP-SECRET" > "$work/secret.txt"
ln -s ../secret.txt "$work/data/link"
cat > "$work/policy.toml" <<TOML
[[files]]
host = "$work/data"
guest = "/data"
mode = "ro"

# Scratch space for the disk attacks: bounded by limits.max_write_bytes,
# max_files_created, max_dir_depth; no symlinks.
[[files]]
host = "$work/rw"
guest = "/work"
mode = "rw"

[network]
allow = ["127.0.0.1:9"]

[limits]
memory_bytes = 33554432
wall_time_ms = 500
max_output_bytes = 1048576
TOML

echo "== hostile suite (policy: /data read-only, /work read-write, network 127.0.0.1:9 only, 32 MiB, 500 ms) =="
printf '%-18s %-18s %-18s %s\n' ATTACK EXPECTED GOT VERDICT
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
    printf '%-18s %-18s %-18s %s\n' "$attack" "$expected" "$got" "$verdict"
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
# Host resources (limits: 256 open files, 1,000 log records, 64 MiB and
# 1,000 inodes written, directories 32 deep; content type <= 256 B, error
# message cut at 4 KiB; <= 1 MiB of random bytes per call).
probe fd-flood           guest_error/denied "/data/existing.txt 2000"
probe log-flood-empty    ok                 "5000"
probe giant-error        guest_error/failed "4194304"
probe giant-content-type output_too_large   "4194304"
probe sparse-file        guest_error/denied "/work/sparse"
probe deep-tree          guest_error/denied "/work"
probe symlink-out        guest_error/denied "/work"
probe random-huge        trap               "67108864"
grep -q original "$work/data/existing.txt" || { echo "read-only file was modified!"; fail=1; }
[ "$(du -s --apparent-size -B1 "$work/rw" | cut -f1)" -lt 1048576 ] || { echo "the rw preopen grew past 1 MiB!"; fail=1; }
[ -z "$(find "$work/rw" -type l)" ] || { echo "a symlink was left in the rw preopen!"; fail=1; }

cat > "$work/gpu-policy.toml" <<TOML
[limits]
wall_time_ms = 1000

[gpu]
zones = ["local"]
TOML
echo
echo "== hostile GPU suite (policy: the GPU in zone 'local', default GPU quotas, 1 s; GPU work runs in a killable GPU process) =="
printf '%-14s %-32s %-32s %s\n' ATTACK EXPECTED GOT VERDICT
gprobe() { # label attack expected input-file
    local label=$1 attack=$2 expected=$3 input=$4
    local json got t0 t1
    t0=$(date +%s%N)
    json=$($KASBAH run "$G/gpu_hostile.wasm" --policy "$work/gpu-policy.toml" --input "$input" \
          --meta "attack=$attack" --json 2>/dev/null) || true
    t1=$(date +%s%N)
    got=$(printf '%s' "$json" | python3 -c 'import json,sys; o=json.load(sys.stdin)["outcome"]; print(o["kind"] + ("/" + o["message"].split(":")[0] if o.get("code") == "failed" else ""))' 2>/dev/null \
          || echo "cli-failed")
    local verdict=contained
    [ "$got" = "$expected" ] || { verdict="UNEXPECTED"; fail=1; }
    printf '%-14s %-32s %-32s %s (%d ms)\n' "$label" "$expected" "$got" "$verdict" $(( (t1 - t0) / 1000000 ))
}
py() { python3 -c "$1" > "$work/gpu-input"; echo "$work/gpu-input"; }
HDR='@group(0) @binding(0) var<storage, read_write> d: array<f32>;'
gprobe gpu-hog spin deadline_exceeded                "$(py 'print("65535 60000")')"
gprobe wgsl-chain compile guest_error/invalid-shader "$(py "print('$HDR @compute @workgroup_size(1) fn main() { let x = d[0]; d[0] = x' + '+x' * 100000 + '; }')")"
gprobe wgsl-private compile guest_error/invalid-shader "$(py "print('var<private> big: array<f32, 16777216>; $HDR @compute @workgroup_size(1) fn main() { big[u32(d[0])] = 1.0; d[0] = big[1]; }')")"
gprobe compile-hog compile deadline_exceeded                "$(py "print('$HDR @compute @workgroup_size(1) fn main() { var x = d[0];' + 'x = x * 1.0001 + 1.0;' * 45000 + ' d[0] = x; }')")"
gprobe gpu-dispatch dispatch-size guest_error/out-of-quota    "$(py 'print("65535 65535 1")')"
gprobe gpu-copies copy-flood guest_error/out-of-quota       "$(py 'print(4096)')"

echo
echo "== after all of that, the same CLI still runs hello =="
echo "still serving" | $KASBAH run $G/hello.wasm 2>/dev/null

# The fleet (issue 14): zone workers fed by NATS JetStream.
KASBAH=$KASBAH KASBAH_GUESTS=$G ./scripts/demo-fleet.sh || fail=1
exit $fail

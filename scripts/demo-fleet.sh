#!/usr/bin/env bash
# The fleet (issue 14) on this machine: a nats-server with JetStream on a free
# port, a control plane (`kasbah serve --nats`) and zone workers
# (`kasbah worker`): two in zone-a, one in zone-b with the GPU. Runs placed in
# each zone and executed by a worker of that zone, a residency refusal, a
# zone-a worker killed (-9) while its run executes (the other zone-a worker
# takes the job after the ack wait: one record), then zone-b's worker drained
# (SIGTERM): zone-b runs are refused, 503 no_capacity.
#
# Called at the end of scripts/demo.sh, which passes KASBAH (the CLI) and
# KASBAH_GUESTS (the guest components) when it has built them; alone, it
# builds what it needs. nats-server: $KASBAH_NATS_SERVER, else a nats-server
# 2.10+ on PATH, else what scripts/setup.sh installs
# (~/.cache/kasbah/nats-venv/bin/nats-server). KEEP_WORK=1 keeps the temporary
# directory (logs, configs, stores) and prints where it is.
set -euo pipefail
cd "$(dirname "$0")/.."

T=${CARGO_TARGET_DIR:-target}
if [ -z "${KASBAH:-}" ] || [ -z "${KASBAH_GUESTS:-}" ]; then
    cargo build -q -p kasbah
    cargo build -q --target wasm32-wasip2 --profile guest -p hello -p gpu-matmul -p hostile
fi
KASBAH=${KASBAH:-$T/debug/kasbah}
G=${KASBAH_GUESTS:-$T/wasm32-wasip2/guest}

nats_version_ok() { # a nats-server 2.10+ (Debian's 2.9 cannot create the workers KV bucket)
    "$1" --version 2>/dev/null | python3 -c '
import sys
v = sys.stdin.read().strip().removeprefix("nats-server: v").split(".")
sys.exit(0 if len(v) >= 2 and (int(v[0]), int(v[1])) >= (2, 10) else 1)' 2>/dev/null
}
NATS=${KASBAH_NATS_SERVER:-}
if [ -z "$NATS" ]; then
    for c in "$(command -v nats-server || true)" "$HOME/.cache/kasbah/nats-venv/bin/nats-server"; do
        if [ -n "$c" ] && [ -x "$c" ] && nats_version_ok "$c"; then NATS=$c; break; fi
    done
fi
[ -n "$NATS" ] || { echo "no nats-server 2.10+ found: run scripts/setup.sh" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
    local p i
    # Workers and the control plane first, nats-server last.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        p=${pids[$i]}
        kill "$p" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    [ -n "${KEEP_WORK:-}" ] && echo "kept $work" || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
t0=$(date +%s)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() { # file pattern what: wait up to 30 s for a line in a log
    for _ in $(seq 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "timed out waiting for $3; its log:" >&2; sed 's/^/  | /' "$1" >&2; exit 1
}
indent() { sed 's/^/  /'; }
step() { echo; echo "\$ kasbah $*"; }
# The worker that executed run $1, as its record names it.
ran_on() { $KASBAH runs show "$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin).get("worker") or "")'; }
# The live workers the control plane sees (GET /v1/fleet/workers), by id.
live_workers() { KASBAH_TOKEN=$ADMIN $KASBAH fleet workers --json | python3 -c 'import json,sys; print(",".join(w["id"] for w in json.load(sys.stdin)))'; }
wait_workers() { # ids (comma-separated, sorted): wait up to 30 s until exactly these are live
    for _ in $(seq 300); do [ "$(live_workers)" = "$1" ] && return 0; sleep 0.1; done
    echo "timed out waiting for live workers $1 (live: $(live_workers))" >&2; exit 1
}

echo
echo "== the fleet: nats-server (JetStream), a control plane, zone workers =="
port=$(free_port)
NATS_URL=nats://127.0.0.1:$port
"$NATS" -js -sd "$work/js" -a 127.0.0.1 -p "$port" > "$work/nats.log" 2>&1 &
pids+=($!)
wait_for "$work/nats.log" "Server is ready" "nats-server"
echo "  nats-server $("$NATS" --version | sed 's/^nats-server: //') with JetStream on $NATS_URL (store $work/js)"

cat > "$work/control-plane.toml" <<TOML
# The control plane runs nothing: its GPUs are the workers'.
[gpu]
adapters = []

[zones]
node = ["zone-a", "zone-b"]
TOML
$KASBAH serve --config "$work/control-plane.toml" --nats "$NATS_URL" --data-dir "$work/control-plane" \
    --listen 127.0.0.1:0 > "$work/serve.log" 2>&1 &
pids+=($!)
wait_for "$work/serve.log" "^listening on" "the control plane"
export KASBAH_URL=$(sed -n 's/^listening on //p' "$work/serve.log")
ADMIN=$(sed -n 's/^admin token: //p' "$work/serve.log")
echo "  control plane: kasbah serve --nats $NATS_URL on $KASBAH_URL (zones zone-a, zone-b; no GPU of its own)"

# worker id zone extra-toml
start_worker() {
    cat > "$work/$1.toml" <<TOML
id = "$1"
nats = "$NATS_URL"
capacity = 2
work_dir = "$work/$1"
# A job whose worker stops sending progress is redelivered after 2 s.
ack_wait_ms = 2000

[zones]
node = ["$2"]
$3
TOML
    RUST_LOG=warn,kasbah_fleet=info $KASBAH worker --config "$work/$1.toml" > "$work/$1.log" 2>&1 &
    pids+=($!)
    eval "pid_${1//-/_}=$!"
    wait_for "$work/$1.log" "worker started" "$1"
    local gpu=""
    [ -z "$3" ] || gpu=", GPU entry gpu0 (the adapter of this machine: lavapipe on CI)"
    echo "  $1: kasbah worker, zone $2$gpu"
}
start_worker worker-a1 zone-a ""
start_worker worker-a2 zone-a ""
start_worker worker-b zone-b '
[[gpu.adapters]]
label = "gpu0"
zone = "zone-b"'
wait_workers worker-a1,worker-a2,worker-b
step "fleet workers   (GET /v1/fleet/workers: the control plane's live-worker view)"
KASBAH_TOKEN=$ADMIN $KASBAH fleet workers | indent

cat > "$work/tenant.toml" <<TOML
zones = ["zone-a", "zone-b"]
# The hostile guest used below imports wasi:filesystem.
datasets = true

[limits]
wall_time_ms = 30000

[gpu]
zones = ["zone-b"]
TOML
step "tenant create sovereign-fleet --policy tenant.toml   (zones zone-a, zone-b; the GPU in zone-b)"
TN=$(KASBAH_TOKEN=$ADMIN $KASBAH tenant create sovereign-fleet --policy "$work/tenant.toml" --json \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
echo "  tenant $TN"
export KASBAH_TOKEN=$(KASBAH_TOKEN=$ADMIN $KASBAH tenant token "$TN")
step "publish hello.wasm, gpu_matmul.wasm, hostile.wasm"
for m in hello gpu_matmul hostile; do $KASBAH publish "$G/$m.wasm" --version 1.0.0 | indent; done
digest() { $KASBAH modules --json | python3 -c "import json,sys; print([m['digest'] for m in json.load(sys.stdin) if m['name']=='$1'][0])"; }
HELLO=$(digest hello)
MATMUL=$(digest gpu-matmul)
HOSTILE=$(digest hostile)

# run: show the CLI's answer, then the worker that ran it (from the workers' logs).
fleet_run() { # input args...
    local input=$1 out id; shift
    out=$(printf '%s' "$input" | $KASBAH run "$@" 2>&1)
    printf '%s\n' "$out" | indent
    id=$(printf '%s\n' "$out" | sed -n 's/^run  *\([^ ]*\) .*/\1/p')
    echo "  -> executed by $(ran_on "$id")"
}
for z in zone-a zone-b; do
    step "run $HELLO --input-label $z"
    fleet_run "hello from $z" "$HELLO" --input-label "$z"
done
step "run $MATMUL   (128x128 f32 matmul on kasbah:gpu: only zone-b has a GPU)"
fleet_run 128 "$MATMUL"

step "run $HELLO --input-label zone-c   (a zone outside the tenant's: refused, nothing runs)"
refusal=$(printf 'x' | $KASBAH run "$HELLO" --input-label zone-c 2>&1 || true)
printf '%s\n' "$refusal" | cut -c1-200 | indent
grep -q residency_violation <<< "$refusal" || { echo "expected 403 residency_violation" >&2; exit 1; }

echo
echo "== a zone-a worker is killed (-9) while its run executes =="
step "run $HOSTILE --no-wait --meta attack=random-loop   (input 2: ~2 s of wasi:random calls)"
RUN=$(printf 2 | $KASBAH run "$HOSTILE" --no-wait --input-label zone-a --meta attack=random-loop 2>/dev/null)
echo "  accepted $RUN"
victim=""
for _ in $(seq 300); do
    victim=$(grep -l "run starts.*run=\"$RUN\"" "$work"/worker-a*.log 2>/dev/null | head -1 || true)
    [ -n "$victim" ] && break
    sleep 0.1
done
[ -n "$victim" ] || { echo "no zone-a worker started $RUN" >&2; exit 1; }
victim=$(basename "$victim" .log)
vpid_var="pid_${victim//-/_}"
kill -9 "${!vpid_var}"
{ wait "${!vpid_var}"; } 2>/dev/null || true
echo "  $victim started it: kill -9 $victim (pid ${!vpid_var}) while the run executes"
for _ in $(seq 300); do
    status=$($KASBAH runs show "$RUN" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
    [ "$status" = queued ] || [ "$status" = running ] || break
    sleep 0.1
done
step "runs show $RUN"
$KASBAH runs show "$RUN" 2>&1 | indent
finisher=$(ran_on "$RUN")
[ -n "$finisher" ] && [ "$finisher" != "$victim" ] || { echo "expected another zone-a worker to finish $RUN" >&2; exit 1; }
grep -h "run starts.*run=\"$RUN\"" "$work/$finisher.log" | sed "s/^.*INFO /  $finisher| /"
echo "  -> finished by $finisher (its record and its run_executed entry name it): JetStream redelivered the job after the ack wait (2 s without progress)"
entries=$($KASBAH audit entries --json | python3 -c "
import json, sys
es = json.load(sys.stdin)
es = es.get('entries', es) if isinstance(es, dict) else es
print(sum(1 for e in es if '$RUN' in json.dumps(e) and 'run_executed' in json.dumps(e)))")
echo "  -> run_executed entries in the audit log for $RUN: $entries"
[ "$entries" = 1 ] || { echo "expected exactly one run_executed entry" >&2; exit 1; }

echo
echo "== zone-b's only worker drains (SIGTERM): zone-b runs are refused =="
kill -TERM "$pid_worker_b"
wait "$pid_worker_b" || true
grep -E "draining|worker stopped" "$work/worker-b.log" | sed 's/^.*INFO /  worker-b| /'
wait_workers "$finisher"   # worker-b left the registry (the killed one's heartbeat expired)
step "fleet workers"
KASBAH_TOKEN=$ADMIN $KASBAH fleet workers | indent
step "run $HELLO --input-label zone-b"
refusal=$(printf 'x' | $KASBAH run "$HELLO" --input-label zone-b 2>&1 || true)
printf '%s\n' "$refusal" | cut -c1-200 | indent
grep -q no_capacity <<< "$refusal" || { echo "expected 503 no_capacity" >&2; exit 1; }
step "run $HELLO --input-label zone-a   (zone-a still serves)"
fleet_run "still here" "$HELLO" --input-label zone-a
step "runs list"
$KASBAH runs list | indent
echo
echo "fleet demo done in $(( $(date +%s) - t0 )) s"

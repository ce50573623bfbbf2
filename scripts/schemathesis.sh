#!/usr/bin/env bash
# Fuzz the live API against its own OpenAPI document with schemathesis
# (PyPI), once per role (admin, operator, developer, auditor), every check
# enabled. Fails on any 5xx, any response that does not match the document,
# any undocumented status. Bounded: KASBAH_SCHEMATHESIS_SECONDS in all
# (default 240, split across the roles).
#
# Installs schemathesis into a venv under ~/.cache/kasbah the first time
# (KASBAH_SCHEMATHESIS_VENV to put it elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=4.32.5
VENV=${KASBAH_SCHEMATHESIS_VENV:-$HOME/.cache/kasbah/schemathesis-venv}
SECONDS_TOTAL=${KASBAH_SCHEMATHESIS_SECONDS:-240}
ST=$VENV/bin/schemathesis
if ! "$ST" --version 2>/dev/null | grep -q "$VERSION"; then
    echo "schemathesis: installing schemathesis $VERSION into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "schemathesis==$VERSION"
fi

cargo build -q -p kasbah
KASBAH=${CARGO_TARGET_DIR:-target}/debug/kasbah

work=$(mktemp -d)
server_pid=""
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

RUST_LOG=${RUST_LOG:-warn} $KASBAH serve --data-dir "$work/data" --listen 127.0.0.1:0 > "$work/serve.log" 2> "$work/serve.err" &
server_pid=$!
for _ in $(seq 300); do grep -q "listening on" "$work/serve.log" 2>/dev/null && break; sleep 0.1; done
URL=$(sed -n 's/^listening on //p' "$work/serve.log")
ADMIN=$(sed -n 's/^admin token: //p' "$work/serve.log")
[ -n "$URL" ] && [ -n "$ADMIN" ] || { cat "$work/serve.log" "$work/serve.err" >&2; exit 1; }
export KASBAH_URL=$URL

# Something for every role to see: an operator with a tenant, a published
# module and a run, an auditor of that tenant.
json_id() { python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'; }
OP=$(KASBAH_TOKEN=$ADMIN $KASBAH operator create fuzz-operator --max-tenants 100 --json | json_id)
OPTOK=$(KASBAH_TOKEN=$ADMIN $KASBAH operator token "$OP")
TN=$(KASBAH_TOKEN=$OPTOK $KASBAH tenant create fuzz-tenant --json | json_id)
DEV=$(KASBAH_TOKEN=$OPTOK $KASBAH tenant token "$TN")
cargo build -q --target wasm32-wasip2 --profile guest -p hello
KASBAH_TOKEN=$DEV $KASBAH publish "${CARGO_TARGET_DIR:-target}/wasm32-wasip2/guest/hello.wasm" --version 1.0.0 > /dev/null
HELLO=$(KASBAH_TOKEN=$DEV $KASBAH modules --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["digest"])')
echo "salam" | KASBAH_TOKEN=$DEV $KASBAH run "$HELLO" > /dev/null
AUD=$(curl -sf -X POST "$URL/v1/auditors" -H "Authorization: Bearer $ADMIN" \
    -H 'Content-Type: application/json' -d "{\"name\": \"fuzz-auditor\", \"tenants\": [\"$TN\"]}" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')

# Least privileged first: a role may revoke the tokens of those below it
# (DELETE /v1/tokens/{id} is in the document), and the admin any.
roles=(auditor:$AUD developer:$DEV operator:$OPTOK admin:$ADMIN)
per_role=$(( SECONDS_TOTAL / ${#roles[@]} ))
failed=0
summary=()
for entry in "${roles[@]}"; do
    role=${entry%%:*}
    token=${entry#*:}
    echo "== schemathesis as $role (${per_role}s) =="
    # No `coverage` phase: schemathesis 4.32.5 crashes inside it (a KeyError
    # in its own code, seen with the developer token), which is not a
    # finding about the server.
    report="$work/$role.json"
    set +e
    "$ST" --config-file scripts/schemathesis.toml run "$URL/openapi.json" \
        --checks all \
        --mode all \
        --phases examples,fuzzing,stateful \
        --max-time "$per_role" \
        --workers 2 \
        --seed 1 \
        --request-timeout 30 \
        --suppress-health-check all \
        -H "Authorization: Bearer $token" \
        --report json --report-json-path "$report" \
        --output-truncate true 2>&1 | tee "$work/$role.out"
    rc=${PIPESTATUS[0]}
    set -e
    counts=$(grep -Eo "[0-9]+ generated, [0-9]+ found [0-9]+ unique failures|[0-9]+ generated" "$work/$role.out" | tail -1)
    summary+=("$role: exit $rc $counts")
    [ "$rc" = 0 ] || failed=1
done

# The server must still be up and must have logged no internal error.
# (Not a request with the admin token: the fuzzer may well have revoked it
# through DELETE /v1/tokens/{id}, which is allowed.)
if ! kill -0 "$server_pid" 2>/dev/null || ! curl -sf "$URL/openapi.json" > /dev/null; then
    echo "the server died or stopped answering" >&2
    failed=1
fi
if grep -E "internal error|AUDIT LOG CORRUPT|panicked" "$work/serve.err"; then
    echo "the server logged internal errors" >&2
    failed=1
fi
echo "== schemathesis summary =="
printf '  %s\n' "${summary[@]}"
exit $failed

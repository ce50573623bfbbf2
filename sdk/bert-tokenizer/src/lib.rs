//! BERT uncased WordPiece tokenization, as `BertTokenizer` (Hugging Face
//! `tokenizers`: `BertNormalizer` + `BertPreTokenizer` + `WordPiece` +
//! `[CLS] … [SEP]` template) does it for models such as all-MiniLM-L6-v2.
//!
//! Pure Rust, no I/O: a guest builds it from the `vocab.txt` bytes it read,
//! and the same code is unit-tested natively.
//!
//! ```
//! use kasbah_bert_tokenizer::Tokenizer;
//! let vocab = "[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n,\nworld\n##s\n";
//! let t = Tokenizer::from_vocab(vocab).expect("vocab");
//! assert_eq!(t.encode("Hello, Worlds!", 16), vec![2, 4, 5, 6, 7, 1, 3]);
//! ```
//!
//! The steps, each matching the reference implementation:
//! 1. **clean text**: drop U+0000, U+FFFD and control characters (categories
//!    Cc, Cf, Co except `\t \n \r`), turn every whitespace into a space;
//! 2. **CJK**: put spaces around CJK ideographs so each is a word;
//! 3. **strip accents**: NFD, then drop nonspacing marks (Mn);
//! 4. **lowercase** (Unicode full lowercase mapping);
//! 5. **pre-tokenize**: split on whitespace, isolate every punctuation
//!    character (ASCII punctuation or Unicode category P*);
//! 6. **WordPiece**: greedy longest match first, continuation pieces
//!    prefixed `##`; a word longer than 100 characters, or one that cannot be
//!    covered, is `[UNK]`;
//! 7. truncate to `max_len - 2` pieces and wrap in `[CLS]` … `[SEP]`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use unicode_categories::UnicodeCategories;
use unicode_normalization::UnicodeNormalization;

/// Words longer than this many characters become `[UNK]`.
pub const MAX_INPUT_CHARS_PER_WORD: usize = 100;

/// The Fx hash (rustc's): a multiply and a rotate per 8 bytes. A guest
/// builds its vocabulary (30,522 tokens for BERT) on every run, where
/// SipHash was most of the cost; the keys and lookups are the run's own
/// data, so flooding collisions can only slow the run that makes them.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Vocab = HashMap<String, u32, BuildHasherDefault<FxHasher>>;

/// A vocabulary and the ids of the special tokens.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    vocab: Vocab,
    unk: u32,
    cls: u32,
    sep: u32,
    pad: u32,
}

/// Why a vocabulary could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VocabError {
    /// `[UNK]`, `[CLS]`, `[SEP]` or `[PAD]` is missing.
    MissingSpecial(&'static str),
    /// More than `u32::MAX` entries.
    TooLarge,
}

impl std::fmt::Display for VocabError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VocabError::MissingSpecial(t) => write!(f, "vocabulary has no {t} token"),
            VocabError::TooLarge => write!(f, "vocabulary has more than 2^32 entries"),
        }
    }
}

impl std::error::Error for VocabError {}

impl Tokenizer {
    /// From a `vocab.txt`: one token per line, the id is the line number
    /// (0-based). A token listed twice keeps its last id, as in the
    /// reference implementation.
    pub fn from_vocab(text: &str) -> Result<Tokenizer, VocabError> {
        let lines = text.bytes().filter(|&b| b == b'\n').count() + 1;
        let mut vocab = Vocab::with_capacity_and_hasher(lines, Default::default());
        for (i, line) in text.lines().enumerate() {
            let id = u32::try_from(i).map_err(|_| VocabError::TooLarge)?;
            // `lines()` already drops "\n" and a "\r" before it.
            vocab.insert(line.to_string(), id);
        }
        let get = |t: &'static str| vocab.get(t).copied().ok_or(VocabError::MissingSpecial(t));
        Ok(Tokenizer {
            unk: get("[UNK]")?,
            cls: get("[CLS]")?,
            sep: get("[SEP]")?,
            pad: get("[PAD]")?,
            vocab,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    pub fn cls_id(&self) -> u32 {
        self.cls
    }

    pub fn sep_id(&self) -> u32 {
        self.sep
    }

    pub fn unk_id(&self) -> u32 {
        self.unk
    }

    /// The id of `token`, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.vocab.get(token).copied()
    }

    /// Token ids of `text`: `[CLS]`, at most `max_len - 2` word pieces,
    /// `[SEP]` (`max_len` counts the special tokens; values below 2 are
    /// treated as 2).
    pub fn encode(&self, text: &str, max_len: usize) -> Vec<u32> {
        let keep = max_len.max(2) - 2;
        let mut ids = Vec::with_capacity(16);
        ids.push(self.cls);
        'words: for word in pre_tokenize(&normalize(text)) {
            for id in self.wordpiece(&word) {
                if ids.len() > keep {
                    break 'words;
                }
                ids.push(id);
            }
        }
        ids.push(self.sep);
        ids
    }

    /// The word pieces of one pre-tokenized word.
    pub fn wordpiece(&self, word: &str) -> Vec<u32> {
        if word.chars().count() > MAX_INPUT_CHARS_PER_WORD {
            return vec![self.unk];
        }
        let mut pieces = Vec::new();
        let mut start = 0;
        let mut candidate = String::with_capacity(word.len() + 2);
        while start < word.len() {
            // Longest prefix of word[start..] in the vocabulary, trying
            // char boundaries from the end.
            let mut end = word.len();
            let mut found = None;
            while end > start {
                candidate.clear();
                if start > 0 {
                    candidate.push_str("##");
                }
                candidate.push_str(&word[start..end]);
                if let Some(&id) = self.vocab.get(&candidate) {
                    found = Some(id);
                    break;
                }
                end = prev_boundary(word, end);
            }
            match found {
                Some(id) => {
                    pieces.push(id);
                    start = end;
                }
                None => return vec![self.unk],
            }
        }
        pieces
    }
}

fn prev_boundary(s: &str, mut i: usize) -> usize {
    i -= 1;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Whitespace as BERT's normalizer sees it (tab, newline and carriage
/// return included).
fn is_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

/// Control characters (removed): categories Cc, Cf and Co, except the
/// whitespace controls.
fn is_control(c: char) -> bool {
    match c {
        '\t' | '\n' | '\r' => false,
        _ => c.is_other(),
    }
}

/// CJK ideographs: each becomes a word of its own. The ranges of the
/// reference implementation (the CJK Unified Ideographs blocks and the
/// compatibility ideographs; not Hangul, Hiragana or Katakana).
pub fn is_cjk(c: char) -> bool {
    matches!(
        c as u32,
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

/// BERT punctuation: ASCII punctuation (which includes `$ + < = > ^ ` | ~`,
/// symbols in Unicode) or any Unicode punctuation category.
pub fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || c.is_punctuation()
}

/// Steps 1–4: clean, space out CJK, strip accents, lowercase.
pub fn normalize(text: &str) -> String {
    let mut cleaned = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c == '\0' || c == '\u{fffd}' || is_control(c) {
            continue;
        }
        if is_whitespace(c) {
            cleaned.push(' ');
        } else if is_cjk(c) {
            cleaned.push(' ');
            cleaned.push(c);
            cleaned.push(' ');
        } else {
            cleaned.push(c);
        }
    }
    let mut out = String::with_capacity(cleaned.len());
    for c in cleaned.nfd().filter(|c| !c.is_mark_nonspacing()) {
        out.extend(c.to_lowercase());
    }
    out
}

/// Step 5: words and isolated punctuation characters.
pub fn pre_tokenize(normalized: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    for c in normalized.chars() {
        if c.is_whitespace() {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
        } else if is_punctuation(c) {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
            words.push(c.to_string());
        } else {
            current.push(c);
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Tokenizer {
        let vocab = [
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "hello", "world", "!",
            ",", "cafe", "我", "a", "##b", "$",
        ]
        .join("\n");
        Tokenizer::from_vocab(&vocab).expect("vocab")
    }

    #[test]
    fn normalizes_like_bert() {
        assert_eq!(normalize("Café\tNAÏVE\u{7}\u{200b}x"), "cafe naivex");
        assert_eq!(normalize("我a"), " 我 a");
        assert_eq!(normalize("ÅNGSTRÖM"), "angstrom");
        // Hangul is not CJK for BERT; NFD splits it into jamo, which are
        // letters (Lo), not marks.
        assert_eq!(normalize("한").chars().count(), 3);
    }

    #[test]
    fn isolates_punctuation_including_ascii_symbols() {
        assert_eq!(
            pre_tokenize("a$b, c¿d — e"),
            vec!["a", "$", "b", ",", "c", "¿", "d", "—", "e"]
        );
    }

    #[test]
    fn wordpiece_is_greedy_longest_match_first() {
        let t = tiny();
        assert_eq!(t.wordpiece("unaffable"), vec![4, 5, 6]);
        assert_eq!(t.wordpiece("unaffablex"), vec![t.unk_id()]);
        assert_eq!(t.wordpiece("ab"), vec![13, 14]);
        assert_eq!(t.wordpiece(&"a".repeat(101)), vec![t.unk_id()]);
    }

    #[test]
    fn encode_wraps_and_truncates() {
        let t = tiny();
        assert_eq!(t.encode("", 256), vec![2, 3]);
        assert_eq!(t.encode("Hello, WORLD!", 256), vec![2, 7, 10, 8, 9, 3]);
        assert_eq!(t.encode("Hello, WORLD!", 4), vec![2, 7, 10, 3]);
        assert_eq!(t.encode("unaffable", 4), vec![2, 4, 5, 3]);
        assert_eq!(t.encode("我 Café $", 256), vec![2, 12, 11, 15, 3]);
    }

    #[test]
    fn missing_specials_are_reported() {
        assert_eq!(
            Tokenizer::from_vocab("[PAD]\n[UNK]\n[CLS]\n").err(),
            Some(VocabError::MissingSpecial("[SEP]"))
        );
    }
}

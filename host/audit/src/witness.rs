//! The rules of a C2SP `tlog-witness` (https://c2sp.org/tlog-witness)
//! `add-checkpoint` call, without HTTP or storage: parse the request body,
//! check it against the logs the witness knows and the last checkpoint it
//! cosigned for that origin, and say what to answer. The caller holds a lock
//! over "check, persist the new state, cosign" so that two requests cannot
//! roll the stored size back (the race the spec describes).

use crate::checkpoint::Checkpoint;
use crate::hash::Hash;
use crate::note::{LogVerifier, NoteError, parse_note};
use crate::verify::verify_consistency;

/// Most consistency proof lines a request may carry (the spec's bound).
pub const MAX_PROOF_LINES: usize = 63;

/// Largest request body read (a checkpoint note is at most 1 MiB).
pub const MAX_REQUEST_BYTES: usize = (1 << 20) + 8 * 1024;

/// A parsed `add-checkpoint` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCheckpoint {
    pub old_size: u64,
    pub proof: Vec<Hash>,
    /// The signed checkpoint note, as sent.
    pub note: String,
}

/// What the witness last cosigned for one log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cosigned {
    pub size: u64,
    pub root: Hash,
}

/// A refusal, with the status the spec gives it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 400: the body does not follow the protocol, or old size > size.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 404: the origin is not a log this witness knows.
    #[error("unknown log origin {0:?}")]
    UnknownLog(String),
    /// 403: no valid signature by a trusted key of the origin.
    #[error("checkpoint not signed by a trusted key of the log: {0}")]
    Forbidden(String),
    /// 409: the old size is not the size last cosigned (answered in the
    /// body, `text/x.tlog.size`).
    #[error("old size {old} is not the size this witness last cosigned ({current})")]
    Conflict { old: u64, current: u64 },
    /// 422: a bad proof, a fork, or a bad empty tree.
    #[error("inconsistent checkpoint: {0}")]
    Unprocessable(String),
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 400,
            Refusal::Forbidden(_) => 403,
            Refusal::UnknownLog(_) => 404,
            Refusal::Conflict { .. } => 409,
            Refusal::Unprocessable(_) => 422,
        }
    }
}

fn bad(m: impl Into<String>) -> Refusal {
    Refusal::BadRequest(m.into())
}

fn decimal(s: &str) -> Option<u64> {
    let canonical = s == "0" || (!s.is_empty() && !s.starts_with('0'));
    if !canonical || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parse `old N\n`, up to 63 base64 hash lines, an empty line, then the
/// checkpoint note.
pub fn parse_request(body: &str) -> Result<AddCheckpoint, Refusal> {
    if body.len() > MAX_REQUEST_BYTES {
        return Err(bad("request body too large"));
    }
    let (first, mut rest) = body
        .split_once('\n')
        .ok_or_else(|| bad("no old size line"))?;
    let old_size = first
        .strip_prefix("old ")
        .and_then(decimal)
        .ok_or_else(|| bad("the first line must be `old <size>`"))?;
    let mut proof = Vec::new();
    loop {
        let (line, next) = rest
            .split_once('\n')
            .ok_or_else(|| bad("no empty line before the checkpoint"))?;
        rest = next;
        if line.is_empty() {
            break;
        }
        if proof.len() == MAX_PROOF_LINES {
            return Err(bad("more than 63 consistency proof lines"));
        }
        proof
            .push(Hash::from_base64(line).ok_or_else(|| bad("a proof line is not a base64 hash"))?);
    }
    Ok(AddCheckpoint {
        old_size,
        proof,
        note: rest.to_owned(),
    })
}

/// Check a request against the trusted keys of the logs (`logs`: origin and
/// its keys) and what was last cosigned for its origin (`last`, looked up
/// by the caller under its lock with the origin this returns first).
///
/// Returns the verified checkpoint to cosign and record.
pub fn check(
    req: &AddCheckpoint,
    keys_for: impl Fn(&str) -> Option<Vec<LogVerifier>>,
    last: impl FnOnce(&str) -> Option<Cosigned>,
) -> Result<Checkpoint, Refusal> {
    let parsed = parse_note(&req.note).map_err(|e| bad(format!("checkpoint note: {e}")))?;
    let checkpoint = Checkpoint::parse(parsed.text).map_err(|e| bad(format!("checkpoint: {e}")))?;
    let keys = keys_for(&checkpoint.origin)
        .ok_or_else(|| Refusal::UnknownLog(checkpoint.origin.clone()))?;
    // Signatures by unknown keys are ignored; a line naming a trusted key
    // must verify; at least one trusted key must have signed.
    let mut signed = false;
    let mut why = Vec::new();
    for k in &keys {
        match k.open(&req.note) {
            Ok(_) => signed = true,
            Err(NoteError::BadSignature) => {
                return Err(Refusal::Forbidden(format!(
                    "the signature by {k} does not verify"
                )));
            }
            Err(e) => why.push(e.to_string()),
        }
    }
    if !signed {
        return Err(Refusal::Forbidden(why.join("; ")));
    }
    let (old, new) = (req.old_size, checkpoint.size);
    if old > new {
        return Err(bad(format!(
            "old size {old} is larger than the checkpoint's {new}"
        )));
    }
    let current = last(&checkpoint.origin);
    let current_size = current.as_ref().map_or(0, |c| c.size);
    if old != current_size {
        return Err(Refusal::Conflict {
            old,
            current: current_size,
        });
    }
    if new == 0 && checkpoint.root != Hash::empty() {
        return Err(Refusal::Unprocessable(
            "a checkpoint of size 0 must have the empty tree's root".into(),
        ));
    }
    match current {
        None => {
            if !req.proof.is_empty() {
                return Err(Refusal::Unprocessable(
                    "a proof from the empty tree must be empty".into(),
                ));
            }
        }
        Some(c) if c.size == 0 => {
            if !req.proof.is_empty() {
                return Err(Refusal::Unprocessable(
                    "a proof from the empty tree must be empty".into(),
                ));
            }
        }
        Some(c) => {
            verify_consistency(c.size, new, &c.root, &checkpoint.root, &req.proof).map_err(
                |e| {
                    Refusal::Unprocessable(format!(
                        "the checkpoint of size {new} is not proven to extend the cosigned one \
                         of size {}: {e}",
                        c.size
                    ))
                },
            )?;
        }
    }
    Ok(checkpoint)
}

/// The body of an `add-checkpoint` request.
pub fn request_body(old_size: u64, proof: &[Hash], note: &str) -> String {
    let mut s = format!("old {old_size}\n");
    for h in proof {
        s.push_str(&h.to_base64());
        s.push('\n');
    }
    s.push('\n');
    s.push_str(note);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Log, LogSigner, MemoryStore};

    fn log_of(n: u64, salt: u8) -> Log<MemoryStore> {
        let mut log = Log::new(MemoryStore::new());
        let leaves: Vec<Hash> = (0..n).map(|i| Hash::leaf(&[salt, i as u8])).collect();
        log.append_leaf_hashes(&leaves).expect("append");
        log
    }

    #[test]
    fn the_spec_example_request_parses() {
        let body = "old 20852014\nPlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\n\
                    jrJZDmY8Y7SyJE0MWLpLozkIVMSMZcD5kvuKxPC3swk=\n\nexample.com/behind-the-sofa\n\
                    20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n\u{2014} x y\n";
        let r = parse_request(body).expect("parse");
        assert_eq!(r.old_size, 20852014);
        assert_eq!(r.proof.len(), 2);
        assert!(r.note.starts_with("example.com/behind-the-sofa\n"));
        assert_eq!(request_body(r.old_size, &r.proof, &r.note), body);
        for bad in [
            "",
            "old 01\n\nx",
            "old -1\n\nx",
            "new 1\n\nx",
            "old 1\nnot base64\n\nx",
            "old 1\nAAAA\n\nx",
            "old 1\n",
        ] {
            assert!(parse_request(bad).is_err(), "{bad:?}");
        }
        let many = format!(
            "old 1\n{}\nx",
            "PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\n".repeat(64)
        );
        assert!(parse_request(&many).is_err());
    }

    #[test]
    fn rollbacks_forks_bad_proofs_and_keys_get_the_spec_statuses() {
        let key = LogSigner::from_seed("kasbah.test/log", &[1; 32]).expect("key");
        let keys = |o: &str| (o == "kasbah.test/log").then(|| vec![key.verifier()]);
        let log = log_of(20, 0);
        let cp = |n: u64| log.checkpoint_at(n, &key).expect("cp");
        let req = |old: u64, new: u64| AddCheckpoint {
            old_size: old,
            proof: if old == 0 || old == new {
                vec![]
            } else {
                log.consistency_proof(old, new).expect("proof")
            },
            note: cp(new).note,
        };
        let at = |n: u64| {
            Some(Cosigned {
                size: n,
                root: log.root_at(n).expect("root"),
            })
        };
        // First contact, then growth with a proof, then the same size again.
        assert_eq!(check(&req(0, 7), keys, |_| None).expect("first").size, 7);
        assert_eq!(check(&req(7, 20), keys, |_| at(7)).expect("grow").size, 20);
        assert!(check(&req(20, 20), keys, |_| at(20)).is_ok());
        // Rollback: the witness is at 20, the log claims 7 → 409 with 20.
        assert_eq!(
            check(&req(7, 7), keys, |_| at(20)).expect_err("stale"),
            Refusal::Conflict {
                old: 7,
                current: 20
            }
        );
        // Old size above the checkpoint's: 400.
        let mut r = req(7, 7);
        r.old_size = 8;
        assert_eq!(check(&r, keys, |_| at(8)).expect_err("400").status(), 400);
        // A fork: the same sizes, other entries.
        let fork = log_of(20, 1);
        let forked = AddCheckpoint {
            old_size: 7,
            proof: fork.consistency_proof(7, 20).expect("proof"),
            note: fork.checkpoint_at(20, &key).expect("cp").note,
        };
        assert_eq!(
            check(&forked, keys, |_| at(7)).expect_err("fork").status(),
            422
        );
        let same_size_fork = AddCheckpoint {
            old_size: 20,
            proof: vec![],
            note: fork.checkpoint_at(20, &key).expect("cp").note,
        };
        assert_eq!(
            check(&same_size_fork, keys, |_| at(20))
                .expect_err("fork")
                .status(),
            422
        );
        // A bad proof, and a proof from the empty tree.
        let mut r = req(7, 20);
        r.proof[0] = Hash::leaf(b"x");
        assert_eq!(check(&r, keys, |_| at(7)).expect_err("bad").status(), 422);
        let mut r = req(0, 20);
        r.proof = vec![Hash::leaf(b"x")];
        assert_eq!(check(&r, keys, |_| None).expect_err("bad").status(), 422);
        // Size 0 must have the empty root.
        let empty_lie = crate::Checkpoint::new("kasbah.test/log", 0, Hash::leaf(b"x"))
            .sign(&key)
            .expect("sign");
        let r = AddCheckpoint {
            old_size: 0,
            proof: vec![],
            note: empty_lie.note,
        };
        assert_eq!(check(&r, keys, |_| None).expect_err("422").status(), 422);
        // Unknown origin → 404; another key of the same name → 403; an
        // altered signed note → 403.
        let other = LogSigner::from_seed("kasbah.test/other", &[1; 32]).expect("key");
        let r = AddCheckpoint {
            old_size: 0,
            proof: vec![],
            note: other_log_note(&other),
        };
        assert_eq!(check(&r, keys, |_| None).expect_err("404").status(), 404);
        let impostor = LogSigner::from_seed("kasbah.test/log", &[9; 32]).expect("key");
        let r = AddCheckpoint {
            old_size: 0,
            proof: vec![],
            note: log.checkpoint_at(3, &impostor).expect("cp").note,
        };
        assert_eq!(check(&r, keys, |_| None).expect_err("403").status(), 403);
        let mut r = req(0, 7);
        r.note = r.note.replacen("\n7\n", "\n8\n", 1);
        assert_eq!(check(&r, keys, |_| None).expect_err("403").status(), 403);
    }

    fn other_log_note(k: &LogSigner) -> String {
        log_of(3, 0).checkpoint_at(3, k).expect("cp").note
    }
}

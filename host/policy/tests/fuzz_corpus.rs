//! Replays the committed fuzz corpus (fuzz/corpus/policy) through what the
//! `policy` fuzz target checks: parsing never panics, and an accepted
//! policy survives a JSON round trip. A cheap regression run without the
//! fuzz toolchain.

use kasbah_policy::Policy;

#[test]
fn committed_corpus_replays() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/policy");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("read");
        n += 1;
        let Ok(text) = std::str::from_utf8(&data) else {
            continue;
        };
        for p in [Policy::from_toml(text), Policy::from_json(text)]
            .into_iter()
            .flatten()
        {
            let json = serde_json::to_string(&p).expect("serializes");
            assert_eq!(
                Policy::from_json(&json).as_ref(),
                Ok(&p),
                "{}: {json}",
                path.display()
            );
        }
    }
    assert!(n >= 20, "{}: {n} inputs", dir.display());
}

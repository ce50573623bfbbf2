//! Policy parsing as the server and CLI run it on tenant input: TOML and
//! JSON into `Policy` + `validate()`, then the derived views. A policy that
//! is accepted must also survive a round trip through both formats (the
//! host stores and ships policies serialized).
#![no_main]

use kasbah_policy::Policy;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for parsed in [Policy::from_toml(text), Policy::from_json(text)] {
        let Ok(p) = parsed else { continue };
        let _ = p.gpu_grant();
        let _ = p.allowed_zones(&["zone-a".to_string()]);
        let _ = p.refused_imports(["wasi:filesystem/types@0.2.0", "kasbah:gpu/compute", "x"]);
        let json = serde_json::to_string(&p).expect("an accepted policy serializes to JSON");
        assert_eq!(
            Policy::from_json(&json).as_ref(),
            Ok(&p),
            "JSON round trip of an accepted policy: {json}"
        );
        let toml = toml::to_string(&p).expect("an accepted policy serializes to TOML");
        assert_eq!(
            Policy::from_toml(&toml).as_ref(),
            Ok(&p),
            "TOML round trip of an accepted policy: {toml}"
        );
    }
});

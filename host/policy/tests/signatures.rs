//! The `signatures` policy section and its ceiling (a floor on strictness).

use kasbah_policy::{Bounds, Ceiling, Policy, SignatureCeiling};

const K1: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
const K2: &str = "O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik=";

fn bounds() -> Bounds<'static> {
    Bounds {
        zones: &[],
        files: None,
    }
}

#[test]
fn signatures_parse_and_validate() {
    let p = Policy::from_toml(&format!(
        "[signatures]\nkeys = [\"{K1}\", \"{K2}\"]\nthreshold = 2\n"
    ))
    .expect("valid");
    let s = p.signatures.as_ref().expect("section");
    assert_eq!((s.keys.len(), s.threshold), (2, 2));
    for (bad, why) in [
        (format!("keys = [\"{K1}\"]\nthreshold = 0"), "at least 1"),
        (
            format!("keys = [\"{K1}\"]\nthreshold = 2"),
            "more than the 1 keys",
        ),
        (
            "keys = [\"not-a-key\"]\nthreshold = 1".to_string(),
            "not an Ed25519 public key",
        ),
        (
            format!("keys = [\"{K1}\", \"{K1}\"]\nthreshold = 1"),
            "listed twice",
        ),
        (
            format!("keys = [\"{K1}\"]\nthreshold = 1\nextra = 1"),
            "unknown field",
        ),
    ] {
        let e = Policy::from_toml(&format!("[signatures]\n{bad}\n")).expect_err(&bad);
        assert!(e.to_string().contains(why), "{bad}: {e}");
    }
}

#[test]
fn a_ceiling_may_require_signatures_as_a_floor() {
    let ceiling = Ceiling {
        signatures: Some(SignatureCeiling {
            threshold: 2,
            keys: vec![K1.into(), K2.into()],
        }),
        ..Ceiling::standard()
    };
    assert!(ceiling.problems().is_empty());
    let impossible = Ceiling {
        signatures: Some(SignatureCeiling {
            threshold: 3,
            keys: vec![K1.into(), K2.into()],
        }),
        ..Ceiling::standard()
    };
    assert!(
        impossible.problems()[0].contains("more than the 2 keys"),
        "{:?}",
        impossible.problems()
    );
    let unsigned = Policy::default();
    let ex = unsigned.exceeding(&ceiling, bounds());
    assert_eq!(ex.len(), 1, "{ex:?}");
    assert_eq!(ex[0].field, "signatures");
    let one = Policy::from_toml(&format!("[signatures]\nkeys = [\"{K1}\"]\nthreshold = 1\n"))
        .expect("valid");
    let ex = one.exceeding(&ceiling, bounds());
    assert_eq!(ex[0].field, "signatures.threshold", "{ex:?}");
    let two = Policy::from_toml(&format!(
        "[signatures]\nkeys = [\"{K1}\", \"{K2}\"]\nthreshold = 2\n"
    ))
    .expect("valid");
    assert!(two.exceeding(&ceiling, bounds()).is_empty());
    let narrow = Ceiling {
        signatures: Some(SignatureCeiling {
            threshold: 1,
            keys: vec![K2.into()],
        }),
        ..Ceiling::standard()
    };
    let ex = one.exceeding(&narrow, bounds());
    assert_eq!(ex[0].field, "signatures.keys", "{ex:?}");
    // Without a signatures ceiling, any (valid) signature policy is within.
    assert!(two.exceeding(&Ceiling::standard(), bounds()).is_empty());
    // A stored ceiling with only `signatures` is the current shape.
    let c = Ceiling::from_stored_json(r#"{"signatures":{"threshold":1}}"#).expect("parse");
    assert_eq!(c.signatures.map(|s| s.threshold), Some(1));
}

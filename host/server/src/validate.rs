//! Validation shared by every domain's services: names and digests as
//! clients send them. Bad input is a 4xx with a stable code.

use kasbah_core::Digest;

use crate::error::{ApiError, ApiResult};

/// A `sha256:<hex>` digest from a path or body (400 `invalid_digest`).
pub fn parse_digest(s: &str) -> ApiResult<Digest> {
    s.parse().map_err(|e: kasbah_core::InvalidDigest| {
        ApiError::bad_request("invalid_digest", e.to_string())
    })
}

/// Operator, tenant, auditor and module names and versions (422
/// `invalid_name`).
pub fn valid_name(n: &str) -> ApiResult<&str> {
    let ok = !n.is_empty()
        && n.len() <= 128
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b));
    if ok {
        Ok(n)
    } else {
        Err(ApiError::unprocessable(
            "invalid_name",
            format!("{n:?}: names are 1-128 characters of letters, digits and -_.+"),
        ))
    }
}

/// How a client names a module: its digest, or `name@version`, or `name`
/// (the version its tenant published last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleRef {
    Digest(Digest),
    Name {
        name: String,
        version: Option<String>,
    },
}

impl std::fmt::Display for ModuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModuleRef::Digest(d) => write!(f, "{d}"),
            ModuleRef::Name {
                name,
                version: Some(v),
            } => write!(f, "{name}@{v}"),
            ModuleRef::Name {
                name,
                version: None,
            } => f.write_str(name),
        }
    }
}

/// A module reference: `sha256:<hex>` (400 `invalid_digest` when
/// malformed), else `name[@version]` with both parts names (422
/// `invalid_module_ref`). Names never contain `@` or `:`, so the forms
/// cannot be confused.
pub fn parse_module_ref(s: &str) -> ApiResult<ModuleRef> {
    if s.starts_with("sha256:") {
        return parse_digest(s).map(ModuleRef::Digest);
    }
    let (name, version) = match s.split_once('@') {
        Some((n, v)) => (n, Some(v)),
        None => (s, None),
    };
    let bad = |what: &str| {
        let shown: String = s.chars().take(300).collect();
        ApiError::unprocessable(
            "invalid_module_ref",
            format!(
                "{shown:?}: {what}; a module is `sha256:<64 hex>`, `name@version` or `name` \
                 (names and versions: 1-128 letters, digits and -_.+)"
            ),
        )
    };
    if valid_name(name).is_err() {
        return Err(bad("bad module name"));
    }
    if let Some(v) = version
        && valid_name(v).is_err()
    {
        return Err(bad("bad version"));
    }
    Ok(ModuleRef::Name {
        name: name.to_string(),
        version: version.map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_refs() {
        let d = format!("sha256:{}", "ab".repeat(32));
        assert!(matches!(parse_module_ref(&d), Ok(ModuleRef::Digest(_))));
        assert_eq!(
            parse_module_ref("sha256:xyz").map_err(|e| e.code).err(),
            Some("invalid_digest")
        );
        assert_eq!(
            parse_module_ref("hello@1.0.0").ok(),
            Some(ModuleRef::Name {
                name: "hello".into(),
                version: Some("1.0.0".into())
            })
        );
        assert_eq!(
            parse_module_ref("hello").ok().map(|r| r.to_string()),
            Some("hello".to_string())
        );
        let long = "a".repeat(129);
        for bad in [
            "",
            "@1",
            "hello@",
            "a@b@c",
            "x/y",
            "a b",
            "he:llo",
            long.as_str(),
        ] {
            assert_eq!(
                parse_module_ref(bad).map_err(|e| e.code).err(),
                Some("invalid_module_ref"),
                "{bad:?}"
            );
        }
    }
}

//! The console's files, embedded at compile time: nothing is fetched from
//! anywhere but this server, and there is no JS toolchain (the modules
//! under `assets/` are served as written).

/// Every console response carries this policy: scripts only from this
/// origin (no inline script, no `eval`; `wasm-unsafe-eval` lets the page
/// compile the verifier), no plugins, no `<base>` rewriting, no framing.
/// Styles fall back to `default-src 'self'`: no inline style attributes.
pub const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
     object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// One embedded file.
pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";

macro_rules! text {
    ($file:literal, $ct:expr) => {
        Asset {
            content_type: $ct,
            body: include_str!(concat!("assets/", $file)).as_bytes(),
        }
    };
}

/// The file served as `/console/{name}` (`index.html` is also `/`).
pub fn get(name: &str) -> Option<Asset> {
    Some(match name {
        "index.html" => text!("index.html", "text/html; charset=utf-8"),
        "style.css" => text!("style.css", "text/css; charset=utf-8"),
        "app.js" => text!("app.js", JS),
        "api.js" => text!("api.js", JS),
        "dom.js" => text!("dom.js", JS),
        "admin.js" => text!("admin.js", JS),
        "developer.js" => text!("developer.js", JS),
        "auditor.js" => text!("auditor.js", JS),
        "verify.js" => text!("verify.js", JS),
        "verifier.wasm" => Asset {
            content_type: "application/wasm",
            body: include_bytes!(concat!(env!("OUT_DIR"), "/verifier.wasm")),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_page_imports_is_served() {
        let mut names = vec!["app.js".to_string()];
        let mut seen = std::collections::BTreeSet::new();
        while let Some(n) = names.pop() {
            if !seen.insert(n.clone()) {
                continue;
            }
            let a = get(&n).unwrap_or_else(|| panic!("{n} is not embedded"));
            let text = std::str::from_utf8(a.body).expect("utf-8");
            for line in text.lines() {
                if let Some(i) = line.find("from './") {
                    let rest = &line[i + 8..];
                    let end = rest.find('\'').expect("closing quote");
                    names.push(rest[..end].to_string());
                }
            }
        }
        assert!(seen.len() >= 6, "{seen:?}");
    }

    /// What the CSP would block anyway, and what would parse data as HTML
    /// or code: absent from every file.
    #[test]
    fn no_inline_script_or_style_and_no_html_or_code_from_strings() {
        let names = [
            "index.html",
            "style.css",
            "app.js",
            "api.js",
            "dom.js",
            "admin.js",
            "developer.js",
            "auditor.js",
            "verify.js",
        ];
        for n in names {
            let text = std::str::from_utf8(get(n).expect(n).body).expect("utf-8");
            for bad in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "new Function",
                "style=\"",
                " onclick=",
                " onload=",
                "javascript:",
            ] {
                assert!(!text.contains(bad), "{n} contains {bad}");
            }
        }
        let html = std::str::from_utf8(get("index.html").expect("index").body).expect("utf-8");
        assert!(!html.contains("<script>"), "inline script in index.html");
        assert!(!html.contains("<style"), "inline style in index.html");
        assert!(&get("verifier.wasm").expect("wasm").body[..4] == b"\0asm");
    }
}

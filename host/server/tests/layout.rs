//! The crate's layout rules (issue 19), checked on its source files:
//!
//! 1. no import circle between files (`use crate::…`, `super::…`,
//!    `self::…` and inline `crate::…` paths; test code excluded);
//! 2. handlers are imported only by the router and the OpenAPI document;
//! 3. storage (`storage.rs`, `*sqlite.rs`, `store/`) imports no service,
//!    handler or the app state;
//! 4. nothing in a domain folder but its `handlers.rs` names axum;
//! 5. no source file is longer than [`MAX_LINES`].
//!
//! The parser is deliberately simple (the crate's own style: one `use` per
//! statement, test modules last in a file) and fails loudly on what it
//! cannot resolve, so a new file or path style cannot slip past unchecked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 600;
const DOMAINS: &[&str] = &[
    "tenancy", "registry", "datasets", "runs", "audit", "console",
];

/// A source file as a module path (`tenancy/sqlite.rs` → `tenancy::sqlite`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
        parts.pop();
    }
    parts.join("::")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The non-test code of a file without comments: everything before the
/// first `#[cfg(test)]`, line comments dropped.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Files only compiled for tests (`#[cfg(test)] mod x;`).
fn test_only(src: &Path, all: &[PathBuf]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for f in all {
        let text = std::fs::read_to_string(f).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        for w in lines.windows(2) {
            if w[0].trim() == "#[cfg(test)]"
                && let Some(name) = w[1]
                    .trim()
                    .strip_prefix("mod ")
                    .and_then(|r| r.strip_suffix(';'))
            {
                let m = module_of(src, f);
                out.insert(if m.is_empty() {
                    name.to_string()
                } else {
                    format!("{m}::{name}")
                });
            }
        }
    }
    out
}

/// Expand `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else {
        return vec![tree];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.len() - 1];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand(p).into_iter().map(move |e| format!("{prefix}{e}")))
        .collect()
}

/// Every path a file's code names through `crate`, `super` or `self`,
/// made absolute (`crate::a::b::Item`).
fn references(module: &str, is_mod_file: bool, code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    // `use` statements (possibly multi-line, with groups).
    let mut rest = code;
    while let Some(i) = rest.find("use ") {
        let before = rest[..i].chars().last();
        let stmt_end = rest[i..].find(';').map(|e| i + e);
        let Some(end) = stmt_end else { break };
        if before.is_none_or(|c| c.is_whitespace()) {
            let tree = &rest[i + 4..end];
            let first = tree.trim_start();
            if first.starts_with("crate::")
                || first.starts_with("super::")
                || first.starts_with("self::")
                || (module.is_empty() && !first.starts_with("std::"))
            {
                paths.extend(expand(tree));
            }
        }
        rest = &rest[end + 1..];
    }
    // Inline paths (`crate::metrics::ReasonLabel { … }`).
    for anchor in ["crate::", "super::"] {
        let mut at = 0;
        while let Some(i) = code[at..].find(anchor) {
            let start = at + i;
            let prev = code[..start].chars().last();
            if prev.is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':')) {
                let end = code[start..]
                    .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .map_or(code.len(), |e| start + e);
                let path = code[start..end].trim_end_matches(':');
                // `crate::{…}` groups are `use` trees, read above.
                if path.contains("::") {
                    paths.push(path.to_string());
                }
            }
            at = start + anchor.len();
        }
    }
    // Make absolute.
    let here: Vec<&str> = if module.is_empty() {
        Vec::new()
    } else {
        module.split("::").collect()
    };
    paths
        .into_iter()
        .map(|p| {
            let p = p.trim().to_string();
            let mut segs: Vec<&str> = p.split("::").collect();
            let mut base: Vec<&str> = match segs.first() {
                Some(&"crate") => {
                    segs.remove(0);
                    Vec::new()
                }
                Some(&"super") => {
                    let mut b = here.clone();
                    // In `a/b.rs`, `super` is `a`; in `a/mod.rs`, `a`'s parent.
                    if !is_mod_file || !b.is_empty() {
                        b.pop();
                    }
                    segs.remove(0);
                    while segs.first() == Some(&"super") {
                        b.pop();
                        segs.remove(0);
                    }
                    b
                }
                Some(&"self") => {
                    segs.remove(0);
                    here.clone()
                }
                // The crate root's own relative `use`s.
                _ => Vec::new(),
            };
            base.extend(segs.into_iter().filter(|s| *s != "self"));
            format!("crate::{}", base.join("::"))
        })
        .collect()
}

/// The file (module) a path lands in: its longest prefix that is a module.
fn resolve<'a>(path: &str, modules: &'a BTreeSet<String>) -> Option<&'a String> {
    let segs: Vec<&str> = path.trim_start_matches("crate::").split("::").collect();
    (0..=segs.len())
        .rev()
        .map(|n| segs[..n].join("::"))
        .find_map(|m| modules.get(&m))
}

struct Crate {
    modules: BTreeSet<String>,
    edges: BTreeMap<String, BTreeSet<String>>,
    code: BTreeMap<String, String>,
    lines: BTreeMap<String, usize>,
}

fn load() -> Crate {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let tests = test_only(&src, &all);
    let mut c = Crate {
        modules: BTreeSet::new(),
        edges: BTreeMap::new(),
        code: BTreeMap::new(),
        lines: BTreeMap::new(),
    };
    let mut texts = Vec::new();
    for f in &all {
        let m = module_of(&src, f);
        let text = std::fs::read_to_string(f).expect("read");
        c.lines.insert(
            f.strip_prefix(&src)
                .expect("src")
                .to_string_lossy()
                .into_owned(),
            text.lines().count(),
        );
        if tests.contains(&m) {
            continue;
        }
        c.modules.insert(m.clone());
        let is_mod = f.ends_with("mod.rs") || f.ends_with("lib.rs");
        texts.push((m, is_mod, code(&text)));
    }
    for (m, is_mod, code) in texts {
        let mut to = BTreeSet::new();
        for r in references(&m, is_mod, &code) {
            let target = resolve(&r, &c.modules)
                .unwrap_or_else(|| panic!("{}: cannot resolve `{r}` to a file", name(&m)));
            to.insert(target.clone());
        }
        to.remove(&m);
        c.edges.insert(m.clone(), to);
        c.code.insert(m, code);
    }
    c
}

fn name(m: &str) -> &str {
    if m.is_empty() { "lib" } else { m }
}

#[test]
fn no_import_circle_between_files() {
    let c = load();
    // Depth-first search; a grey node met again closes a circle.
    fn visit(
        m: &str,
        c: &Crate,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(m) {
            Some(2) => return None,
            Some(1) => {
                let from = stack.iter().position(|s| s == m).unwrap_or(0);
                let mut circle = stack[from..].to_vec();
                circle.push(m.to_string());
                return Some(circle);
            }
            _ => {}
        }
        state.insert(m.to_string(), 1);
        stack.push(m.to_string());
        for next in c.edges.get(m).into_iter().flatten() {
            if let Some(circle) = visit(next, c, state, stack) {
                return Some(circle);
            }
        }
        stack.pop();
        state.insert(m.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    let edges: usize = c.edges.values().map(BTreeSet::len).sum();
    assert!(
        c.modules.len() > 30 && edges > 100,
        "the parser found too little ({} files, {edges} imports)",
        c.modules.len()
    );
    for m in &c.modules {
        if let Some(circle) = visit(m, &c, &mut state, &mut Vec::new()) {
            let names: Vec<&str> = circle.iter().map(|m| name(m)).collect();
            panic!("import circle: {}", names.join(" -> "));
        }
    }
    println!(
        "{} files, {edges} imports between them, no circle",
        c.modules.len()
    );
}

#[test]
fn imports_flow_from_handlers_to_services_to_storage() {
    let c = load();
    let is_handlers = |m: &str| m.ends_with("::handlers");
    // Storage: the storage traits, the SQLite implementations (any file
    // that names rusqlite), the store; and the log's entry builders, since
    // every domain's storage appends entries in its own transactions.
    let is_storage = |m: &str| {
        m.ends_with("::storage")
            || c.code.get(m).is_some_and(|code| code.contains("rusqlite"))
            || m == "store"
            || m.starts_with("store::")
            || m == "audit::entries"
    };
    let is_service = |m: &str| {
        DOMAINS.iter().any(|d| m.starts_with(&format!("{d}::")))
            && !is_handlers(m)
            && !is_storage(m)
    };
    let mut problems = Vec::new();
    for (m, to) in &c.edges {
        for t in to {
            if is_handlers(t) && !["routes", "openapi"].contains(&m.as_str()) {
                problems.push(format!("{} imports handlers {t}", name(m)));
            }
            if is_storage(m) && (is_service(t) || is_handlers(t) || t == "state") {
                problems.push(format!("storage {m} imports {t}"));
            }
        }
        let in_domain = DOMAINS.iter().any(|d| m.starts_with(&format!("{d}::")));
        if in_domain && !is_handlers(m) && c.code[m].contains("axum") {
            problems.push(format!("{m} names axum (only handlers.rs may)"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn no_source_file_is_longer_than_600_lines() {
    let c = load();
    let long: Vec<String> = c
        .lines
        .iter()
        .filter(|(_, n)| **n > MAX_LINES)
        .map(|(f, n)| format!("{f}: {n} lines"))
        .collect();
    assert!(long.is_empty(), "over {MAX_LINES} lines: {long:?}");
    let longest = c.lines.iter().max_by_key(|(_, n)| **n);
    println!("{} files; longest: {longest:?}", c.lines.len());
}

/// The console's hand-written assets (JS, CSS, HTML) are held to the same
/// length as the Rust sources.
#[test]
fn no_console_asset_is_longer_than_600_lines() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/console/assets");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("assets dir") {
        let p = e.expect("entry").path();
        let lines = std::fs::read_to_string(&p).expect("read").lines().count();
        assert!(lines <= MAX_LINES, "{}: {lines} lines", p.display());
        n += 1;
    }
    assert!(n >= 5, "{n} assets");
}

//! `kasbah new NAME [--dir D] [--sdk PATH]`: a pipeline crate, anywhere.
//!
//! The crate depends on the kasbah SDK by path. By default the SDK's
//! sources and the WIT contract are **embedded in this binary** (the files
//! of `sdk/src` and `wit/` at build time) and written into the new crate
//! as `vendor/kasbah-sdk` and `vendor/wit`, so it builds from any
//! directory, with no registry and no kasbah checkout — offline on a
//! machine whose cargo cache has the SDK's one dependency (`wit-bindgen`
//! 0.63; any machine that built kasbah's guests, e.g. by `make demo`).
//! `--sdk PATH` points the dependency at an SDK source tree instead (e.g.
//! a kasbah checkout's `sdk/`), writing no copy.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::CliError;

#[derive(Args)]
pub struct NewArgs {
    /// The crate's name: 1-64 ASCII letters, digits, `-` and `_`, starting with a letter.
    pub name: String,
    /// Where to create it (default: ./NAME); must not exist, or be an empty directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Depend on the kasbah SDK source at PATH (a `kasbah-sdk` crate directory) instead of
    /// the copy embedded in this binary.
    #[arg(long)]
    pub sdk: Option<PathBuf>,
}

/// The SDK crate's files (relative to `vendor/kasbah-sdk`) and the WIT
/// contract's (relative to `vendor/wit`), as this binary was built with.
/// `tests::embedded_files_are_every_sdk_and_wit_file` keeps the lists whole.
macro_rules! embed {
    ($root:literal: $($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../../../", $root, "/", $path)))),*]
    };
}

const SDK_FILES: &[(&str, &str)] = embed!("sdk":
    "src/lib.rs",
    "src/gpu.rs",
    "src/http.rs",
    "src/tensor/mod.rs",
    "src/tensor/safetensors.rs",
    "src/tensor/wgsl/attention.wgsl",
    "src/tensor/wgsl/elementwise.wgsl",
    "src/tensor/wgsl/embed.wgsl",
    "src/tensor/wgsl/erf.wgsl",
    "src/tensor/wgsl/l2_normalize.wgsl",
    "src/tensor/wgsl/layer_norm.wgsl",
    "src/tensor/wgsl/linear.wgsl",
    "src/tensor/wgsl/pool.wgsl",
    "src/tensor/wgsl/rows.wgsl",
    "src/tensor/wgsl/softmax.wgsl",
);

const WIT_FILES: &[(&str, &str)] = embed!("wit":
    "pipeline.wit",
    "deps/cli.wit",
    "deps/clocks.wit",
    "deps/filesystem.wit",
    "deps/io.wit",
    "deps/random.wit",
    "deps/sockets.wit",
    "deps/kasbah-gpu/gpu.wit",
    "deps/kasbah-gpu-0.2.0/gpu.wit",
);

/// The vendored SDK's manifest: `sdk/Cargo.toml` without the workspace's
/// inheritance (same dependencies and features; the test
/// `vendored_manifest_matches_the_sdks` compares them).
const SDK_MANIFEST: &str = r#"[package]
name = "kasbah-sdk"
description = "Write kasbah pipelines in Rust (vendored by `kasbah new`)."
version = "0.1.0"
edition = "2024"
license = "Apache-2.0"
publish = false

[features]
tensor = ["dep:serde_json"]
http = ["dep:wasip2"]

[dependencies]
wit-bindgen = "0.63"
serde_json = { version = "1", optional = true }
wasip2 = { version = "1.0.4", optional = true }
"#;

pub fn new(a: NewArgs) -> anyhow::Result<ExitCode> {
    let name = valid_crate_name(&a.name)?;
    let dir = a.dir.clone().unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() {
        let empty = dir.is_dir()
            && std::fs::read_dir(&dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .next()
                .is_none();
        if !empty {
            return Err(CliError {
                code: "usage",
                message: format!("{} exists and is not an empty directory", dir.display()),
            }
            .into());
        }
    }
    let sdk_dep = match &a.sdk {
        Some(p) => {
            let p = std::fs::canonicalize(p)
                .with_context(|| format!("--sdk {}: not found", p.display()))?;
            anyhow::ensure!(
                p.join("Cargo.toml").is_file(),
                "--sdk {}: no Cargo.toml there (give the kasbah-sdk crate's directory)",
                p.display()
            );
            toml_string(&p.to_string_lossy())
        }
        None => "\"vendor/kasbah-sdk\"".to_string(),
    };
    let mut files: Vec<(PathBuf, String)> = vec![
        ("Cargo.toml".into(), cargo_toml(name, &sdk_dep)),
        ("src/lib.rs".into(), lib_rs(name)),
        ("README.md".into(), readme(name)),
        (".gitignore".into(), "/target\n".into()),
    ];
    if a.sdk.is_none() {
        files.push(("vendor/kasbah-sdk/Cargo.toml".into(), SDK_MANIFEST.into()));
        for (p, text) in SDK_FILES {
            files.push((Path::new("vendor/kasbah-sdk").join(p), (*text).into()));
        }
        for (p, text) in WIT_FILES {
            files.push((Path::new("vendor/wit").join(p), (*text).into()));
        }
    }
    for (rel, text) in &files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let wasm = name.replace('-', "_");
    eprintln!("created pipeline crate {name} in {}", dir.display());
    eprintln!("  cd {}", dir.display());
    eprintln!("  cargo build --release --target wasm32-wasip2");
    eprintln!("  echo hello | kasbah run target/wasm32-wasip2/release/{wasm}.wasm");
    Ok(ExitCode::SUCCESS)
}

/// A crate name cargo accepts and that is a usable module name: 1-64 of
/// `[A-Za-z0-9_-]`, starting with a letter.
fn valid_crate_name(n: &str) -> anyhow::Result<&str> {
    let ok = (1..=64).contains(&n.len())
        && n.starts_with(|c: char| c.is_ascii_alphabetic())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(n)
    } else {
        Err(CliError {
            code: "usage",
            message: format!(
                "{n:?}: a crate name is 1-64 ASCII letters, digits, `-` and `_`, starting with a letter"
            ),
        }
        .into())
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn cargo_toml(name: &str, sdk_dep: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# A kasbah pipeline is a WebAssembly component: build it with
# `cargo build --release --target wasm32-wasip2`.
[lib]
crate-type = ["cdylib"]

[dependencies]
kasbah-sdk = {{ path = {sdk_dep} }}

# Small, self-contained guests: optimise for size, one codegen unit, LTO,
# no symbols, abort on panic (a panic is a trap the host records).
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true
panic = "abort"
debug = false

# This crate is a workspace of its own, wherever it is created.
[workspace]
"#
    )
}

fn type_name(name: &str) -> String {
    let mut out = String::new();
    for part in name.split(['-', '_']).filter(|p| !p.is_empty()) {
        let mut cs = part.chars();
        if let Some(c) = cs.next() {
            out.push(c.to_ascii_uppercase());
            out.extend(cs);
        }
    }
    out
}

fn lib_rs(name: &str) -> String {
    let ty = type_name(name);
    format!(
        r#"//! {name}: a kasbah pipeline. One request in, one response (or a typed
//! error) out; what it may touch is decided by the tenant's policy.
use kasbah_sdk::{{Error, Pipeline, Request, Response, log}};

pub struct {ty};

impl Pipeline for {ty} {{
    fn run(request: Request) -> Result<Response, Error> {{
        let text = request.text()?;
        log::info(&format!("{name}: {{}} bytes in", text.len()));
        Ok(Response::text(text.to_uppercase()))
    }}
}}

kasbah_sdk::export!({ty});

#[cfg(test)]
mod tests {{
    use super::*;

    fn request(body: &[u8]) -> Request {{
        Request {{
            content_type: "text/plain".into(),
            metadata: Vec::new(),
            body: body.to_vec(),
        }}
    }}

    // `cargo test` runs the pipeline's logic natively (the SDK's log calls
    // go to stderr there); `kasbah run` runs the component in the sandbox.
    #[test]
    fn upper_cases_its_input() {{
        let out = {ty}::run(request(b"hello")).expect("ok");
        assert_eq!(out.body, b"HELLO");
        assert!(out.content_type.starts_with("text/plain"));
    }}

    #[test]
    fn refuses_bytes_that_are_not_text() {{
        assert!(matches!(
            {ty}::run(request(&[0xff, 0xfe])),
            Err(Error::InvalidInput(_))
        ));
    }}
}}
"#
    )
}

fn readme(name: &str) -> String {
    let wasm = name.replace('-', "_");
    format!(
        r#"# {name}

A [kasbah](https://github.com/) pipeline: `src/lib.rs` implements `kasbah_sdk::Pipeline`.

```sh
cargo test                                          # the pipeline's logic, natively
cargo build --release --target wasm32-wasip2        # → target/wasm32-wasip2/release/{wasm}.wasm
echo hello | kasbah run target/wasm32-wasip2/release/{wasm}.wasm   # in the sandbox, locally
kasbah run target/wasm32-wasip2/release/{wasm}.wasm --input in.txt --policy policy.toml --json
```

Publish it and run it on a kasbah server (`KASBAH_URL`, and a developer token in `KASBAH_TOKEN`):

```sh
kasbah publish target/wasm32-wasip2/release/{wasm}.wasm --name {name} --version 0.1.0
echo hello | kasbah run {name}@0.1.0                # or `{name}`: the version published last
curl --data-binary @in.txt -H "Authorization: Bearer $KASBAH_TOKEN" -H 'content-type: text/plain' \
     "$KASBAH_URL/v1/invoke/{name}"
```

`vendor/` holds the kasbah SDK and its WIT contract as `kasbah new` wrote them (unless it
was created with `--sdk PATH`). Building needs the `wasm32-wasip2` target
(`rustup target add wasm32-wasip2`) and, offline, `wit-bindgen` 0.63 in the cargo cache
(`cargo build --offline …`).
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_under(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                files_under(root, &p, out);
            } else if let Ok(rel) = p.strip_prefix(root) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }

    /// A file added to `sdk/src` or `wit/` must be embedded too.
    #[test]
    fn embedded_files_are_every_sdk_and_wit_file() {
        let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        for (root, embedded) in [("sdk", SDK_FILES), ("wit", WIT_FILES)] {
            let base = ws.join(root);
            let mut on_disk = Vec::new();
            let start = if root == "sdk" {
                base.join("src")
            } else {
                base.clone()
            };
            files_under(&base, &start, &mut on_disk);
            on_disk.sort();
            let mut listed: Vec<String> = embedded.iter().map(|(p, _)| p.to_string()).collect();
            listed.sort();
            assert_eq!(listed, on_disk, "embedded {root} files");
        }
    }

    /// The vendored manifest has the SDK's dependencies and features.
    #[test]
    fn vendored_manifest_matches_the_sdks() {
        let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let sdk: toml::Table = std::fs::read_to_string(ws.join("sdk/Cargo.toml"))
            .expect("sdk manifest")
            .parse()
            .expect("toml");
        let vendored: toml::Table = SDK_MANIFEST.parse().expect("toml");
        let keys = |t: &toml::Table, k: &str| -> Vec<String> {
            t.get(k)
                .and_then(|v| v.as_table())
                .map(|t| t.keys().cloned().collect())
                .unwrap_or_default()
        };
        assert_eq!(keys(&sdk, "dependencies"), keys(&vendored, "dependencies"));
        assert_eq!(sdk.get("features"), vendored.get("features"));
        let ws_manifest: toml::Table = std::fs::read_to_string(ws.join("Cargo.toml"))
            .expect("workspace manifest")
            .parse()
            .expect("toml");
        let wit_bindgen = ws_manifest["workspace"]["dependencies"]["wit-bindgen"]
            .as_str()
            .expect("wit-bindgen version");
        assert_eq!(
            vendored["dependencies"]["wit-bindgen"].as_str(),
            Some(wit_bindgen)
        );
    }

    #[test]
    fn names_are_bounded() {
        assert!(valid_crate_name("hello").is_ok());
        assert!(valid_crate_name("my-pipe_2").is_ok());
        for bad in ["", "2x", "-x", "a/b", "a.b", "../x", &"a".repeat(65)] {
            assert!(valid_crate_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(type_name("my-pipe_2"), "MyPipe2");
        assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}

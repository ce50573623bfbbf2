//! `kasbah build`: a guest crate built for `wasm32-wasip2` reproducibly, with
//! an in-toto Statement v1 / SLSA provenance v1 next to the module.
//!
//! The same source tree (see [`source_tree`]), `Cargo.lock` and toolchain
//! give the same bytes wherever the tree lies and whoever builds it:
//! - `cargo build --locked --target wasm32-wasip2`, with the workspace's
//!   `guest` profile if it has one (else `--release`), and fixed codegen on
//!   top of it through `CARGO_PROFILE_<P>_*`: `codegen-units = 1`, no
//!   incremental compilation, no debug info, stripped;
//! - `CARGO_ENCODED_RUSTFLAGS` set whole (the caller's `RUSTFLAGS` and
//!   wrappers are not used): `-C debuginfo=0` and `--remap-path-prefix` for
//!   the source root (`/kasbah/src`), `$CARGO_HOME` (`/kasbah/cargo`), the
//!   toolchain's sysroot (`/kasbah/toolchain`) and the build's own target
//!   dir (`/kasbah/target`): no machine path reaches the bytes;
//! - a private, fresh `CARGO_TARGET_DIR` (removed afterwards);
//! - `SOURCE_DATE_EPOCH`: the caller's, else the git commit's time, else 0.
//!
//! The module then gets its metadata (with `wasm-metadata`): `producers`
//! `processed-by` rustc (its version line) and kasbah, `sdk` kasbah-sdk (the
//! version in `Cargo.lock`), and a `revision` custom section (the git commit,
//! `-dirty` when the tree has changes or untracked files) when the source
//! root is the top level of a git checkout.
//!
//! The source root is the cargo workspace holding the crate (`cargo
//! locate-project --workspace`); a guest inside the kasbah repository builds
//! from the whole repository, so a copy of it anywhere rebuilds the same bytes.

use anyhow::{Context, bail};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where path prefixes are remapped to in the built bytes.
pub const REMAP_SOURCE: &str = "/kasbah/src";
pub const REMAP_CARGO_HOME: &str = "/kasbah/cargo";
pub const REMAP_TOOLCHAIN: &str = "/kasbah/toolchain";
pub const REMAP_TARGET: &str = "/kasbah/target";

pub use kasbah_audit::dsse::{SLSA_PROVENANCE_V1, STATEMENT_TYPE};
pub const TARGET: &str = "wasm32-wasip2";
pub const BUILD_TYPE: &str = "https://kasbah.dev/build/wasm32-wasip2/v1";
pub const SOURCE_TREE_FORMAT: &str = "kasbah-source-tree/v1";

/// The files of a source tree and its digest.
///
/// Definition (`kasbah-source-tree/v1`): every regular file under the root,
/// except inside directories named `target` or `.git` (and a `.git` file: a
/// worktree's link), as `<sha256 hex of its bytes>  <path>\n` with `path`
/// relative to the root, `/`-separated, UTF-8; lines sorted by path
/// (bytewise); the digest is the SHA-256 of those lines concatenated, i.e.
/// `find . -type f | sort | xargs sha256sum | sha256sum` over the same file
/// set. Symbolic links and non-UTF-8 names are refused (a link could point
/// outside the tree; the digest would not say what was built).
pub struct SourceTree {
    pub files: usize,
    pub manifest: String,
    pub digest: String,
}

pub fn source_tree(root: &Path) -> anyhow::Result<SourceTree> {
    let mut files = BTreeMap::new();
    walk(root, root, &mut files)?;
    let mut manifest = String::new();
    for (path, hex) in &files {
        manifest.push_str(&format!("{hex}  {path}\n"));
    }
    Ok(SourceTree {
        files: files.len(),
        digest: hex::encode(Sha256::digest(manifest.as_bytes())),
        manifest,
    })
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) -> anyhow::Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let path = entry.path();
        let kind = entry.file_type()?;
        if name == ".git" || (kind.is_dir() && name == "target") {
            continue;
        }
        let rel = path
            .strip_prefix(root)
            .ok()
            .and_then(Path::to_str)
            .with_context(|| format!("{} is not a UTF-8 path", path.display()))?
            .replace(std::path::MAIN_SEPARATOR, "/");
        if kind.is_symlink() {
            bail!(
                "the source tree holds a symbolic link: {rel} (not allowed in a reproducible build)"
            );
        } else if kind.is_dir() {
            walk(root, &path, out)?;
        } else if kind.is_file() {
            let bytes = std::fs::read(&path).with_context(|| format!("reading {rel}"))?;
            out.insert(rel, hex::encode(Sha256::digest(&bytes)));
        }
    }
    Ok(())
}

/// What a build produced.
pub struct Built {
    pub module: Vec<u8>,
    /// `sha256:<hex>` of [`Self::module`].
    pub digest: String,
    /// The in-toto statement (pretty JSON).
    pub statement: serde_json::Value,
    pub file_name: String,
}

/// The facts of a build that do not depend on where it happened.
struct Plan {
    root: PathBuf,
    crate_dir: PathBuf,
    package: String,
    manifest_rel: String,
    profile: String,
    lock_digest: String,
    sdk_version: Option<String>,
    rustc_vv: String,
    rustc_line: String,
    revision: Option<String>,
    source_date_epoch: u64,
    tree: SourceTree,
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// The rustc cargo will use (`RUSTC` if set, as cargo does).
fn rustc() -> String {
    std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into())
}

fn output(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{what}: output is not UTF-8"))
}

fn plan(dir: &Path) -> anyhow::Result<Plan> {
    let crate_dir = dir
        .canonicalize()
        .with_context(|| format!("source directory {}", dir.display()))?;
    let locate = |workspace: bool| -> anyhow::Result<PathBuf> {
        let mut cmd = Command::new(cargo());
        cmd.current_dir(&crate_dir)
            .args(["locate-project", "--message-format", "plain"]);
        if workspace {
            cmd.arg("--workspace");
        }
        Ok(PathBuf::from(
            output(&mut cmd, "cargo locate-project")?.trim(),
        ))
    };
    let manifest = locate(false)?;
    let root_manifest = locate(true)?;
    let root = root_manifest
        .parent()
        .context("workspace manifest has no directory")?
        .to_path_buf();
    if manifest.parent() != Some(crate_dir.as_path()) {
        bail!(
            "{} is not a crate directory (its manifest would be {})",
            crate_dir.display(),
            manifest.display()
        );
    }
    let manifest_rel = manifest
        .strip_prefix(&root)
        .ok()
        .and_then(Path::to_str)
        .context("the crate lies outside its workspace")?
        .to_string();
    let crate_toml: toml::Table = toml::from_str(&std::fs::read_to_string(&manifest)?)
        .with_context(|| format!("parsing {}", manifest.display()))?;
    let package = crate_toml
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .context("the crate's Cargo.toml has no [package] name")?
        .to_string();
    let root_toml: toml::Table = toml::from_str(&std::fs::read_to_string(&root_manifest)?)
        .with_context(|| format!("parsing {}", root_manifest.display()))?;
    let profile = if root_toml
        .get("profile")
        .and_then(|p| p.get("guest"))
        .is_some()
    {
        "guest"
    } else {
        "release"
    };
    let lock = std::fs::read(root.join("Cargo.lock"))
        .context("no Cargo.lock next to the workspace manifest: a reproducible build needs one")?;
    let lock_toml: toml::Table = toml::from_str(std::str::from_utf8(&lock)?)?;
    let sdk_version = lock_toml
        .get("package")
        .and_then(|p| p.as_array())
        .and_then(|ps| {
            ps.iter()
                .find(|p| p.get("name").and_then(|n| n.as_str()) == Some("kasbah-sdk"))
        })
        .and_then(|p| p.get("version"))
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let rustc_vv = output(
        Command::new(rustc()).current_dir(&crate_dir).arg("-vV"),
        "rustc -vV",
    )?;
    let rustc_line = rustc_vv.lines().next().unwrap_or_default().to_string();
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .current_dir(&root)
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    // Only a checkout whose top level is the source root: a copy of the
    // source that happens to lie inside some other repository has no
    // revision (it would name that repository's commit).
    let in_git = git(&["rev-parse", "--show-toplevel"])
        .and_then(|top| PathBuf::from(top).canonicalize().ok())
        .is_some_and(|top| top == root);
    let revision = if in_git {
        git(&["rev-parse", "HEAD"]).map(|rev| match git(&["status", "--porcelain"]) {
            Some(s) if s.is_empty() => rev,
            _ => format!("{rev}-dirty"),
        })
    } else {
        None
    };
    let source_date_epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .parse()
            .context("SOURCE_DATE_EPOCH is not a number of seconds")?,
        Err(_) if in_git => git(&["log", "-1", "--format=%ct"])
            .and_then(|t| t.parse().ok())
            .unwrap_or(0),
        Err(_) => 0,
    };
    let tree = source_tree(&root)?;
    Ok(Plan {
        root,
        crate_dir,
        package,
        manifest_rel,
        profile: profile.to_string(),
        lock_digest: hex::encode(Sha256::digest(&lock)),
        sdk_version,
        rustc_line,
        rustc_vv,
        revision,
        source_date_epoch,
        tree,
    })
}

/// Build the guest crate in `dir` (a crate directory inside a cargo
/// workspace with a `Cargo.lock`). Cargo's progress goes to stderr.
pub fn build(dir: &Path) -> anyhow::Result<Built> {
    let p = plan(dir)?;
    let target_dir = tempfile::Builder::new()
        .prefix("kasbah-build-")
        .tempdir()
        .context("creating the build's target directory")?;
    let sysroot = output(
        Command::new(rustc())
            .current_dir(&p.crate_dir)
            .args(["--print", "sysroot"]),
        "rustc --print sysroot",
    )?;
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    // rustc applies the last matching remap: longest (most specific) last.
    let mut remaps: Vec<(String, &str)> = vec![
        (p.root.display().to_string(), REMAP_SOURCE),
        (cargo_home.display().to_string(), REMAP_CARGO_HOME),
        (sysroot.trim().to_string(), REMAP_TOOLCHAIN),
        (target_dir.path().display().to_string(), REMAP_TARGET),
    ];
    if let Ok(real) = cargo_home.canonicalize()
        && real != cargo_home
    {
        remaps.push((real.display().to_string(), REMAP_CARGO_HOME));
    }
    remaps.sort_by_key(|(from, _)| from.len());
    let mut flags = vec!["-C".to_string(), "debuginfo=0".to_string()];
    for (from, to) in &remaps {
        flags.push(format!("--remap-path-prefix={from}={to}"));
    }
    let prof = p.profile.to_uppercase();
    let mut cmd = Command::new(cargo());
    cmd.current_dir(&p.crate_dir)
        .args(["build", "--locked", "--target", TARGET, "--profile"])
        .arg(&p.profile)
        .args(["-p", &p.package, "--message-format=json-render-diagnostics"])
        .env("CARGO_TARGET_DIR", target_dir.path())
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))
        .env("SOURCE_DATE_EPOCH", p.source_date_epoch.to_string())
        .env("CARGO_INCREMENTAL", "0")
        .env(format!("CARGO_PROFILE_{prof}_CODEGEN_UNITS"), "1")
        .env(format!("CARGO_PROFILE_{prof}_INCREMENTAL"), "false")
        .env(format!("CARGO_PROFILE_{prof}_DEBUG"), "false")
        .env(format!("CARGO_PROFILE_{prof}_STRIP"), "true")
        .env("TZ", "UTC")
        .env("LC_ALL", "C");
    for var in [
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_RUSTC_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build")?;
    if !out.status.success() {
        bail!("cargo build failed (see its messages above)");
    }
    let mut artifact = None;
    let mut outside = std::collections::BTreeSet::new();
    for line in out.stdout.split(|b| *b == b'\n') {
        let Ok(msg) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(dir) = msg["package_id"]
            .as_str()
            .and_then(|id| path_outside(id, &p.root))
        {
            outside.insert(dir);
        }
        if msg["reason"] != "compiler-artifact" || msg["target"]["name"].as_str().is_none() {
            continue;
        }
        let wasm = msg["filenames"].as_array().and_then(|fs| {
            fs.iter()
                .filter_map(|f| f.as_str())
                .find(|f| f.ends_with(".wasm"))
        });
        if let Some(f) = wasm
            && msg["package_id"]
                .as_str()
                .is_some_and(|id| id.contains(&format!("{}#", p.crate_dir.display())))
        {
            artifact = Some(PathBuf::from(f));
        }
    }
    if !outside.is_empty() {
        let list: Vec<String> = outside.iter().map(|d| d.display().to_string()).collect();
        bail!(
            "path dependencies outside the source root {}: {} (their source is not in the \
             provenance's source tree and their paths are not remapped; move them into the \
             workspace)",
            p.root.display(),
            list.join(", ")
        );
    }
    let artifact = artifact.with_context(|| {
        format!(
            "cargo built no .wasm for {} (is it a cdylib guest crate?)",
            p.package
        )
    })?;
    let raw = std::fs::read(&artifact)
        .with_context(|| format!("reading the built module {}", artifact.display()))?;
    let module = embed_metadata(&raw, &p)?;
    let file_name = artifact
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("module.wasm")
        .to_string();
    let hexd = hex::encode(Sha256::digest(&module));
    let statement = statement(&p, &file_name, &hexd, &flags_for_record(&remaps));
    Ok(Built {
        module,
        digest: format!("sha256:{hexd}"),
        statement,
        file_name,
    })
}

/// A path package's directory (cargo's `path+file:///dir#name@version`
/// package id) when it lies outside `root`.
fn path_outside(package_id: &str, root: &Path) -> Option<PathBuf> {
    let url = package_id.strip_prefix("path+file://")?;
    let raw = url.split('#').next()?;
    // Percent-decoding (cargo encodes spaces and the like in the URL).
    let mut bytes = Vec::with_capacity(raw.len());
    let mut it = raw.bytes();
    while let Some(b) = it.next() {
        if b == b'%' {
            let hi = it.next()?;
            let lo = it.next()?;
            let hex = [hi, lo];
            bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            bytes.push(b);
        }
    }
    let dir = PathBuf::from(String::from_utf8(bytes).ok()?);
    (!dir.starts_with(root)).then_some(dir)
}

/// The remaps as recorded (targets only: the machine's paths stay out).
fn flags_for_record(remaps: &[(String, &str)]) -> Vec<String> {
    let mut v: Vec<String> = remaps.iter().map(|(_, to)| to.to_string()).collect();
    v.dedup();
    v
}

fn embed_metadata(raw: &[u8], p: &Plan) -> anyhow::Result<Vec<u8>> {
    let mut producers = wasm_metadata::Producers::empty();
    producers.add("processed-by", "rustc", rustc_version(&p.rustc_line));
    producers.add("processed-by", "kasbah", env!("CARGO_PKG_VERSION"));
    if let Some(v) = &p.sdk_version {
        producers.add("sdk", "kasbah-sdk", v);
    }
    let mut out = producers
        .add_to_wasm(raw)
        .context("adding the producers section")?;
    if let Some(rev) = &p.revision {
        use wasm_encoder::ComponentSection as _;
        // The section wasm-metadata reads as the OCI `revision` annotation.
        wasm_encoder::CustomSection {
            name: "revision".into(),
            data: rev.as_bytes().into(),
        }
        .append_to_component(&mut out);
    }
    Ok(out)
}

/// `rustc 1.95.0 (59807616e 2026-04-14)` → `1.95.0 (59807616e 2026-04-14)`.
fn rustc_version(line: &str) -> &str {
    line.strip_prefix("rustc ").unwrap_or(line)
}

fn statement(p: &Plan, file_name: &str, module_hex: &str, remaps: &[String]) -> serde_json::Value {
    let mut deps = vec![serde_json::json!({
        "name": "source",
        "digest": { "sha256": p.tree.digest },
        "annotations": { "format": SOURCE_TREE_FORMAT, "files": p.tree.files },
    })];
    if let Some(rev) = &p.revision {
        deps[0]["annotations"]["revision"] = rev.clone().into();
    }
    deps.push(serde_json::json!({
        "name": "Cargo.lock",
        "digest": { "sha256": p.lock_digest },
    }));
    deps.push(serde_json::json!({
        "name": "rustc",
        "digest": { "sha256": hex::encode(Sha256::digest(p.rustc_vv.as_bytes())) },
        "annotations": { "version": p.rustc_line, "rustc -vV": p.rustc_vv, "target": TARGET },
    }));
    serde_json::json!({
        "_type": STATEMENT_TYPE,
        "subject": [{ "name": file_name, "digest": { "sha256": module_hex } }],
        "predicateType": SLSA_PROVENANCE_V1,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "package": p.package,
                    "manifest": p.manifest_rel,
                    "target": TARGET,
                    "profile": p.profile,
                    "sourceDateEpoch": p.source_date_epoch,
                },
                "internalParameters": {
                    "cargo": ["build", "--locked", "--target", TARGET, "--profile", p.profile],
                    "codegenUnits": 1,
                    "incremental": false,
                    "debuginfo": 0,
                    "strip": true,
                    "remapPathPrefix": remaps,
                    "sdkVersion": p.sdk_version,
                },
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": { "id": format!("https://kasbah.dev/kasbah-build@{}", env!("CARGO_PKG_VERSION")) },
                "metadata": {},
            },
        },
    })
}

/// A material of a statement by name: its sha256 hex.
pub fn material<'a>(statement: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    statement["predicate"]["buildDefinition"]["resolvedDependencies"]
        .as_array()?
        .iter()
        .find(|d| d["name"] == name)?["digest"]["sha256"]
        .as_str()
}

/// The statement's only subject's sha256 hex.
pub fn subject(statement: &serde_json::Value) -> Option<&str> {
    match statement["subject"].as_array()?.as_slice() {
        [one] => one["digest"]["sha256"].as_str(),
        _ => None,
    }
}

/// `kasbah build`: write the module and `<module>.provenance.json`.
pub fn build_command(dir: &Path, out: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let built = build(dir)?;
    let out = match out {
        Some(o) => o.to_path_buf(),
        None => {
            // Under the workspace's target/: outside the source tree digest.
            let p = plan_root(dir)?.join("target").join("kasbah-build");
            std::fs::create_dir_all(&p)?;
            p.join(&built.file_name)
        }
    };
    std::fs::write(&out, &built.module).with_context(|| format!("writing {}", out.display()))?;
    let prov = provenance_path(&out);
    let text = serde_json::to_string_pretty(&built.statement)? + "\n";
    std::fs::write(&prov, text).with_context(|| format!("writing {}", prov.display()))?;
    if json {
        crate::out::write(format_args!(
            "{}\n",
            serde_json::json!({
                "module": out, "digest": built.digest, "provenance": prov,
                "source": material(&built.statement, "source"),
            })
        ))?;
    } else {
        crate::out::write(format_args!(
            "{}  {}\nprovenance: {}\n",
            built.digest,
            out.display(),
            prov.display()
        ))?;
    }
    Ok(())
}

fn plan_root(dir: &Path) -> anyhow::Result<PathBuf> {
    let out = output(
        Command::new(cargo()).current_dir(dir).args([
            "locate-project",
            "--workspace",
            "--message-format",
            "plain",
        ]),
        "cargo locate-project",
    )?;
    Ok(PathBuf::from(out.trim())
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default())
}

/// `module.wasm` → `module.wasm.provenance.json`.
pub fn provenance_path(module: &Path) -> PathBuf {
    let mut s = module.as_os_str().to_os_string();
    s.push(".provenance.json");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tree digest's definition: regular files only, `target/` dirs and
    /// `.git` skipped at any depth (a *file* named `target` counts), lines
    /// `<sha256>  <path>` sorted bytewise, the digest their SHA-256.
    #[test]
    fn source_tree_follows_its_definition() {
        let d = tempfile::tempdir().expect("tmp");
        let w = |p: &str, b: &str| {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, b).expect("write");
        };
        w("b.txt", "b");
        w("a/Z.rs", "z");
        w("a/target", "a file named target");
        w("target/debug/x", "skipped");
        w("sub/target/y", "skipped");
        w(".git/HEAD", "skipped");
        w("sub/.git", "gitdir: skipped");
        let t = source_tree(d.path()).expect("tree");
        let h = |s: &str| hex::encode(Sha256::digest(s.as_bytes()));
        let want = format!(
            "{}  a/Z.rs\n{}  a/target\n{}  b.txt\n",
            h("z"),
            h("a file named target"),
            h("b")
        );
        assert_eq!(t.manifest, want);
        assert_eq!(t.files, 3);
        assert_eq!(t.digest, h(&want));
        // One byte changes the digest.
        w("a/Z.rs", "y");
        assert_ne!(source_tree(d.path()).expect("tree").digest, t.digest);
    }

    #[test]
    fn path_dependencies_outside_the_root_are_found() {
        let root = Path::new("/src/ws");
        assert_eq!(
            path_outside("path+file:///src/ws/sdk#kasbah-sdk@0.1.0", root),
            None
        );
        assert_eq!(path_outside("path+file:///src/ws/guest#0.1.0", root), None);
        assert_eq!(
            path_outside("path+file:///opt/kasbah%20sdk#kasbah-sdk@0.1.0", root),
            Some(PathBuf::from("/opt/kasbah sdk"))
        );
        assert_eq!(
            path_outside("path+file:///src/ws-other#x@1.0.0", root),
            Some(PathBuf::from("/src/ws-other")),
            "a sibling whose name starts like the root is outside"
        );
        assert_eq!(
            path_outside(
                "registry+https://github.com/rust-lang/crates.io-index#serde@1.0.0",
                root
            ),
            None
        );
    }

    #[test]
    fn a_symlink_in_the_tree_is_refused() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::write(d.path().join("a"), "a").expect("write");
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("link")).expect("symlink");
        let e = source_tree(d.path()).err().expect("refused");
        assert!(e.to_string().contains("symbolic link: link"), "{e}");
    }

    #[test]
    fn statement_helpers_read_subject_and_materials() {
        let st = serde_json::json!({
            "subject": [{ "name": "m.wasm", "digest": { "sha256": "ab" } }],
            "predicate": { "buildDefinition": { "resolvedDependencies": [
                { "name": "source", "digest": { "sha256": "cd" } }
            ] } }
        });
        assert_eq!(subject(&st), Some("ab"));
        assert_eq!(material(&st, "source"), Some("cd"));
        assert_eq!(material(&st, "Cargo.lock"), None);
        let two = serde_json::json!({ "subject": [st["subject"][0], st["subject"][0]] });
        assert_eq!(subject(&two), None, "two subjects name no one module");
        assert_eq!(
            provenance_path(Path::new("out/m.wasm")),
            PathBuf::from("out/m.wasm.provenance.json")
        );
    }
}

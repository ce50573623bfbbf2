//! Every command the README shows works as written on the default config.
//!
//! The test reads `README.md` at test time and runs what it shows, for real,
//! against a `kasbah serve` with the default config. The rules:
//!
//! - **TOML blocks.** Every ```` ```toml ```` block must start with a comment
//!   naming its file (`# ceiling.toml`, `# policy.toml`, `# kasbah.toml, …`);
//!   it is written under that name into the working directory, verbatim.
//!   `kasbah.toml` is a host config example (not the default config): it must
//!   load with `ServerConfig::load`. Every other TOML file must be used by a
//!   command the test runs.
//! - **Shell blocks that run `kasbah`** (a ```` ```sh ```` block with a line
//!   whose command starts with `kasbah` or `target/debug/kasbah`, or pipes into
//!   one): every line runs, in order, in a fresh working directory, through
//!   `bash` with `set -o pipefail`, and must exit 0 (a line whose comment starts
//!   with `fails` must exit non-zero instead). `kasbah` on `PATH` and
//!   `target/debug/kasbah` are the CLI built for this test. Comments (from the
//!   first ` #` outside quotes) are not run. Only these lines are treated
//!   specially:
//!   - `cargo build …` is not run: building this test built the CLI. Except
//!     `cargo build … --manifest-path DIR/Cargo.toml` of a crate an earlier
//!     `kasbah new` made: that one is built for real, `--offline`, in a build
//!     directory kept between test runs (`$CARGO_TARGET_DIR/kasbah-new-test`),
//!     and its component copied to `DIR/target/…` where the README expects it.
//!   - `… kasbah serve …` starts the server as written, in the background, with
//!     `KASBAH_LISTEN=127.0.0.1:0` (a free port) and otherwise the default
//!     config; its stdout gives the admin token and the address.
//!   - `export NAME=VALUE …` sets the variables for later lines.
//!     `KASBAH_URL` becomes the server's real address. `KASBAH_TOKEN=kbh_…`
//!     becomes the token of the role its comment names (`# the admin token`,
//!     `operator`, `developer`, `auditor`): the latest token of that role any
//!     earlier command printed (each printed `kbh_` token's role is asked of
//!     the server with `kasbah whoami`).
//! - **Placeholders** `X…` in a command are replaced by a real value:
//!   `sha256:…` by the digest of the latest module `kasbah publish` printed
//!   (every README `sha256:…` is a module); any other `X…` (`op_…`, `tn_…`,
//!   `run_…`, `tok_…`, `kasbah.local/log+…`) by the first `X<id>` in the output
//!   of the latest command that printed one. A placeholder no earlier command
//!   printed fails the test, naming it.
//! - **Files** the commands name that the test provides: `hello.wasm` and
//!   `target/wasm32-wasip2/guest/hello.wasm` (the hello guest), `in.txt` and
//!   `weights.bin`, and `guest-examples/` (a link to the workspace's guest
//!   crates, for `kasbah build`); the data dir `./kasbah-data` is the server's. Any other
//!   file must come from a TOML block or an earlier command.
//! - **Other shell blocks** (`make demo`/`make test`, the benchmarks) are not
//!   run here (CI runs `make demo` and `make test`; benches take minutes), but
//!   each line must be `make <target>` with a target the Makefile defines, or
//!   `cargo <cmd>` whose `-p <package>` and `--bench <name>` exist in the
//!   workspace.
//!
//! Commands quoted inline in prose are not run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const CLI: &str = env!("CARGO_BIN_EXE_kasbah-under-test");

/// A fenced code block: its language tag, and its lines with their README
/// line numbers.
struct Block {
    lang: String,
    lines: Vec<(usize, String)>,
}

fn blocks(readme: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut cur: Option<Block> = None;
    for (i, line) in readme.lines().enumerate() {
        let n = i + 1;
        match (cur.take(), line.strip_prefix("```")) {
            (None, Some(lang)) => {
                cur = Some(Block {
                    lang: lang.trim().to_string(),
                    lines: Vec::new(),
                })
            }
            (Some(b), Some(_)) => out.push(b),
            (Some(mut b), None) => {
                b.lines.push((n, line.to_string()));
                cur = Some(b);
            }
            (None, None) => {}
        }
    }
    assert!(cur.is_none(), "README.md has an unclosed code block");
    out
}

/// `(command, comment)`: the comment starts at the first `#` outside quotes
/// that begins the line or follows whitespace.
fn split_comment(line: &str) -> (&str, &str) {
    let (mut single, mut double) = (false, false);
    let mut prev_space = true;
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev_space => {
                return (line[..i].trim(), line[i + 1..].trim());
            }
            _ => {}
        }
        prev_space = c.is_whitespace();
    }
    (line.trim(), "")
}

/// Whether a command runs the kasbah CLI (directly or at the end of a pipe).
fn runs_kasbah(cmd: &str) -> bool {
    cmd.split('|').any(|part| {
        matches!(
            part.split_whitespace().next(),
            Some("kasbah" | "target/debug/kasbah")
        )
    })
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '/' | '=' | '.' | '-')
}

/// Placeholders in a command: `(byte range of "X…", "X")`.
fn placeholders(cmd: &str) -> Vec<(std::ops::Range<usize>, String)> {
    let mut out = Vec::new();
    for (end, _) in cmd.match_indices('…') {
        let start = cmd[..end]
            .char_indices()
            .rev()
            .take_while(|(_, c)| !c.is_whitespace() && !matches!(c, '\'' | '"' | '=' | '(' | ')'))
            .last()
            .map_or(end, |(i, _)| i);
        out.push((start..end + '…'.len_utf8(), cmd[start..end].to_string()));
    }
    out
}

/// The first `prefix<id>` in `text`, if any.
fn find_id(text: &str, prefix: &str) -> Option<String> {
    let mut from = 0;
    while let Some(at) = text[from..].find(prefix) {
        let start = from + at;
        let rest = &text[start + prefix.len()..];
        let len = rest.find(|c: char| !is_id_char(c)).unwrap_or(rest.len());
        let before_ok = text[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_ascii_alphanumeric());
        if len > 0 && before_ok {
            return Some(format!("{prefix}{}", &rest[..len]));
        }
        from = start + prefix.len();
    }
    None
}

/// Every `kbh_<hex>` token in `text`.
fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(t) = find_id(rest, "kbh_") {
        let at = rest.find(&t).unwrap_or(0) + t.len();
        out.push(t);
        rest = &rest[at..];
    }
    out
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The state of a README walk-through.
struct Walk {
    work: PathBuf,
    env: HashMap<String, String>,
    /// Outputs (stdout + stderr) of the commands run so far, oldest first.
    outputs: Vec<String>,
    /// Latest published module digest.
    module: Option<String>,
    /// Role (`admin`, `operator`, …) → latest token of that role.
    role_tokens: HashMap<String, String>,
    server: Option<Server>,
    url: Option<String>,
    ran: usize,
}

impl Walk {
    fn at(&self, n: usize) -> String {
        format!("README.md line {n}")
    }

    fn resolve(&self, n: usize, prefix: &str) -> String {
        if prefix == "sha256:" {
            return self.module.clone().unwrap_or_else(|| {
                panic!(
                    "{}: `sha256:…` (a module digest) before any `kasbah publish`",
                    self.at(n)
                )
            });
        }
        if prefix == "kbh_" {
            panic!(
                "{}: a `kbh_…` token outside `export KASBAH_TOKEN=kbh_…   # the <role> token`",
                self.at(n)
            );
        }
        self.outputs
            .iter()
            .rev()
            .find_map(|o| find_id(o, prefix))
            .unwrap_or_else(|| {
                panic!(
                    "{}: no earlier command printed a value for the placeholder `{prefix}…`",
                    self.at(n)
                )
            })
    }

    fn substitute(&self, n: usize, cmd: &str) -> String {
        let mut out = cmd.to_string();
        for (range, prefix) in placeholders(cmd).into_iter().rev() {
            out.replace_range(range, &self.resolve(n, &prefix));
        }
        out
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        // The README's environment only: none of the caller's KASBAH_* settings.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("KASBAH_") {
                c.env_remove(k);
            }
        }
        c.current_dir(&self.work).envs(&self.env);
        c
    }

    /// Record the role of every token in `text` (asked of the server).
    fn learn_tokens(&mut self, text: &str) {
        let Some(url) = self.url.clone() else { return };
        for t in tokens(text) {
            let out = self
                .command(CLI)
                .args(["whoami", "--url", &url, "--token", &t])
                .output()
                .expect("run kasbah whoami");
            if !out.status.success() {
                continue; // not a live token (e.g. one just revoked)
            }
            let who = String::from_utf8_lossy(&out.stdout);
            if let Some(role) = who.split_whitespace().next() {
                self.role_tokens.insert(role.to_string(), t);
            }
        }
    }

    fn serve(&mut self, n: usize, cmd: &str) {
        assert!(self.server.is_none(), "{}: a second `serve`", self.at(n));
        let mut child = self
            .command("bash")
            .args(["-c", &format!("exec {cmd}")])
            .env("KASBAH_LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kasbah serve");
        let stdout = child.stdout.take().expect("stdout");
        let server = Server(child);
        let banner = kasbah_tests::read_serve_banner(stdout);
        let printed = banner.printed;
        self.url = banner.url;
        assert!(
            self.url.is_some(),
            "{}: `{cmd}` did not start listening; it printed:\n{printed}",
            self.at(n)
        );
        self.server = Some(server);
        self.learn_tokens(&printed);
        assert!(
            self.role_tokens.contains_key("admin"),
            "{}: `{cmd}` printed no admin token:\n{printed}",
            self.at(n)
        );
        self.outputs.push(printed);
    }

    fn export(&mut self, n: usize, cmd: &str, comment: &str) {
        let assignments = cmd.strip_prefix("export ").expect("an export line");
        for a in assignments.split_whitespace() {
            let (name, value) = a
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: `{a}` is not NAME=VALUE", self.at(n)));
            let value = match name {
                "KASBAH_URL" => self
                    .url
                    .clone()
                    .unwrap_or_else(|| panic!("{}: KASBAH_URL before `serve`", self.at(n))),
                "KASBAH_TOKEN" => {
                    let role = ["admin", "operator", "developer", "auditor"]
                        .into_iter()
                        .find(|r| comment.contains(&format!("the {r} token")))
                        .unwrap_or_else(|| {
                            panic!(
                                "{}: say whose token it is (`# the admin token`, `# the operator token`, …)",
                                self.at(n)
                            )
                        });
                    self.role_tokens.get(role).cloned().unwrap_or_else(|| {
                        panic!("{}: no earlier command printed a {role} token", self.at(n))
                    })
                }
                _ => self.substitute(n, value),
            };
            self.env.insert(name.to_string(), value);
        }
    }

    /// `cargo build … --manifest-path DIR/Cargo.toml` of a `kasbah new`
    /// crate (see the module doc).
    fn build_new_crate(&mut self, n: usize, cmd: &str) {
        let words: Vec<&str> = cmd.split_whitespace().collect();
        let manifest = words
            .iter()
            .position(|w| *w == "--manifest-path")
            .and_then(|i| words.get(i + 1))
            .unwrap_or_else(|| panic!("{}: --manifest-path without a path", self.at(n)));
        let manifest = self.work.join(manifest);
        let krate = manifest.parent().expect("a crate directory").to_path_buf();
        let text = std::fs::read_to_string(&manifest)
            .unwrap_or_else(|e| panic!("{}: {}: {e}", self.at(n), manifest.display()));
        assert!(
            krate.join("vendor/kasbah-sdk").is_dir(),
            "{}: {} is not a crate `kasbah new` made",
            self.at(n),
            krate.display()
        );
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("name = \""))
            .and_then(|l| l.strip_suffix('"'))
            .unwrap_or_else(|| panic!("{}: no package name", self.at(n)))
            .replace('-', "_");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| kasbah_tests::workspace_root().join("target"))
            .join("kasbah-new-test");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .current_dir(&self.work)
            .args(&words[1..])
            .arg("--offline")
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .expect("run cargo");
        assert!(
            out.status.success(),
            "{}: `{cmd}` failed:\n{}",
            self.at(n),
            String::from_utf8_lossy(&out.stderr)
        );
        let rel = Path::new("wasm32-wasip2/release").join(format!("{name}.wasm"));
        let dest = krate.join("target").join(&rel);
        std::fs::create_dir_all(dest.parent().expect("dir")).expect("mkdir");
        std::fs::copy(target.join(&rel), &dest)
            .unwrap_or_else(|e| panic!("{}: copying {}: {e}", self.at(n), rel.display()));
        self.ran += 1;
    }

    fn run(&mut self, n: usize, cmd: &str, comment: &str) {
        let line = self.substitute(n, cmd);
        let out = self
            .command("timeout")
            .args(["300", "bash", "-c", &format!("set -o pipefail\n{line}")])
            .stdin(Stdio::null())
            .output()
            .expect("run bash");
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let should_fail = comment.starts_with("fails");
        assert_eq!(
            !out.status.success(),
            should_fail,
            "{}: `{cmd}` (run as `{line}`) exited {:?}{}; it printed:\n{printed}",
            self.at(n),
            out.status.code(),
            if should_fail {
                ", but its comment says it fails"
            } else {
                ""
            }
        );
        for l in printed.lines() {
            if let Some(rest) = l.strip_prefix("published ")
                && let Some(d) = find_id(rest, "sha256:")
            {
                self.module = Some(d);
            }
        }
        self.learn_tokens(&printed);
        self.outputs.push(printed);
        self.ran += 1;
    }
}

/// The first line of a TOML block names its file: `# name.toml…`.
fn toml_file_name(b: &Block) -> Option<String> {
    let first = b.lines.first()?.1.strip_prefix("# ")?;
    let name: String = first
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .collect();
    name.ends_with(".toml").then_some(name)
}

/// Workspace packages and their bench targets, from `cargo metadata`.
fn workspace_benches(root: &Path) -> HashMap<String, Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root)
        .args([
            "metadata",
            "--no-deps",
            "--offline",
            "--format-version",
            "1",
        ])
        .output()
        .expect("run cargo metadata");
    assert!(out.status.success(), "cargo metadata failed");
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let mut packages = HashMap::new();
    for p in meta["packages"].as_array().into_iter().flatten() {
        let benches = p["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| {
                t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "bench"))
            })
            .filter_map(|t| t["name"].as_str().map(str::to_string))
            .collect();
        if let Some(name) = p["name"].as_str() {
            packages.insert(name.to_string(), benches);
        }
    }
    packages
}

/// A line of a block that is not run here: `make <target>` or `cargo …` with
/// an existing package and bench.
fn check_not_run(root: &Path, n: usize, cmd: &str, packages: &HashMap<String, Vec<String>>) {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    match words.first() {
        Some(&"make") => {
            let makefile = std::fs::read_to_string(root.join("Makefile")).expect("read Makefile");
            for target in &words[1..] {
                assert!(
                    makefile
                        .lines()
                        .any(|l| l.split(':').next() == Some(*target) && l.contains(':')),
                    "README.md line {n}: `{cmd}`: the Makefile has no target `{target}`"
                );
            }
        }
        Some(&"cargo") => {
            let arg = |flag: &str| {
                words
                    .iter()
                    .position(|w| *w == flag)
                    .and_then(|i| words.get(i + 1))
                    .copied()
            };
            if let Some(p) = arg("-p") {
                let benches = packages.get(p).unwrap_or_else(|| {
                    panic!("README.md line {n}: `{cmd}`: no workspace package `{p}`")
                });
                if let Some(b) = arg("--bench") {
                    assert!(
                        benches.iter().any(|x| x == b),
                        "README.md line {n}: `{cmd}`: package `{p}` has no bench `{b}`"
                    );
                }
            }
        }
        _ => panic!(
            "README.md line {n}: `{cmd}` is in a shell block that runs no `kasbah`; \
             only `make …` and `cargo …` lines may be there (see this test's rules)"
        ),
    }
}

#[test]
fn every_readme_command_works_on_the_default_config() {
    let root = kasbah_tests::workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("read README.md");
    let blocks = blocks(&readme);

    let work = tempfile::tempdir().expect("tmp");
    let w = work.path();
    // The files the README's commands name.
    let hello = kasbah_tests::guest_bytes("hello");
    std::fs::create_dir_all(w.join("target/wasm32-wasip2/guest")).expect("mkdir");
    std::fs::create_dir_all(w.join("target/debug")).expect("mkdir");
    std::fs::create_dir_all(w.join("bin")).expect("mkdir");
    std::fs::create_dir_all(w.join("home")).expect("mkdir");
    std::fs::write(w.join("hello.wasm"), &hello).expect("write");
    std::fs::write(w.join("target/wasm32-wasip2/guest/hello.wasm"), &hello).expect("write");
    std::fs::write(w.join("in.txt"), "hello from the README\n").expect("write");
    std::fs::write(w.join("weights.bin"), [7u8; 4096]).expect("write");
    std::os::unix::fs::symlink(CLI, w.join("target/debug/kasbah")).expect("symlink");
    std::os::unix::fs::symlink(CLI, w.join("bin/kasbah")).expect("symlink");
    std::os::unix::fs::symlink(root.join("guest-examples"), w.join("guest-examples"))
        .expect("symlink");

    // TOML examples, written under the names they give.
    let mut toml_files = Vec::new();
    for b in blocks.iter().filter(|b| b.lang == "toml") {
        let n = b.lines.first().map_or(0, |l| l.0);
        let name = toml_file_name(b).unwrap_or_else(|| {
            panic!(
                "README.md line {n}: a TOML block must start with `# <file>.toml` naming its file"
            )
        });
        let text: String = b.lines.iter().map(|(_, l)| format!("{l}\n")).collect();
        std::fs::write(w.join(&name), text).expect("write TOML example");
        if name == "kasbah.toml" {
            if let Err(e) = kasbah_server::ServerConfig::load(&w.join(&name)) {
                panic!("README.md line {n}: the host config example does not load: {e:#}");
            }
        } else {
            toml_files.push((n, name));
        }
    }

    let path = format!(
        "{}:{}",
        w.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut env = HashMap::from([
        ("PATH".to_string(), path),
        ("HOME".to_string(), w.join("home").display().to_string()),
    ]);
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR") {
        env.insert("XDG_RUNTIME_DIR".into(), x.to_string_lossy().into_owned());
    }
    let mut walk = Walk {
        work: w.to_path_buf(),
        env,
        outputs: Vec::new(),
        module: None,
        role_tokens: HashMap::new(),
        server: None,
        url: None,
        ran: 0,
    };
    let mut commands = Vec::new();
    let packages = workspace_benches(&root);

    for b in blocks.iter().filter(|b| b.lang == "sh") {
        let lines: Vec<(usize, &str, &str)> = b
            .lines
            .iter()
            .map(|(n, l)| {
                let (cmd, comment) = split_comment(l);
                (*n, cmd, comment)
            })
            .filter(|(_, cmd, _)| !cmd.is_empty())
            .collect();
        if !lines.iter().any(|(_, cmd, _)| runs_kasbah(cmd)) {
            for (n, cmd, _) in &lines {
                check_not_run(&root, *n, cmd, &packages);
            }
            continue;
        }
        for (n, cmd, comment) in lines {
            eprintln!("README.md line {n}: {cmd}");
            commands.push(cmd.to_string());
            let first = cmd.split_whitespace().next().unwrap_or("");
            let second = cmd.split_whitespace().nth(1).unwrap_or("");
            match (first, second) {
                ("cargo", "build") if cmd.contains("--manifest-path") => {
                    walk.build_new_crate(n, cmd)
                }
                ("cargo", "build") => {}
                ("kasbah" | "target/debug/kasbah", "serve") => walk.serve(n, cmd),
                ("export", _) => walk.export(n, cmd, comment),
                _ => walk.run(n, cmd, comment),
            }
        }
    }

    assert!(
        walk.server.is_some(),
        "the README never starts `kasbah serve`"
    );
    assert!(
        walk.ran >= 20,
        "only {} README commands ran: the README's command blocks were not found",
        walk.ran
    );
    for (n, name) in toml_files {
        assert!(
            commands
                .iter()
                .any(|c| c.split_whitespace().any(|w| w == name)),
            "README.md line {n}: no command uses the TOML example `{name}`"
        );
    }
}

#[test]
fn placeholders_and_ids_are_found() {
    let ph =
        placeholders("kasbah audit verify r.json --key 'kasbah.local/log+…' --module sha256:…");
    let names: Vec<&str> = ph.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(names, ["kasbah.local/log+", "sha256:"]);
    assert_eq!(
        placeholders("export KASBAH_TOKEN=kbh_…")[0].1,
        "kbh_",
        "`=` ends a placeholder's prefix"
    );
    assert_eq!(
        find_id("created operator op_ab12 (telecom)", "op_").as_deref(),
        Some("op_ab12")
    );
    assert_eq!(find_id("stop_x op_1", "op_").as_deref(), Some("op_1"));
    assert_eq!(
        split_comment("kasbah run x   # as 'the' developer"),
        ("kasbah run x", "as 'the' developer")
    );
    assert_eq!(
        split_comment("echo '#x' | kasbah"),
        ("echo '#x' | kasbah", "")
    );
    assert!(runs_kasbah(
        "echo \"hello\" | target/debug/kasbah run a.wasm"
    ));
    assert!(!runs_kasbah("make demo"));
}

//! A hostile pipeline used by the containment tests. The request's `attack`
//! metadata picks the attack; the body carries its argument. Every attack
//! that *succeeds* returns `Ok` with what it obtained, so a test that sees
//! `Ok` (or the secret anywhere in the report) has found an escape.
use kasbah_sdk::{Error, Pipeline, Request, Response, log};
use std::io::Write;

struct Hostile;

/// `wasi:random` called directly (std only asks for a few bytes at a time).
mod wasi_random {
    wit_bindgen::generate!({
        inline: "package hostile:random;\nworld random { import wasi:random/random@0.2.12; import wasi:random/insecure@0.2.12; }",
        path: "../../../wit/deps/random.wit",
        generate_all,
    });
}

unsafe extern "C" {
    /// wasi-libc's `symlink(2)` (std's wrapper is unstable on WASI).
    fn symlink(
        target: *const core::ffi::c_char,
        link: *const core::ffi::c_char,
    ) -> core::ffi::c_int;
}

fn make_symlink(target: &str, link: &str) -> std::io::Result<()> {
    let t = std::ffi::CString::new(target)?;
    let l = std::ffi::CString::new(link)?;
    // SAFETY: two NUL-terminated strings that outlive the call.
    if unsafe { symlink(t.as_ptr(), l.as_ptr()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `arg` as `"<text> <number>"`.
fn text_and_count(arg: &str) -> Result<(&str, usize), Error> {
    let (t, n) = arg
        .trim()
        .rsplit_once(' ')
        .ok_or_else(|| Error::invalid_input("expected `<path> <count>`"))?;
    let n = n.parse().map_err(|_| Error::invalid_input("count"))?;
    Ok((t, n))
}

fn count(arg: &str) -> Result<usize, Error> {
    arg.trim()
        .parse()
        .map_err(|_| Error::invalid_input("count"))
}

fn read_any(paths: &[&str]) -> Result<Response, Error> {
    let mut errors = Vec::new();
    for p in paths {
        match std::fs::read(p) {
            Ok(bytes) => return Ok(Response::bytes("application/octet-stream", bytes)),
            Err(e) => errors.push(format!("{p}: {e}")),
        }
    }
    Err(Error::denied(errors.join("; ")))
}

/// Recursion that lives on the wasm call stack only.
#[inline(never)]
fn recurse_wasm_stack(n: u64) -> u64 {
    if std::hint::black_box(n) == u64::MAX {
        return 0;
    }
    recurse_wasm_stack(n + 1).wrapping_add(n)
}

/// Recursion whose frames live on the shadow stack in linear memory.
#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64, acc: &mut [u64; 16]) -> u64 {
    let mut local = *acc;
    local[(depth % 16) as usize] = depth;
    std::hint::black_box(&mut local);
    recurse(depth + 1, &mut local) + local[0]
}

/// How many times `marker` occurs in `n` bytes of never-initialised heap
/// (a fresh `Vec` capacity): whatever an earlier user of that memory left.
fn residue(n: usize, marker: &[u8]) -> usize {
    let v: Vec<u8> = Vec::with_capacity(n);
    let p = v.as_ptr();
    let mut count = 0;
    let mut i = 0;
    while i + marker.len() <= n {
        // SAFETY: within the allocation's capacity; reading uninitialised
        // bytes is the point of this attack (volatile so it is not elided).
        let hit = (0..marker.len())
            .all(|j| unsafe { core::ptr::read_volatile(p.add(i + j)) } == marker[j]);
        if hit {
            count += 1;
            i += marker.len();
        } else {
            i += 1;
        }
    }
    drop(v);
    count
}

impl Pipeline for Hostile {
    fn run(request: Request) -> Result<Response, Error> {
        let arg = request.text()?.to_string();
        match request.meta("attack").unwrap_or("") {
            // Absolute host paths: there is no ambient filesystem in WASI.
            // Not an attack: the input back with its content type (raw
            // invoke passes both through).
            "echo" => Ok(Response::bytes(
                request.content_type.clone(),
                request.body.clone(),
            )),
            "read-passwd" => read_any(&["/etc/passwd", "/../etc/passwd", "etc/passwd"]),
            // `arg` = a host path outside every preopen.
            "read-outside" => read_any(&[&arg, &format!("/data/../..{arg}")]),
            // `..` traversal out of the `/data` preopen to `arg` (a relative name).
            "traversal" => read_any(&[
                &format!("/data/../{arg}"),
                &format!("/data/../../{arg}"),
                &format!("/data/sub/../../{arg}"),
            ]),
            // `arg` = a path inside the preopen that is a symlink pointing out.
            "symlink" => read_any(&[&arg]),
            // `arg` = a path inside a read-only preopen.
            "write-ro" => {
                let mut errors = Vec::new();
                match std::fs::write(&arg, b"pwned") {
                    Ok(()) => return Ok(Response::text(format!("wrote {arg}"))),
                    Err(e) => errors.push(format!("write: {e}")),
                }
                match std::fs::OpenOptions::new().append(true).open(&arg) {
                    Ok(mut f) => {
                        if f.write_all(b"pwned").is_ok() {
                            return Ok(Response::text(format!("appended to {arg}")));
                        }
                    }
                    Err(e) => errors.push(format!("append: {e}")),
                }
                match std::fs::remove_file(&arg) {
                    Ok(()) => return Ok(Response::text(format!("removed {arg}"))),
                    Err(e) => errors.push(format!("remove: {e}")),
                }
                match std::fs::create_dir("/data/newdir") {
                    Ok(()) => return Ok(Response::text("created /data/newdir")),
                    Err(e) => errors.push(format!("mkdir: {e}")),
                }
                Err(Error::denied(errors.join("; ")))
            }
            // `arg` = `env:NAME` or `file:/path`: the length and FNV-1a-64
            // of what the guest reads there (a secret's digest, not the
            // secret: the test then finds its value nowhere on disk).
            "secret-digest" => {
                let got = match arg.split_once(':') {
                    Some(("env", name)) => std::env::var(name)
                        .map(String::into_bytes)
                        .map_err(|e| format!("env {name}: {e}")),
                    Some(("file", path)) => std::fs::read(path).map_err(|e| format!("{path}: {e}")),
                    _ => return Err(Error::invalid_input("expected env:NAME or file:/path")),
                };
                match got {
                    Ok(v) => {
                        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                        for b in &v {
                            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
                        }
                        Ok(Response::text(format!("len={} fnv={h:016x}", v.len())))
                    }
                    Err(e) => Err(Error::denied(e)),
                }
            }
            // `arg` = the name of an environment variable not granted.
            "env" => match std::env::var(&arg) {
                Ok(v) => Ok(Response::text(v)),
                Err(_) => {
                    let all: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
                    Err(Error::denied(format!(
                        "{arg} not visible; visible: {all:?}"
                    )))
                }
            },
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                Ok(Response::text("woke up"))
            }
            "oom" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![0xA5; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            // Look for what an earlier instance left in linear memory, then
            // leave `arg` all over 8 MiB of heap and look again in this
            // instance (the control: the scan does see residue). Answers
            // "<found before> <found after writing>".
            "residue" => {
                let marker = arg.as_bytes();
                if marker.len() < 8 {
                    return Err(Error::invalid_input("marker of at least 8 bytes"));
                }
                const N: usize = 8 << 20;
                let before = residue(N, marker);
                let mut v = vec![0u8; N];
                for chunk in v.chunks_mut(marker.len()) {
                    chunk.copy_from_slice(&marker[..chunk.len()]);
                }
                std::hint::black_box(&v);
                drop(v);
                let after = residue(N, marker);
                Ok(Response::text(format!("{before} {after}")))
            }
            "recursion" => Ok(Response::text(recurse_wasm_stack(0).to_string())),
            "recursion-shadow" => {
                let mut acc = [0u64; 16];
                Ok(Response::text(recurse(0, &mut acc).to_string()))
            }
            "panic" => panic!("hostile guest panicked on purpose"),
            // `arg` = number of bytes to return.
            "giant-output" => {
                let n: usize = arg
                    .trim()
                    .parse()
                    .map_err(|_| Error::invalid_input("size"))?;
                Ok(Response::bytes("application/octet-stream", vec![b'x'; n]))
            }
            // `arg` = number of bytes to print to stdout and stderr.
            "giant-stdout" => {
                let n: usize = arg
                    .trim()
                    .parse()
                    .map_err(|_| Error::invalid_input("size"))?;
                let line = [b'o'; 1023];
                let mut out = std::io::stdout();
                let mut err = std::io::stderr();
                for _ in 0..n / 1024 {
                    out.write_all(&line)
                        .map_err(|e| Error::failed(e.to_string()))?;
                    out.write_all(b"\n")
                        .map_err(|e| Error::failed(e.to_string()))?;
                    err.write_all(&line)
                        .map_err(|e| Error::failed(e.to_string()))?;
                    err.write_all(b"\n")
                        .map_err(|e| Error::failed(e.to_string()))?;
                }
                Ok(Response::text("printed"))
            }
            // `arg` = "<n> <ms>": n times a log record and a stdout line,
            // `ms` apart (the live-logs tests follow them as they come).
            "ticks" => {
                let mut it = arg.split_whitespace();
                let n: usize = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                let ms: u64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                for i in 0..n {
                    log::info(&format!("tick {i}"));
                    println!("out {i}");
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                }
                Ok(Response::text(format!("ticked {n}")))
            }
            "log-flood" => {
                for i in 0..100_000 {
                    log::info(&format!(
                        "flood line {i} ........................................"
                    ));
                }
                Ok(Response::text("flooded"))
            }
            // `arg` = "<file> <n>": open the file n times, keeping every
            // handle. Answers how many opens succeeded and whether opening
            // works again once they are closed.
            "fd-flood" => {
                let (path, n) = text_and_count(&arg)?;
                let mut held = Vec::new();
                let mut refused = 0;
                let mut first = None;
                for _ in 0..n {
                    match std::fs::File::open(path) {
                        Ok(f) => held.push(f),
                        Err(e) => {
                            refused += 1;
                            first.get_or_insert_with(|| e.to_string());
                        }
                    }
                }
                let opened = held.len();
                drop(held);
                let again = std::fs::File::open(path).is_ok();
                if refused == 0 {
                    return Ok(Response::text(format!("opened all {n}")));
                }
                Err(Error::denied(format!(
                    "opened {opened} refused {refused} reopen-after-close {again}: {}",
                    first.unwrap_or_default()
                )))
            }
            // `arg` = number of empty log records.
            "log-flood-empty" => {
                for _ in 0..count(&arg)? {
                    log::info("");
                }
                Ok(Response::text("flooded"))
            }
            // `arg` = size of the error message.
            "giant-error" => Err(Error::failed("E".repeat(count(&arg)?))),
            // `arg` = size of the response's content type.
            "giant-content-type" => Ok(Response::bytes("t".repeat(count(&arg)?), "x")),
            // `arg` = a file in a writable preopen: make it 1 TiB (sparse)
            // by writing past the end and by growing it.
            "sparse-file" => {
                use std::io::{Seek, SeekFrom};
                const TIB: u64 = 1 << 40;
                let mut errors = Vec::new();
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&arg)
                    .map_err(|e| Error::failed(format!("create {arg}: {e}")))?;
                match f.seek(SeekFrom::Start(TIB)).and_then(|_| f.write_all(b"x")) {
                    Ok(()) => return Ok(Response::text("wrote 1 byte at 1 TiB")),
                    Err(e) => errors.push(format!("write at 1 TiB: {e}")),
                }
                match f.set_len(TIB) {
                    Ok(()) => return Ok(Response::text("set_len 1 TiB")),
                    Err(e) => errors.push(format!("set_len 1 TiB: {e}")),
                }
                Err(Error::denied(errors.join("; ")))
            }
            // `arg` = "<file> <bytes>": write that many bytes, densely.
            "disk-fill" => {
                let (path, n) = text_and_count(&arg)?;
                let mut f = std::fs::File::create(path)
                    .map_err(|e| Error::failed(format!("create {path}: {e}")))?;
                let chunk = vec![b'f'; 64 * 1024];
                let mut written = 0;
                while written < n {
                    let len = chunk.len().min(n - written);
                    if let Err(e) = f.write_all(&chunk[..len]) {
                        return Err(Error::denied(format!("wrote {written}: {e}")));
                    }
                    written += len;
                }
                Ok(Response::text(format!("wrote {written}")))
            }
            // `arg` = "<dir> <n>": create n files in dir.
            "file-flood" => {
                let (dir, n) = text_and_count(&arg)?;
                for i in 0..n {
                    if let Err(e) = std::fs::write(format!("{dir}/f{i}"), b"") {
                        return Err(Error::denied(format!("created {i}: {e}")));
                    }
                }
                Ok(Response::text(format!("created {n}")))
            }
            // `arg` = a writable dir: nest 2,000 directories in it.
            "deep-tree" => {
                let mut p = std::path::PathBuf::from(arg.trim());
                for depth in 0..2000 {
                    p.push("d");
                    if let Err(e) = std::fs::create_dir(&p) {
                        return Err(Error::denied(format!("created {depth} levels: {e}")));
                    }
                }
                Ok(Response::text("created 2000 levels"))
            }
            // `arg` = a writable dir: leave symlinks pointing out of it.
            "symlink-out" => {
                let dir = arg.trim();
                let mut errors = Vec::new();
                for (target, name) in [("/etc/passwd", "abs"), ("../../../../../etc", "up")] {
                    match make_symlink(target, &format!("{dir}/{name}")) {
                        Ok(()) => return Ok(Response::text(format!("linked {name} -> {target}"))),
                        Err(e) => errors.push(format!("{name} -> {target}: {e}")),
                    }
                }
                Err(Error::denied(errors.join("; ")))
            }
            // `arg` = bytes to ask `wasi:random` for in one call.
            "random-huge" => {
                let n = count(&arg)? as u64;
                let secure = wasi_random::wasi::random::random::get_random_bytes(n);
                let insecure = wasi_random::wasi::random::insecure::get_insecure_random_bytes(n);
                Ok(Response::text(format!(
                    "{} {}",
                    secure.len(),
                    insecure.len()
                )))
            }
            // `arg` = calls: get-random-bytes at the per-call cap in a loop
            // (slow synchronous host calls).
            "random-loop" => {
                let mut sum = 0u64;
                for _ in 0..count(&arg)? {
                    let b = wasi_random::wasi::random::random::get_random_bytes(1 << 20);
                    sum = sum.wrapping_add(u64::from(b[0]));
                }
                Ok(Response::text(sum.to_string()))
            }
            "ok" => Ok(Response::text("still alive")),
            other => Err(Error::invalid_input(format!("unknown attack {other:?}"))),
        }
    }
}

kasbah_sdk::export!(Hostile);

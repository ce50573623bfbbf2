//! Tries to move labelled data everywhere it can. The data = the bytes of
//! every dataset named in the `datasets` metadata (comma-separated, read
//! from `/datasets/<name>`), then the request body. Then, per metadata:
//! - `send`: comma-separated `host:port`s: connect and write the data to each;
//! - `write`: comma-separated guest paths: write the data to each file;
//! - `slurp`: comma-separated guest paths: read each file (reported, not
//!   added to the data);
//! - `gpu` = `1`: copy the data into a GPU buffer and read it back;
//! - `tamper` = `1`: try to modify, create and delete under `/datasets`.
//!
//! Answers a JSON report (`output` = `report`, the default) or the data
//! itself (`output` = `data`), so pipelines can be chained. Every attempt's
//! result is in the report; nothing here fails the run.
use kasbah_sdk::gpu::{Buffer, adapter};
use kasbah_sdk::{Error, Pipeline, Request, Response};
use std::fmt::Write as _;
use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// One write attempt on a mounted dataset.
type Attempt = Box<dyn Fn() -> std::io::Result<()>>;

struct Probe;

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn list(v: Option<&str>) -> Vec<&str> {
    v.map(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    })
    .unwrap_or_default()
}

fn send(target: &str, data: &[u8]) -> Result<(), String> {
    let addrs: Vec<_> = target
        .to_socket_addrs()
        .map_err(|e| format!("resolve: {e}"))?
        .collect();
    let mut last = String::from("no addresses");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(mut s) => {
                s.write_all(data).map_err(|e| format!("write: {e}"))?;
                s.flush().map_err(|e| format!("flush: {e}"))?;
                return Ok(());
            }
            Err(e) => last = format!("connect: {e}"),
        }
    }
    Err(last)
}

fn gpu(data: &[u8]) -> Result<String, String> {
    let info = adapter().map_err(|e| e.describe())?;
    // Pad to a multiple of 4 bytes (buffer sizes must be aligned).
    let mut padded = data.to_vec();
    while !padded.len().is_multiple_of(4) || padded.is_empty() {
        padded.push(0);
    }
    let buf = Buffer::from_slice(&padded).map_err(|e| e.describe())?;
    let back: Vec<u8> = buf.read().map_err(|e| e.describe())?;
    if back != padded {
        return Err("read back differs".into());
    }
    Ok(format!(
        "{{\"adapter\":{},\"zone\":{},\"bytes\":{}}}",
        esc(&info.label),
        esc(&info.zone),
        data.len()
    ))
}

fn outcome(r: Result<(), String>) -> String {
    match r {
        Ok(()) => esc("ok"),
        Err(e) => esc(&format!("error: {e}")),
    }
}

impl Pipeline for Probe {
    fn run(request: Request) -> Result<Response, Error> {
        let mut data = Vec::new();
        let mut read = Vec::new();
        for name in list(request.meta("datasets")) {
            let path = format!("/datasets/{name}");
            let bytes =
                std::fs::read(&path).map_err(|e| Error::failed(format!("reading {path}: {e}")))?;
            read.push(format!("{}:{}", esc(name), bytes.len()));
            data.extend_from_slice(&bytes);
        }
        data.extend_from_slice(&request.body);
        if request.meta("output") == Some("data") {
            return Ok(Response::bytes("application/octet-stream", data));
        }

        let sent: Vec<String> = list(request.meta("send"))
            .into_iter()
            .map(|t| format!("{}:{}", esc(t), outcome(send(t, &data))))
            .collect();
        let wrote: Vec<String> = list(request.meta("write"))
            .into_iter()
            .map(|p| {
                let r = std::fs::write(p, &data).map_err(|e| e.to_string());
                format!("{}:{}", esc(p), outcome(r))
            })
            .collect();
        let slurped: Vec<String> = list(request.meta("slurp"))
            .into_iter()
            .map(|p| {
                let r = std::fs::read(p).map(|_| ()).map_err(|e| e.to_string());
                format!("{}:{}", esc(p), outcome(r))
            })
            .collect();
        let gpu = match request.meta("gpu") {
            Some("1") => match gpu(&data) {
                Ok(j) => j,
                Err(e) => format!("{{\"error\":{}}}", esc(&e)),
            },
            _ => "null".into(),
        };
        let mut tamper = Vec::new();
        if request.meta("tamper") == Some("1") {
            let first = list(request.meta("datasets"))
                .first()
                .map(|n| n.to_string());
            let attempts: Vec<(&str, Attempt)> = vec![
                (
                    "overwrite",
                    Box::new({
                        let first = first.clone();
                        move || {
                            let p = format!("/datasets/{}", first.as_deref().unwrap_or("x"));
                            std::fs::OpenOptions::new()
                                .write(true)
                                .open(p)?
                                .write_all(b"tampered")
                        }
                    }),
                ),
                (
                    "create",
                    Box::new(|| std::fs::write("/datasets/new-file", b"x")),
                ),
                (
                    "delete",
                    Box::new({
                        let first = first.clone();
                        move || {
                            std::fs::remove_file(format!(
                                "/datasets/{}",
                                first.as_deref().unwrap_or("x")
                            ))
                        }
                    }),
                ),
                ("mkdir", Box::new(|| std::fs::create_dir("/datasets/sub"))),
            ];
            for (what, f) in attempts {
                tamper.push(format!(
                    "{}:{}",
                    esc(what),
                    outcome(f().map_err(|e| e.to_string()))
                ));
            }
        }
        Ok(Response::bytes(
            "application/json",
            format!(
                "{{\"read\":{{{}}},\"sent\":{{{}}},\"wrote\":{{{}}},\"slurped\":{{{}}},\"gpu\":{},\"tamper\":{{{}}},\"bytes\":{}}}",
                read.join(","),
                sent.join(","),
                wrote.join(","),
                slurped.join(","),
                gpu,
                tamper.join(","),
                data.len()
            ),
        ))
    }
}

kasbah_sdk::export!(Probe);

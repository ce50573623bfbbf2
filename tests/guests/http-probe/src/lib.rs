//! Outgoing HTTP through `kasbah_sdk::http`. Body = URL. Metadata:
//! `method` (`get`, default, or `post`), `post_bytes` (size of the POST
//! body, bytes of `x`), `count` (send the request this many times; the
//! first failure ends the run). Success answers `<status> <body>` of the
//! last response; a failure is the SDK's error (`denied` for a refusal).
//! `burst` = N: N GET requests handed to the host at once (raw
//! `wasi:http`, none awaited before the last is sent); answers
//! `ok=<n> <error code>=<n> …`.
use kasbah_sdk::{Error, Pipeline, Request, Response, http};

struct HttpProbe;

impl Pipeline for HttpProbe {
    fn run(request: Request) -> Result<Response, Error> {
        let url = request.text()?.trim().to_string();
        let count: usize = request
            .meta("count")
            .map_or(Ok(1), str::parse)
            .map_err(|_| Error::invalid_input("count"))?;
        let post_bytes: usize = request
            .meta("post_bytes")
            .map_or(Ok(0), str::parse)
            .map_err(|_| Error::invalid_input("post_bytes"))?;
        if let Some(n) = request.meta("burst") {
            let n: usize = n.parse().map_err(|_| Error::invalid_input("burst"))?;
            return Ok(Response::text(burst(&url, n)?));
        }
        let body = vec![b'x'; post_bytes];
        let mut last = None;
        for i in 0..count {
            let r = match request.meta("method").unwrap_or("get") {
                "get" => http::get(&url),
                "post" => http::post(&url, "text/plain", &body),
                other => return Err(Error::invalid_input(format!("method {other:?}"))),
            };
            last = Some(r.map_err(|e| numbered(e.into(), i + 1))?);
        }
        let r = last.ok_or_else(|| Error::invalid_input("count = 0"))?;
        Ok(Response::text(format!(
            "{} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        )))
    }
}

/// `n` GETs of `url` (`https://authority/path`) in flight at once.
fn burst(url: &str, n: usize) -> Result<String, Error> {
    use wasip2::http::outgoing_handler::handle;
    use wasip2::http::types::{Fields, OutgoingRequest, Scheme};
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| Error::invalid_input("burst needs an https:// URL"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut pending = Vec::new();
    let mut tally = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..n {
        let req = OutgoingRequest::new(Fields::new());
        let _ = req.set_scheme(Some(&Scheme::Https));
        let _ = req.set_authority(Some(authority));
        let _ = req.set_path_with_query(Some(if path.is_empty() { "/" } else { path }));
        match handle(req, None) {
            Ok(f) => pending.push(f),
            Err(e) => *tally.entry(format!("{e:?}")).or_default() += 1,
        }
    }
    // Responses are kept until every future is resolved, so their
    // connections stay in flight.
    let mut responses = Vec::new();
    for f in pending {
        f.subscribe().block();
        match f.get() {
            Some(Ok(Ok(r))) => {
                *tally.entry("ok".into()).or_default() += 1;
                responses.push(r);
            }
            Some(Ok(Err(e))) => *tally.entry(format!("{e:?}")).or_default() += 1,
            _ => *tally.entry("none".into()).or_default() += 1,
        }
    }
    drop(responses);
    Ok(tally
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" "))
}

/// The error of request number `n`, its kind kept.
fn numbered(e: Error, n: usize) -> Error {
    let at = |m: String| format!("request {n}: {m}");
    match e {
        Error::InvalidInput(m) => Error::InvalidInput(at(m)),
        Error::Denied(m) => Error::Denied(at(m)),
        Error::Unavailable(m) => Error::Unavailable(at(m)),
        Error::Failed(m) => Error::Failed(at(m)),
    }
}

kasbah_sdk::export!(HttpProbe);

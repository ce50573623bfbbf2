//! Outgoing HTTP through `kasbah_sdk::http`. Body = URL. Metadata:
//! `method` (`get`, default, or `post`), `post_bytes` (size of the POST
//! body, bytes of `x`), `count` (send the request this many times; the
//! first failure ends the run). Success answers `<status> <body>` of the
//! last response; a failure is the SDK's error (`denied` for a refusal).
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

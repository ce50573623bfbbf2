//! Outgoing HTTP capability: `wasi:http/outgoing-handler` (+ `wasi:http/types`)
//! from wasmtime-wasi-http, with the send path written here.
//!
//! Every request is checked by the host **before any connection** (see
//! [`Hooks::send_request`]): scheme `http`/`https` only, no userinfo, URL
//! and header section bounded; the URL's `host:port` must be a target of
//! the policy's `[network] allow` list, by exactly that name (or literal),
//! and the connection goes only to the addresses the host resolved for it
//! at run start and that the run's residency label lets it reach (the same
//! [`Allowlist`] and zone rule as sockets, `net.rs`). The `Host` header is
//! the checked authority, whatever the guest set. A refusal is an
//! `HTTP-request-denied` error for the guest and a denial (capability
//! `http`) in the run's record; nothing is sent.
//!
//! TLS is verified by the host (rustls, ring): the system roots plus the
//! host configuration's extra CA certificates ([`client_config`]), SNI =
//! the allowlisted name. Neither the guest nor the policy can turn
//! verification off. Per-run limits (`limits.max_http_requests`,
//! `max_http_bytes`, `http_timeout_ms`) and a bound on requests in flight
//! are checked here; bodies are counted as they stream.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use kasbah_core::HttpUsage;
use kasbah_policy::Limits;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpHooks};

use crate::net::{Allowlist, Denials, record, shown};

const RESIDENCY: &str = "residency_violation: ";

/// Longest request URL (scheme, authority, path and query) accepted.
pub const MAX_URL_BYTES: usize = 8 * 1024;
/// Longest request method accepted (an extension method is a token).
pub const MAX_METHOD_BYTES: usize = 32;
/// Most request header fields accepted.
pub const MAX_REQUEST_HEADERS: usize = 64;
/// Memory bound on one `fields` resource the guest builds (wasmtime-wasi-http
/// counts names + values, roughly).
pub const MAX_FIELDS_BYTES: usize = 64 * 1024;
/// Most response header fields, and the largest response head, accepted.
pub const MAX_RESPONSE_HEADERS: usize = 100;
pub const MAX_RESPONSE_HEAD_BYTES: usize = 64 * 1024;
/// Outgoing requests of one run in flight at once (connecting, or with a
/// response body not yet read to its end or dropped).
pub const MAX_IN_FLIGHT: usize = 8;

/// The TLS client configuration every run shares: the system's root
/// certificates plus `extra_ca` (PEM files, each one or more
/// certificates). An unreadable or empty extra file is an error (a host
/// configuration mistake); system roots that fail to load are skipped
/// with a warning.
pub fn client_config(extra_ca: &[PathBuf]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!("system root certificates: {e}");
    }
    let (_added, ignored) = roots.add_parsable_certificates(native.certs);
    if ignored > 0 {
        tracing::debug!("{ignored} system root certificates could not be parsed");
    }
    for path in extra_ca {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| anyhow::anyhow!("extra CA certificate {}: {e}", path.display()))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "extra CA certificate {}: no certificate in the file",
            path.display()
        );
        for c in certs {
            roots
                .add(c)
                .map_err(|e| anyhow::anyhow!("extra CA certificate {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The per-run limits outgoing HTTP is held to.
#[derive(Debug, Clone, Copy)]
struct HttpLimits {
    max_requests: u64,
    max_bytes: u64,
    timeout: Duration,
}

/// What the run did, shared with the tasks that drive its connections.
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    refused: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    in_flight: AtomicUsize,
}

/// A run's `wasi:http` state: wasmtime-wasi-http's context and kasbah's
/// hooks (the checks and the send path).
pub(crate) struct HttpState {
    pub ctx: WasiHttpCtx,
    pub hooks: Hooks,
}

impl HttpState {
    pub fn new(
        allowlist: Arc<Allowlist>,
        denials: Denials,
        tls: Arc<rustls::ClientConfig>,
        limits: &Limits,
    ) -> Self {
        let mut ctx = WasiHttpCtx::new();
        ctx.set_field_size_limit(MAX_FIELDS_BYTES);
        HttpState {
            ctx,
            hooks: Hooks {
                allowlist,
                denials,
                tls,
                limits: HttpLimits {
                    max_requests: limits.max_http_requests,
                    max_bytes: limits.max_http_bytes,
                    timeout: Duration::from_millis(limits.http_timeout_ms),
                },
                counters: Arc::default(),
            },
        }
    }

    /// The run's HTTP usage, when it tried at least one request.
    pub fn usage(&self) -> Option<HttpUsage> {
        let c = &self.hooks.counters;
        let u = HttpUsage {
            requests: c.requests.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            bytes_sent: c.sent.load(Ordering::Relaxed),
            bytes_received: c.received.load(Ordering::Relaxed),
        };
        (u.requests > 0 || u.refused > 0).then_some(u)
    }
}

pub(crate) struct Hooks {
    allowlist: Arc<Allowlist>,
    denials: Denials,
    tls: Arc<rustls::ClientConfig>,
    limits: HttpLimits,
    counters: Arc<Counters>,
}

/// Where a checked request goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// The URL's host (IPv6 literals without brackets), as written.
    pub host: String,
    pub port: u16,
    pub tls: bool,
    /// `host[:port]` as the URL gave it: the `Host` header.
    pub authority: String,
}

/// Why the host refused a request before any connection: the guest's
/// error, and a denial's detail when the refusal is a policy decision.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub error: Error,
    pub denial: Option<String>,
}

fn invalid(error: Error) -> Refusal {
    Refusal {
        error,
        denial: None,
    }
}

fn denied(detail: String) -> Refusal {
    Refusal {
        error: Error::HttpRequestDenied,
        denial: Some(detail),
    }
}

/// The URL checks that need no allowlist: scheme, authority, length.
pub(crate) fn target(uri: &http::Uri) -> Result<Target, Refusal> {
    let tls = match uri.scheme() {
        Some(s) if *s == Scheme::HTTPS => true,
        Some(s) if *s == Scheme::HTTP => false,
        Some(s) => {
            return Err(denied(format!(
                "scheme {:?} is not allowed (http and https only)",
                shown(s.as_str())
            )));
        }
        None => return Err(invalid(Error::HttpRequestUriInvalid)),
    };
    if uri.to_string().len() > MAX_URL_BYTES {
        return Err(invalid(Error::HttpRequestUriTooLong));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| invalid(Error::HttpRequestUriInvalid))?;
    // `user@host`: refused rather than interpreted.
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return Err(invalid(Error::HttpRequestUriInvalid));
    }
    let port = match (authority.port(), authority.port_u16()) {
        (None, _) => {
            if tls {
                443
            } else {
                80
            }
        }
        (Some(_), Some(p)) if p != 0 => p,
        _ => return Err(invalid(Error::HttpRequestUriInvalid)),
    };
    let host = authority.host();
    Ok(Target {
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
        tls,
        authority: authority.as_str().to_string(),
    })
}

impl Hooks {
    /// Every check, in order; nothing is counted as sent unless all pass.
    fn check(
        &self,
        request: &http::Request<WasiBody>,
    ) -> Result<(Target, Vec<std::net::SocketAddr>), Refusal> {
        let target = target(request.uri())?;
        let addrs = self
            .allowlist
            .http_destination(&target.host, target.port)
            .map_err(|why| {
                let scheme = if target.tls { "https" } else { "http" };
                // Residency refusals keep their prefix first (as sockets').
                denied(match why.strip_prefix(RESIDENCY) {
                    Some(rest) => format!("{RESIDENCY}{scheme} request to {rest}"),
                    None => format!("{scheme} request to {why}"),
                })
            })?;
        if request.method().as_str().len() > MAX_METHOD_BYTES {
            return Err(invalid(Error::HttpRequestMethodInvalid));
        }
        if request.headers().len() > MAX_REQUEST_HEADERS {
            return Err(invalid(Error::HttpRequestHeaderSectionSize(Some(
                MAX_REQUEST_HEADERS as u32,
            ))));
        }
        let c = &self.counters;
        if c.requests.load(Ordering::Relaxed) >= self.limits.max_requests {
            return Err(invalid(Error::ConnectionLimitReached));
        }
        if c.sent.load(Ordering::Relaxed) + c.received.load(Ordering::Relaxed)
            >= self.limits.max_bytes
            && self.limits.max_bytes > 0
        {
            return Err(invalid(Error::HttpRequestBodySize(Some(0))));
        }
        if c.in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
            return Err(invalid(Error::ConnectionLimitReached));
        }
        Ok((target, addrs))
    }
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl WasiHttpHooks for Hooks {
    fn default_scheme(&mut self) -> Option<Scheme> {
        None
    }

    /// `handle` asks this before building the request: another scheme is
    /// refused there (`HTTP-protocol-error`) and recorded here.
    fn is_supported_scheme(&mut self, scheme: &Scheme) -> bool {
        let ok = *scheme == Scheme::HTTP || *scheme == Scheme::HTTPS;
        if !ok {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            record(
                &self.denials,
                "http",
                format!(
                    "scheme {:?} is not allowed (http and https only)",
                    shown(scheme.as_str())
                ),
            );
        }
        ok
    }

    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let (target, addrs) = match self.check(&request) {
            Ok(ok) => ok,
            Err(r) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                if let Some(detail) = r.denial {
                    record(&self.denials, "http", detail);
                }
                let error = r.error;
                return Box::new(async move { Err(error) });
            }
        };
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        self.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight(self.counters.clone());
        // The checked authority, whatever the guest put in its headers
        // (`host` is a forbidden header for guests anyway).
        let host = http::HeaderValue::from_str(&target.authority)
            .unwrap_or_else(|_| http::HeaderValue::from_static(""));
        request.headers_mut().insert(http::header::HOST, host);
        // A guest may shorten the timeouts, never lengthen them.
        let cap = self.limits.timeout;
        let shorter = |t: Option<Duration>| t.map_or(cap, |t| t.min(cap));
        let timeouts = Timeouts {
            connect: shorter(options.and_then(|o| o.connect_timeout)),
            first_byte: shorter(options.and_then(|o| o.first_byte_timeout)),
            between_bytes: shorter(options.and_then(|o| o.between_bytes_timeout)),
        };
        let budget = Budget {
            counters: self.counters.clone(),
            max: self.limits.max_bytes,
        };
        let tls = self.tls.clone();
        Box::new(send(request, target, addrs, tls, timeouts, budget, guard))
    }

    fn p2_error_from_tls(&mut self, err: &std::io::Error) -> ErrorCode {
        match err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::InvalidCertificate(_)) => ErrorCode::TlsCertificateError,
            Some(rustls::Error::AlertReceived(a)) => ErrorCode::TlsAlertReceived(
                wasmtime_wasi_http::p2::bindings::http::types::TlsAlertReceivedPayload {
                    alert_id: Some(u8::from(*a)),
                    alert_message: Some(format!("{a:?}")),
                },
            ),
            _ => ErrorCode::TlsProtocolError,
        }
    }

    fn p2_error_from_hyper(&mut self, err: &hyper::Error) -> ErrorCode {
        use std::error::Error as _;
        // A body error of ours (the byte budget) that hyper wrapped.
        match err.source().and_then(|c| c.downcast_ref::<Error>()) {
            Some(Error::HttpRequestBodySize(n)) => return ErrorCode::HttpRequestBodySize(*n),
            Some(Error::HttpResponseBodySize(n)) => return ErrorCode::HttpResponseBodySize(*n),
            Some(Error::ConnectionReadTimeout) => return ErrorCode::ConnectionReadTimeout,
            _ => {}
        }
        if err.is_timeout() {
            ErrorCode::ConnectionReadTimeout
        } else if err.is_incomplete_message() {
            ErrorCode::HttpResponseIncomplete
        } else if err.is_parse_too_large() {
            ErrorCode::HttpResponseHeaderSectionSize(None)
        } else {
            ErrorCode::HttpProtocolError
        }
    }
}

/// Decrements the run's in-flight count when the request's connection ends.
struct InFlight(Arc<Counters>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy)]
struct Timeouts {
    connect: Duration,
    first_byte: Duration,
    between_bytes: Duration,
}

/// The run's body-byte budget (request and response bodies together).
#[derive(Clone)]
struct Budget {
    counters: Arc<Counters>,
    max: u64,
}

impl Budget {
    /// Count `n` more bytes in `dir`; `false` when that passes the limit.
    fn take(&self, n: u64, sent: bool) -> bool {
        let c = &self.counters;
        let (mine, other) = if sent {
            (&c.sent, &c.received)
        } else {
            (&c.received, &c.sent)
        };
        let now = mine.fetch_add(n, Ordering::Relaxed).saturating_add(n);
        now.saturating_add(other.load(Ordering::Relaxed)) <= self.max
    }
}

trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static> Stream for T {}

/// Connect to the first of `addrs` that answers, TLS if asked, HTTP/1.1.
async fn send(
    mut request: http::Request<WasiBody>,
    target: Target,
    addrs: Vec<std::net::SocketAddr>,
    tls: Arc<rustls::ClientConfig>,
    timeouts: Timeouts,
    budget: Budget,
    guard: InFlight,
) -> SendResult {
    let connect = async {
        let mut last = None;
        let mut stream = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let stream = match (stream, last) {
            (Some(s), _) => s,
            (None, Some(e)) => return Err(Error::Connect(e)),
            (None, None) => return Err(Error::DestinationNotFound),
        };
        let stream: Box<dyn Stream> = if target.tls {
            let name = match target.host.parse::<std::net::IpAddr>() {
                Ok(ip) => rustls::pki_types::ServerName::IpAddress(ip.into()),
                Err(_) => rustls::pki_types::ServerName::try_from(target.host.clone())
                    .map_err(|_| Error::HttpRequestUriInvalid)?,
            };
            let s = tokio_rustls::TlsConnector::from(tls)
                .connect(name, stream)
                .await
                .map_err(Error::Tls)?;
            Box::new(s)
        } else {
            Box::new(stream)
        };
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_headers(MAX_RESPONSE_HEADERS)
            .max_buf_size(MAX_RESPONSE_HEAD_BYTES)
            .handshake::<_, CountedBody<WasiBody>>(wasmtime_wasi_http::io::TokioIo::new(stream))
            .await?;
        Ok((sender, conn))
    };
    let (mut sender, conn) = tokio::time::timeout(timeouts.connect, connect)
        .await
        .map_err(|_| Error::ConnectionTimeout)??;

    // Origin form on the wire: the scheme and authority were checked and
    // are in the connection and the `Host` header.
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    let request = request.map(|body| CountedBody::new(body, budget.clone(), true, None));

    let mut conn = Box::pin(conn);
    let mut conn_done = false;
    let mut sending = Box::pin(tokio::time::timeout(
        timeouts.first_byte,
        sender.send_request(request),
    ));
    // Drive the connection while waiting for the response head.
    let response = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = sending.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        if !conn_done && let Poll::Ready(r) = conn.as_mut().poll(cx) {
            conn_done = true;
            if let Err(e) = r {
                return Poll::Ready(Ok(Err(e)));
            }
        }
        Poll::Pending
    })
    .await
    .map_err(|_| Error::ConnectionReadTimeout)?
    .map_err(Error::from)?;

    let response = response.map(|incoming| {
        CountedBody::new(
            incoming.map_err(Error::from),
            budget,
            false,
            Some(timeouts.between_bytes),
        )
        .boxed_unsync()
    });
    let io = async move {
        let _guard = guard;
        if !conn_done {
            conn.await.map_err(|e| {
                if e.is_timeout() {
                    Error::HttpResponseTimeout
                } else {
                    Error::from(e)
                }
            })?;
        }
        Ok(())
    };
    Ok((
        response,
        Box::new(io) as Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ))
}

/// A body whose data bytes are counted against the run's budget as they
/// pass (request bodies as hyper sends them, response bodies as the guest
/// reads them); past the budget it ends with an error. Response bodies
/// also fail after `between` without a frame.
struct CountedBody<B> {
    inner: B,
    budget: Budget,
    sent: bool,
    between: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
}

impl<B> CountedBody<B> {
    fn new(inner: B, budget: Budget, sent: bool, between: Option<Duration>) -> Self {
        CountedBody {
            inner,
            budget,
            sent,
            between: between.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
        }
    }
}

impl<B> Body for CountedBody<B>
where
    B: Body<Data = Bytes, Error = Error> + Unpin,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && !this.budget.take(data.len() as u64, this.sent)
                {
                    let limit = Some(this.budget.max);
                    return Poll::Ready(Some(Err(if this.sent {
                        Error::HttpRequestBodySize(limit)
                    } else {
                        Error::HttpResponseBodySize(limit)
                    })));
                }
                if let Some((d, sleep)) = &mut this.between {
                    sleep.as_mut().reset(tokio::time::Instant::now() + *d);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                if let Some((_, sleep)) = &mut this.between {
                    ready!(sleep.as_mut().poll(cx));
                    return Poll::Ready(Some(Err(Error::ConnectionReadTimeout)));
                }
                Poll::Pending
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(url: &str) -> Result<Target, Refusal> {
        target(&url.parse::<http::Uri>().expect("uri"))
    }

    #[test]
    fn scheme_authority_and_port_are_checked() {
        let ok = t("https://API.example.org/v1?q=1").expect("https");
        assert_eq!(
            ok,
            Target {
                host: "API.example.org".into(),
                port: 443,
                tls: true,
                authority: "API.example.org".into(),
            }
        );
        assert_eq!(t("http://localhost:8080/").expect("http").port, 8080);
        assert_eq!(t("http://localhost/").expect("http").port, 80);
        let v6 = t("https://[::1]:8443/").expect("v6");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 8443));
        // Other schemes are denials (recorded); malformed URLs are errors.
        let ftp = t("ftp://example.org/").expect_err("ftp");
        assert!(matches!(ftp.error, Error::HttpRequestDenied));
        assert!(ftp.denial.expect("recorded").contains("ftp"));
        for bad in [
            "https://user:pw@example.org/",
            "https://example.org:0/",
            "/relative",
        ] {
            let r = t(bad).expect_err(bad);
            assert!(matches!(r.error, Error::HttpRequestUriInvalid), "{bad}");
            assert!(r.denial.is_none(), "{bad}");
        }
        let long = format!("https://example.org/{}", "a".repeat(MAX_URL_BYTES));
        assert!(matches!(
            t(&long).expect_err("long").error,
            Error::HttpRequestUriTooLong
        ));
    }

    #[test]
    fn the_byte_budget_counts_both_directions() {
        let b = Budget {
            counters: Arc::default(),
            max: 10,
        };
        assert!(b.take(4, true));
        assert!(b.take(6, false));
        assert!(!b.take(1, true));
        assert_eq!(b.counters.sent.load(Ordering::Relaxed), 5);
        assert_eq!(b.counters.received.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn extra_ca_files_must_hold_certificates() {
        let dir = std::env::temp_dir().join(format!("kasbah-http-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let e = client_config(&[empty]).expect_err("no certificate");
        assert!(e.to_string().contains("no certificate"), "{e}");
        let missing = dir.join("missing.pem");
        assert!(client_config(&[missing]).is_err());
        assert!(client_config(&[]).is_ok());
        let _ = std::fs::remove_dir_all(dir);
    }
}

//! The HTTP connection layer: what a client can hold of the server.
//!
//! Every client is hostile, so each thing a connection can occupy is bounded:
//! - **headers**: a request's head must arrive within `header_read_timeout_ms`
//!   of the server starting to wait for it (hyper's timer; a trickle of one
//!   byte at a time does not extend it);
//! - **bodies**: a request body that sends nothing for `body_timeout_ms` is cut
//!   off (the handler sees a read error, answers 408, and the connection
//!   closes);
//! - **idle keep-alive**: a connection with no request in flight and no bytes
//!   either way for `keep_alive_timeout_ms` is closed;
//! - **connections**: at most [`ConnLimits::max_connections`] are open, set
//!   below the process's file descriptor limit (raised to the hard limit at
//!   start, see [`raise_fd_limit`]). When full, a new connection takes the
//!   place of the oldest one with no request in flight (a slow client still
//!   sending its headers, or an idle keep-alive); if every connection has a
//!   request in flight the new one is closed at once. Accepting never stops
//!   because slow clients hold every slot.
//!
//! Shutdown ([`serve`]'s `stop`): the listener is closed (new connections are
//! refused), idle connections close, in-flight requests finish within the
//! grace period, then whatever is left is dropped.
//!
//! HTTP/1.1 only (no h2c): hyper's HTTP/2 server has no header read timeout.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tower::ServiceExt;

/// File descriptors kept for everything but client connections: the
/// database (readers, WAL, shm), blob and dataset files, GPU processes'
/// sockets and shared memory, the runtime's own.
pub const FD_RESERVE: u64 = 64;

/// The connection limits actually in force.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub header_read_timeout: Duration,
    pub body_timeout: Duration,
    pub keep_alive_timeout: Duration,
    pub max_connections: usize,
}

impl ConnLimits {
    /// `configured` connections, but never more than the fd limit allows.
    pub fn new(config: &crate::config::ServerConfig, fd_limit: Option<u64>) -> Self {
        ConnLimits {
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms.max(1)),
            body_timeout: Duration::from_millis(config.body_timeout_ms.max(1)),
            keep_alive_timeout: Duration::from_millis(config.keep_alive_timeout_ms.max(1)),
            max_connections: connection_cap(config.max_connections, fd_limit),
        }
    }
}

/// The connection cap for `configured` under a file descriptor limit.
pub fn connection_cap(configured: usize, fd_limit: Option<u64>) -> usize {
    let by_fds = match fd_limit {
        // A quarter of a small limit, at least FD_RESERVE, stays for the rest.
        Some(n) => usize::try_from(n.saturating_sub(FD_RESERVE.max(n / 4))).unwrap_or(usize::MAX),
        None => usize::MAX,
    };
    configured.min(by_fds).max(1)
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit where allowed; returns
/// the soft limit in force afterwards (`None`: unlimited or unknown).
pub fn raise_fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        } else {
            tracing::warn!(
                "could not raise the open-file limit from {} to {}",
                lim.rlim_cur,
                lim.rlim_max
            );
        }
    }
    (lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

/// One open connection, as the accept loop and its own task see it.
struct Conn {
    /// Requests dispatched to the router and not yet answered.
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` of the last byte read or written.
    last_io_ms: AtomicU64,
    epoch: Instant,
    evicted: AtomicBool,
    evict: Notify,
}

impl Conn {
    fn new() -> Self {
        Conn {
            in_flight: AtomicUsize::new(0),
            last_io_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        }
    }
    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_io_ms.store(ms, Ordering::Relaxed);
    }
    fn last_io(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_io_ms.load(Ordering::Relaxed))
    }
    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }
}

/// Decrements a connection's in-flight count when the request is answered
/// (or its handler future dropped).
struct InFlight(Arc<Conn>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The open connections, oldest first.
#[derive(Default)]
struct Registry {
    next: AtomicU64,
    open: Mutex<BTreeMap<u64, Arc<Conn>>>,
}

impl Registry {
    /// Register a new connection if there is room, making room by evicting
    /// the oldest connection with no request in flight.
    fn admit(&self, cap: usize) -> Option<(u64, Arc<Conn>)> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        // Connections already told to go still hold their fd until their
        // task ends: count them, but do not evict them twice.
        let live = open
            .values()
            .filter(|c| !c.evicted.load(Ordering::Relaxed))
            .count();
        if live >= cap {
            let victim = open
                .values()
                .find(|c| !c.evicted.load(Ordering::Relaxed) && !c.busy())?;
            victim.evicted.store(true, Ordering::Relaxed);
            victim.evict.notify_one();
        }
        // Evicted connections close within moments, but until they do
        // they hold descriptors: past a sixteenth over the cap the newcomer
        // is refused rather than risk the server's own files.
        if open.len() > cap.saturating_add(cap / 16) {
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::new());
        conn.touch();
        open.insert(id, conn.clone());
        Some((id, conn))
    }

    fn remove(&self, id: u64) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    fn len(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// The socket, noting each byte that moves (for the keep-alive timer).
struct Tracked {
    inner: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serve `app` on `listener` until `stop` yields a grace period; then stop
/// accepting, let in-flight requests finish within it, and return.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    stop: impl Future<Output = Duration>,
) {
    let registry = Arc::new(Registry::default());
    let (draining_tx, draining) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    let grace = loop {
        let accepted = tokio::select! {
            grace = &mut stop => break grace,
            a = listener.accept() => a,
            // Reap finished connection tasks as we go.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE/ENFILE and aborted handshakes: never stop serving.
                tracing::debug!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some((id, conn)) = registry.admit(limits.max_connections) else {
            tracing::debug!("connection refused: every slot has a request in flight");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (app, registry, draining) = (app.clone(), registry.clone(), draining.clone());
        tasks.spawn(async move {
            connection(stream, app, conn, limits, draining).await;
            registry.remove(id);
        });
    };
    // Refuse new connections from here on.
    drop(listener);
    let _ = draining_tx.send(true);
    let open = registry.len();
    if open > 0 {
        tracing::info!("shutting down: waiting up to {grace:?} for {open} connections");
    }
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            "shutdown grace period over: closing {} connections with requests in flight",
            registry.len()
        );
        tasks.shutdown().await;
    }
}

async fn connection(
    stream: TcpStream,
    app: Router,
    conn: Arc<Conn>,
    limits: ConnLimits,
    mut draining: watch::Receiver<bool>,
) {
    let io = TokioIo::new(Tracked {
        inner: stream,
        conn: conn.clone(),
    });
    let svc_conn = conn.clone();
    let body_timeout = limits.body_timeout;
    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        svc_conn.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(svc_conn.clone());
        let req = req.map(|b| Body::new(tower_http::timeout::TimeoutBody::new(body_timeout, b)));
        let app = app.clone();
        async move {
            let resp = app.oneshot(req).await;
            drop(guard);
            resp
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let served = http.serve_connection(io, svc);
    tokio::pin!(served);
    let mut closing = *draining.borrow();
    if closing {
        served.as_mut().graceful_shutdown();
    }
    loop {
        let idle_deadline =
            tokio::time::Instant::from_std(conn.last_io() + limits.keep_alive_timeout);
        tokio::select! {
            r = served.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("connection: {e}");
                }
                return;
            }
            _ = draining.changed(), if !closing => {
                closing = true;
                served.as_mut().graceful_shutdown();
            }
            _ = conn.evict.notified(), if !closing => {
                if !conn.busy() {
                    return;
                }
                closing = true;
                served.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(idle_deadline) => {
                if !conn.busy() && conn.last_io().elapsed() >= limits.keep_alive_timeout {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_stays_below_the_fd_limit() {
        assert_eq!(connection_cap(4096, Some(256)), 192);
        assert_eq!(connection_cap(4096, Some(1 << 20)), 4096);
        assert_eq!(connection_cap(100, None), 100);
        assert_eq!(connection_cap(4096, Some(10)), 1);
    }

    #[test]
    fn a_full_registry_evicts_the_oldest_idle_connection() {
        let r = Registry::default();
        let (_, a) = r.admit(2).expect("a");
        let (_, b) = r.admit(2).expect("b");
        a.in_flight.fetch_add(1, Ordering::AcqRel);
        let (_, _c) = r.admit(2).expect("c takes b's place");
        assert!(!a.evicted.load(Ordering::Relaxed), "a is busy");
        assert!(b.evicted.load(Ordering::Relaxed), "b was idle");
        b.in_flight.fetch_add(1, Ordering::AcqRel);
        _c.in_flight.fetch_add(1, Ordering::AcqRel);
        assert!(r.admit(2).is_none(), "every live connection is busy");
    }
}

//! Bounded capture of the guest's stdout/stderr.
//!
//! Unlike `MemoryOutputPipe` (which fails the guest's write once full, turning
//! a chatty pipeline into a trap), this pipe keeps the first `capacity` bytes,
//! silently counts the rest as dropped, and never blocks or errors: output
//! volume is bounded without changing the guest's behaviour.

use bytes::Bytes;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

use kasbah_core::Captured;

#[derive(Default)]
struct Buf {
    bytes: Vec<u8>,
    dropped: u64,
}

/// Which stream a pipe is (for live events).
#[derive(Clone, Copy)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

#[derive(Clone)]
pub(crate) struct BoundedPipe {
    capacity: usize,
    buf: Arc<Mutex<Buf>>,
    /// Kept bytes are also sent here as they are written.
    live: Option<(crate::control::LiveSink, Stream)>,
}

impl BoundedPipe {
    pub(crate) fn new(capacity: usize) -> Self {
        BoundedPipe {
            capacity,
            buf: Arc::default(),
            live: None,
        }
    }

    pub(crate) fn with_live(mut self, live: Option<crate::control::LiveSink>, s: Stream) -> Self {
        self.live = live.map(|l| (l, s));
        self
    }

    fn push(&self, data: &[u8]) {
        let mut b = self.buf.lock().unwrap_or_else(PoisonError::into_inner);
        let room = self.capacity.saturating_sub(b.bytes.len());
        let keep = room.min(data.len());
        b.bytes.extend_from_slice(&data[..keep]);
        b.dropped += (data.len() - keep) as u64;
        drop(b);
        // Only what the bound kept: the live feed is bounded by it too.
        if keep > 0
            && let Some((live, stream)) = &self.live
        {
            let bytes = data[..keep].to_vec();
            live.send(match stream {
                Stream::Stdout => kasbah_core::LogEvent::Stdout { bytes },
                Stream::Stderr => kasbah_core::LogEvent::Stderr { bytes },
            });
        }
    }

    pub(crate) fn take(&self) -> Captured {
        let mut b = self.buf.lock().unwrap_or_else(PoisonError::into_inner);
        Captured {
            bytes: std::mem::take(&mut b.bytes),
            dropped_bytes: b.dropped,
        }
    }
}

/// Largest single write the guest is offered; it never has to wait for room.
const PERMIT: usize = 64 * 1024;

#[wasmtime_wasi::async_trait]
impl Pollable for BoundedPipe {
    async fn ready(&mut self) {}
}

impl OutputStream for BoundedPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(PERMIT)
    }
}

impl AsyncWrite for BoundedPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.push(data);
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for BoundedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for BoundedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_bytes_and_counts_the_rest() {
        let p = BoundedPipe::new(5);
        p.push(b"abc");
        p.push(b"defgh");
        p.push(b"ij");
        let c = p.take();
        assert_eq!(c.bytes, b"abcde");
        assert_eq!(c.dropped_bytes, 5);
    }
}

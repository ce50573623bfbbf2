//! Object-store helpers shared by the zone workers and the control plane:
//! putting bytes under their digest with chunks that fit the server's
//! `max_payload`, and reading an object back while checking it against the
//! digest it is stored under.
//!
//! Objects of the fleet's buckets are named by the hex of their SHA-256
//! ([`kasbah_core::Digest::hex`]); what a reader gets is checked against
//! that name (and the expected size), never trusted because the bucket
//! says so.

use std::pin::Pin;
use std::task::{Context, Poll};

use async_nats::jetstream::object_store::{ObjectMetadata, ObjectStore};
use kasbah_core::Digest;
use sha2::Digest as _;
use tokio::io::{AsyncRead, ReadBuf};

/// The object store's own default chunk size.
pub const DEFAULT_CHUNK: usize = 128 * 1024;
/// Bytes kept free in a chunk message for headers and framing.
pub const CHUNK_HEADROOM: usize = 4096;

/// The chunk size to put objects with on a server whose `max_payload` is
/// `max_payload`: the object store's default, or less where a chunk of
/// that size would not fit in one message.
pub fn chunk_size(max_payload: usize) -> usize {
    DEFAULT_CHUNK.min(max_payload.saturating_sub(CHUNK_HEADROOM).max(1024))
}

/// Put `reader`'s bytes into `store` as object `digest.hex()` unless an
/// object of that name is there already, in chunks of `chunk` bytes.
/// Fails if the bytes do not have `digest` (the object is then removed).
pub async fn put(
    store: &ObjectStore,
    digest: &Digest,
    chunk: usize,
    reader: &mut (impl AsyncRead + Unpin),
) -> anyhow::Result<()> {
    let name = digest.hex();
    if store.info(&name).await.is_ok() {
        return Ok(());
    }
    let meta = ObjectMetadata {
        name: name.clone(),
        chunk_size: Some(chunk),
        ..Default::default()
    };
    let info = store
        .put(meta, reader)
        .await
        .map_err(|e| anyhow::anyhow!("storing {digest}: {e}"))?;
    let want = format!(
        "SHA-256={}",
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE,
            digest.as_bytes()
        )
    );
    if info.digest.as_deref() != Some(want.as_str()) {
        let _ = store.delete(&name).await;
        anyhow::bail!(
            "storing {digest}: the bytes stored have digest {:?}",
            info.digest
        );
    }
    Ok(())
}

/// An [`AsyncRead`] over an object that fails (an `InvalidData` error
/// instead of the end of the data) if the bytes are not `size` bytes with
/// SHA-256 `digest`: a reader never sees a clean end of wrong bytes, nor
/// all `size` of them (the read that would complete them fails instead).
pub struct Checked<R> {
    inner: R,
    digest: Digest,
    size: u64,
    read: u64,
    hasher: Option<sha2::Sha256>,
}

impl<R> Checked<R> {
    pub fn new(inner: R, digest: Digest, size: u64) -> Self {
        Checked {
            inner,
            digest,
            size,
            read: 0,
            hasher: Some(sha2::Sha256::new()),
        }
    }
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

impl<R: AsyncRead + Unpin> AsyncRead for Checked<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let me = &mut *self;
        let new = &buf.filled()[before..];
        if new.is_empty() {
            // End of the object: it must be all of it, and the right bytes.
            let Some(h) = me.hasher.take() else {
                return Poll::Ready(Ok(()));
            };
            let got = Digest::from_bytes(h.finalize().into());
            if me.read != me.size || got != me.digest {
                return Poll::Ready(Err(invalid(format!(
                    "object {} is {} bytes with digest {got}, expected {} bytes",
                    me.digest, me.read, me.size
                ))));
            }
            return Poll::Ready(Ok(()));
        }
        me.read += new.len() as u64;
        if me.read > me.size {
            // An error reads nothing: the bytes of this read are not handed out.
            buf.set_filled(before);
            return Poll::Ready(Err(invalid(format!(
                "object {} is longer than {} bytes",
                me.digest, me.size
            ))));
        }
        if let Some(h) = me.hasher.as_mut() {
            h.update(new);
        }
        if me.read == me.size
            && let Some(h) = me.hasher.take()
        {
            // The last bytes: checked before they are handed out, so that a
            // reader told the size (an HTTP `Content-Length`) never receives
            // all of wrong bytes and takes them for a complete body.
            let got = Digest::from_bytes(h.finalize().into());
            if got != me.digest {
                buf.set_filled(before);
                return Poll::Ready(Err(invalid(format!(
                    "object {} has digest {got}",
                    me.digest
                ))));
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    #[tokio::test]
    async fn checked_reads_fail_on_wrong_bytes_or_sizes() {
        let body = vec![7u8; 100_000];
        let d = Digest::of(&body);
        let mut out = Vec::new();
        Checked::new(&body[..], d, body.len() as u64)
            .read_to_end(&mut out)
            .await
            .expect("right bytes read through");
        assert_eq!(out, body);
        let mut other = body.clone();
        other[99_999] = 8;
        let mut got = Vec::new();
        let e = Checked::new(&other[..], d, body.len() as u64)
            .read_to_end(&mut got)
            .await
            .expect_err("other bytes");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        // Never all of them: the last bytes are withheld, so a reader that
        // knows the size never sees a complete body of wrong bytes.
        assert!(got.len() < body.len(), "{} bytes handed out", got.len());
        let short = Checked::new(&body[..10], d, body.len() as u64)
            .read_to_end(&mut Vec::new())
            .await;
        assert!(short.is_err(), "a short object fails");
        let long = Checked::new(&body[..], d, 10)
            .read_to_end(&mut Vec::new())
            .await;
        assert!(long.is_err(), "a long object fails");
    }

    #[test]
    fn chunks_fit_the_payload_limit() {
        assert_eq!(chunk_size(1 << 20), DEFAULT_CHUNK);
        assert_eq!(chunk_size(64 * 1024), 60 * 1024);
        assert_eq!(chunk_size(10), 1024);
    }
}

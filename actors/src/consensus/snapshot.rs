//! Snapshot data as openraft streams it in (docs/architecture.md §13): a buffer with a total
//! size cap that only grows at its end.
//!
//! openraft 0.9 writes each InstallSnapshot chunk at the offset the sender names, seeking there
//! first. Into a plain `Cursor<Vec<u8>>` a chunk at `offset = 2^40` asks for a terabyte. Here a
//! seek past the bytes received so far (a gap) and a write past [`MAX_SNAPSHOT`] are I/O
//! errors, which openraft returns to the sender; a retried chunk (a seek back) is fine. When the
//! last chunk arrives (`shutdown`), the data must decode as an applied state, so a well-formed
//! stream of garbage is refused to its sender instead of failing the state machine (which
//! would stop this node).

use std::io::{self, Cursor, SeekFrom};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// The largest snapshot accepted: the replicated state is members and a shard map (a few MB
/// for 65 536 shards), so 256 MiB is far above any real one.
pub const MAX_SNAPSHOT: u64 = 256 << 20;

/// Checks complete snapshot bytes; the error says why they are refused.
pub type Validate = fn(&[u8]) -> Result<(), String>;

/// Snapshot bytes, capped (see the module comment).
#[derive(Debug, Default)]
pub struct SnapshotData {
    inner: Cursor<Vec<u8>>,
    cap: u64,
    /// Checks the complete data when the stream ends.
    validate: Option<Validate>,
}

impl SnapshotData {
    /// Data to send (a built or stored snapshot).
    pub fn from_bytes(data: Vec<u8>) -> SnapshotData {
        SnapshotData { inner: Cursor::new(data), cap: MAX_SNAPSHOT, validate: None }
    }

    /// An empty buffer to receive into, at most `cap` bytes, checked by `validate` at the end.
    pub fn receiving(cap: u64, validate: Validate) -> SnapshotData {
        SnapshotData { inner: Cursor::new(Vec::new()), cap, validate: Some(validate) }
    }

    /// The bytes.
    pub fn into_inner(self) -> Vec<u8> {
        self.inner.into_inner()
    }

    fn len(&self) -> u64 {
        self.inner.get_ref().len() as u64
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl AsyncRead for SnapshotData {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let end = self.inner.position().saturating_add(buf.len() as u64);
        if end > self.cap {
            return Poll::Ready(Err(invalid(format!(
                "snapshot chunk ends at byte {end}, past the {} byte limit",
                self.cap
            ))));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = match self.validate {
            Some(check) => check(self.inner.get_ref()).map_err(|e| invalid(format!("snapshot does not decode: {e}"))),
            None => Ok(()),
        };
        Poll::Ready(r)
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(mut self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        let to = match position {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len().checked_add_signed(d),
            SeekFrom::Current(d) => self.inner.position().checked_add_signed(d),
        };
        match to {
            Some(p) if p <= self.len() => Pin::new(&mut self.inner).start_seek(SeekFrom::Start(p)),
            _ => Err(invalid(format!(
                "snapshot chunk at {position:?} leaves a gap after the {} bytes received",
                self.len()
            ))),
        }
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Pin::new(&mut self.inner).poll_complete(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncSeekExt, AsyncWriteExt};

    use super::*;

    fn never(_: &[u8]) -> Result<(), String> {
        Err("not a state".into())
    }

    fn any(_: &[u8]) -> Result<(), String> {
        Ok(())
    }

    #[tokio::test]
    async fn a_far_offset_is_refused_without_allocating() {
        let mut d = SnapshotData::receiving(MAX_SNAPSHOT, any);
        d.write_all(b"abc").await.unwrap();
        let e = d.seek(SeekFrom::Start(1 << 40)).await.unwrap_err();
        assert!(e.to_string().contains("gap"), "{e}");
        assert!(d.inner.get_ref().capacity() < 1024, "nothing allocated for the far offset");
        assert!(d.seek(SeekFrom::Start(4)).await.is_err(), "one byte past the end is a gap too");
        // The next offset and a retried chunk are fine.
        d.seek(SeekFrom::Start(3)).await.unwrap();
        d.write_all(b"def").await.unwrap();
        d.seek(SeekFrom::Start(3)).await.unwrap();
        d.write_all(b"DEF").await.unwrap();
        assert_eq!(d.into_inner(), b"abcDEF");
    }

    #[tokio::test]
    async fn the_total_size_is_capped() {
        let mut d = SnapshotData::receiving(8, any);
        d.write_all(b"12345678").await.unwrap();
        let e = d.write_all(b"9").await.unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
        assert_eq!(d.into_inner().len(), 8);
    }

    #[tokio::test]
    async fn garbage_is_refused_when_the_stream_ends() {
        let mut d = SnapshotData::receiving(MAX_SNAPSHOT, never);
        d.write_all(b"\xc1garbage").await.unwrap();
        let e = d.shutdown().await.unwrap_err();
        assert!(e.to_string().contains("does not decode"), "{e}");
    }
}

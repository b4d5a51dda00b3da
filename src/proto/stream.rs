//! The native protocol over a byte stream: [`FrameReader`] cuts frames out of what arrives, and
//! [`write_frames`] sends queued frames, several per write when they are ready together
//! ([`write_frames_within`]: giving up on a peer that does not read). The
//! [`crate::client`] and the native listener both use these, so the protocol is framed in one
//! place. (Unlike `frame.rs` and `messages.rs`, this needs `std` and tokio.)

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::frame::{FRAME_HEADER_LEN, FrameError, decode_frame};

/// Room kept free for the next read, and what is added when less is left.
const READ_ROOM: usize = 16 * 1024;
const READ_GROW: usize = 64 * 1024;
/// A write gathers the frames that are ready up to about this many bytes.
const WRITE_GATHER: usize = 256 * 1024;
/// A write buffer that grew past this for a burst is let go afterwards.
const WRITE_KEEP: usize = 1 << 20;

/// Bytes read from a connection, cut into frames. The buffer grows with the bytes that arrive,
/// never to a length a peer claims: `max_len` bounds every frame before it is buffered whole.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Where the next frame starts in `buf`.
    start: usize,
}

impl FrameReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next whole frame's message among the bytes read, or `None` until more arrive. A
    /// frame longer than `max_len`, or whose checksum fails, is an error: the connection
    /// cannot be read any further.
    pub fn next_frame(&mut self, max_len: usize) -> Result<Option<&[u8]>, FrameError> {
        let at = self.start;
        match decode_frame(&self.buf[at..], max_len) {
            Ok((_, total)) => {
                self.start += total;
                Ok(Some(&self.buf[at + FRAME_HEADER_LEN..at + total]))
            }
            Err(FrameError::Incomplete { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Bytes read that are not yet a whole frame.
    pub fn partial(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Reads once from `rd`; `Ok(0)` when the stream has ended. Cancel-safe: dropped before
    /// it completes, it has read nothing.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, rd: &mut R) -> io::Result<usize> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.capacity() - self.buf.len() < READ_ROOM {
            self.buf.reserve(READ_GROW);
        }
        rd.read_buf(&mut self.buf).await
    }
}

/// Sends the frames queued on `rx` in order, gathering those that are ready together into one
/// write, and flushes after each. Ends when `rx` closes (after sending everything queued) or a
/// write fails, and then shuts the stream's write side.
pub async fn write_frames<W: AsyncWrite + Unpin>(wr: W, rx: mpsc::Receiver<Vec<u8>>) {
    write_frames_within(wr, rx, None).await;
}

/// As [`write_frames`]; with `stall`, a write that does not complete within it (the peer does
/// not read) ends the writer, dropping what is queued (senders then see it closed).
pub async fn write_frames_within<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Vec<u8>>,
    stall: Option<std::time::Duration>,
) {
    let mut out = Vec::new();
    while let Some(frame) = rx.recv().await {
        out.extend_from_slice(&frame);
        while out.len() < WRITE_GATHER {
            match rx.try_recv() {
                Ok(more) => out.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        let write = async { wr.write_all(&out).await.and(wr.flush().await) };
        let written = match stall {
            Some(d) => tokio::time::timeout(d, write)
                .await
                .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())),
            None => write.await,
        };
        if written.is_err() {
            return;
        }
        if out.capacity() > WRITE_KEEP {
            out = Vec::new();
        } else {
            out.clear();
        }
    }
    let _ = wr.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::encode;

    #[tokio::test]
    async fn frames_cross_reads_in_any_cut_and_come_out_whole() {
        let frames: Vec<Vec<u8>> = (0..50u8)
            .map(|i| encode(&vec![i; (usize::from(i) * 37) % 300 + 1]))
            .collect();
        let all: Vec<u8> = frames.concat();
        for cut in [1, 3, 7, 64, 1000] {
            let (mut a, mut b) = tokio::io::duplex(cut);
            let sent = all.clone();
            let writer = tokio::spawn(async move {
                for chunk in sent.chunks(cut) {
                    a.write_all(chunk).await.expect("write");
                }
            });
            let mut r = FrameReader::new();
            let mut got = Vec::new();
            while got.len() < frames.len() {
                while let Some(m) = r.next_frame(1 << 20).expect("frame") {
                    got.push(m.to_vec());
                }
                if got.len() < frames.len() {
                    assert!(r.fill(&mut b).await.expect("read") > 0);
                }
            }
            writer.await.expect("writer");
            let want: Vec<Vec<u8>> = frames
                .iter()
                .map(|f| f[FRAME_HEADER_LEN..].to_vec())
                .collect();
            assert_eq!(got, want, "cut {cut}");
            assert_eq!(r.partial(), 0);
        }
    }

    #[tokio::test]
    async fn an_oversized_or_damaged_frame_is_an_error_before_it_is_buffered() {
        let (mut a, mut b) = tokio::io::duplex(64);
        // A header claiming 1 GiB: refused on its first 4 bytes.
        a.write_all(&(1u32 << 30).to_le_bytes())
            .await
            .expect("write");
        let mut r = FrameReader::new();
        r.fill(&mut b).await.expect("read");
        assert!(matches!(
            r.next_frame(1 << 20),
            Err(FrameError::TooLarge { .. })
        ));
        let mut f = encode(&7u32);
        let last = f.len() - 1;
        f[last] ^= 1;
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&f).await.expect("write");
        let mut r = FrameReader::new();
        r.fill(&mut b).await.expect("read");
        assert!(matches!(
            r.next_frame(1 << 20),
            Err(FrameError::BadCrc { .. })
        ));
    }

    #[tokio::test]
    async fn the_writer_sends_everything_queued_in_order_then_shuts_down() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let (tx, rx) = mpsc::channel(8);
        let writer = tokio::spawn(write_frames(a, rx));
        let mut want = Vec::new();
        for i in 0..100u32 {
            let f = encode(&i);
            want.extend_from_slice(&f);
            tx.send(f).await.expect("queue");
        }
        drop(tx);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.expect("read to the end");
        writer.await.expect("writer");
        assert_eq!(got, want);
    }
}

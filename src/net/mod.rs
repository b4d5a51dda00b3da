//! Networking shared by the listeners, the client and the mirror's links.
//!
//! | module | job |
//! |---|---|
//! | [`tls`] | TLS (rustls, ring): server and client configs, certificates and client certificates, streams |
//! | [`read_held`] | one read for a connection that lets its read buffer go while it is quiet |

pub mod tls;

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Poll, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// Room on the stack for a read into a buffer that has none.
const STACK_READ: usize = 4096;

/// Reads once from `rd` into `buf`; `Ok(0)` when the stream has ended. A buffer with room is
/// read into directly. One without (a quiet connection lets its buffer go) is read through
/// room on the stack and is given exactly the bytes that came: a small packet costs one
/// system call and the buffer holds no more than its size, where reading into an empty
/// `BytesMut` reads 64 bytes first and the rest with a second call. Cancel-safe: dropped
/// before it completes, it has read nothing.
pub async fn read_held<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() > buf.len() {
        return rd.read_buf(buf).await;
    }
    std::future::poll_fn(|cx| {
        // Lives only during the poll: nothing of it is kept in the connection's future.
        let mut room = [MaybeUninit::<u8>::uninit(); STACK_READ];
        let mut read = ReadBuf::uninit(&mut room);
        ready!(Pin::new(&mut *rd).poll_read(cx, &mut read))?;
        buf.extend_from_slice(read.filled());
        Poll::Ready(Ok(read.filled().len()))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn an_empty_buffer_gets_what_came_in_one_read() {
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        let packet = vec![7u8; 113];
        a.write_all(&packet).await.expect("write");
        let mut buf = BytesMut::new();
        assert_eq!(read_held(&mut b, &mut buf).await.expect("read"), 113);
        assert_eq!(&buf[..], &packet[..]);
        assert!(buf.capacity() < 256, "kept {} bytes", buf.capacity());

        // More than the stack's room: the rest comes with the next read.
        let big = vec![9u8; STACK_READ + 100];
        a.write_all(&big).await.expect("write");
        let mut buf = BytesMut::new();
        assert_eq!(read_held(&mut b, &mut buf).await.expect("read"), STACK_READ);
        assert_eq!(read_held(&mut b, &mut buf).await.expect("read"), 100);
        assert_eq!(&buf[..], &big[..]);

        // A buffer with room is read into in place.
        let mut buf = BytesMut::with_capacity(1024);
        a.write_all(b"abc").await.expect("write");
        assert_eq!(read_held(&mut b, &mut buf).await.expect("read"), 3);
        assert_eq!(&buf[..], b"abc");
        assert!(buf.capacity() >= 1024);

        drop(a);
        let mut buf = BytesMut::new();
        assert_eq!(read_held(&mut b, &mut buf).await.expect("eof"), 0);
    }
}

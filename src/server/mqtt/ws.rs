//! MQTT over WebSockets (`listeners.mqtt_ws`, `mqtt_wss` over TLS), as browsers, Node-RED
//! dashboards and Home Assistant setups speak it: an HTTP/1.1 upgrade on any path, the `mqtt`
//! subprotocol (offered by the client, echoed), then MQTT packets in binary messages (RFC 6455
//! framing by `tungstenite`). [`WsBytes`] turns the messages back into the byte stream the MQTT
//! connection reads, and each flush of the connection's writes into one binary message, so the
//! same sessions, limits, logins and ACLs apply as on plain MQTT.
//!
//! A WebSocket message or frame larger than `mqtt.max_packet_size` (plus its framing) closes the
//! connection; text messages are a protocol error (MQTT is binary); pings are answered by
//! `tungstenite`; a close frame ends the stream like a closed socket.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::conn::BeforeConnect;
use crate::net::tls::Accepted;

/// An accepted WebSocket carrying MQTT, as a byte stream.
pub struct WsBytes {
    ws: WebSocketStream<Accepted>,
    /// What is left of the last binary message read.
    unread: Bytes,
    /// Bytes written since the last flush: one binary message at the next flush.
    unsent: Vec<u8>,
}

/// Completes the WebSocket handshake on `stream` (already through TLS for `mqtt_wss`); the
/// client must offer the `mqtt` subprotocol. `max_message`: the largest message accepted.
pub async fn accept(stream: Accepted, max_message: usize) -> Result<WsBytes, BeforeConnect> {
    let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let offered = req
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case("mqtt"));
        if !offered {
            let mut refusal = ErrorResponse::new(Some(
                "MQTT over WebSockets needs the \"mqtt\" subprotocol".into(),
            ));
            *refusal.status_mut() = StatusCode::BAD_REQUEST;
            return Err(refusal);
        }
        resp.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
        Ok(resp)
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config))
        .await
        .map_err(|e| BeforeConnect::WebSocket(Box::new(e)))?;
    Ok(WsBytes {
        ws,
        unread: Bytes::new(),
        unsent: Vec::new(),
    })
}

fn io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

impl AsyncRead for WsBytes {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.unread.is_empty() {
                let n = this.unread.len().min(buf.remaining());
                buf.put_slice(&this.unread.split_to(n));
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut this.ws).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                // The end, or a close frame: end of stream, as a closed socket.
                Poll::Ready(None) | Poll::Ready(Some(Ok(Message::Close(_)))) => {
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Some(Ok(Message::Binary(data)))) => this.unread = data,
                Poll::Ready(Some(Ok(Message::Text(_)))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text message: MQTT over WebSockets is binary",
                    )));
                }
                // Pings are answered by tungstenite; pongs and raw frames carry nothing.
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(io_error(e))),
            }
        }
    }
}

impl AsyncWrite for WsBytes {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().unsent.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.unsent.is_empty() {
            match Pin::new(&mut this.ws).poll_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(io_error(e))),
                Poll::Ready(Ok(())) => {}
            }
            let message = Message::Binary(Bytes::from(std::mem::take(&mut this.unsent)));
            if let Err(e) = Pin::new(&mut this.ws).start_send(message) {
                return Poll::Ready(Err(io_error(e)));
            }
        }
        Pin::new(&mut this.ws).poll_flush(cx).map_err(io_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut *this).poll_flush(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {}
        }
        match Pin::new(&mut this.ws).poll_close(cx) {
            Poll::Ready(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                Poll::Ready(Ok(()))
            }
            other => other.map_err(io_error),
        }
    }
}

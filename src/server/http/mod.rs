//! The HTTP endpoint: the status page at `/` ([`status`]), `/metrics` (Prometheus text,
//! `metrics.rs`), `/healthz` (`health.rs`, which also gives the status its reasons), and the
//! JSON documents `/api/status`, `/api/topics` and `/api/mirrors`.
//!
//! With `auth.http_token_file` set, `/` and `/api/...` (and `/metrics` with
//! `auth.metrics_need_token`) answer 401 without the token, given as `Authorization: Bearer
//! TOKEN` or, from a browser, as the password of HTTP Basic authentication (any user name; the
//! 401 asks for it); `/healthz` is always open.
//!
//! A deliberately small HTTP/1.1 server: GET only, one request per connection, request heads up
//! to 8 KiB. Anything else gets a 4xx answer.

mod health;
mod metrics;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use self::health::health;
use self::metrics::metrics;
use self::status::History;
use super::native::NativeStats;
use crate::broker::Broker;
use crate::log::Topic;
use crate::net::tls::TlsServer;
use crate::report::{PartitionReport, TopicReport};

/// What the HTTP endpoint reads from.
pub struct HttpState {
    pub broker: Arc<Broker>,
    pub native: Arc<NativeStats>,
    pub mqtt: Arc<super::mqtt::MqttStats>,
    pub kafka: Arc<super::kafka::KafkaStats>,
    pub mirrors: Arc<crate::mirror::MirrorStatus>,
    pub auth: Arc<crate::auth::Auth>,
    /// The status page's last hour ([`History::run`] samples it).
    pub history: History,
}

pub async fn run(
    listener: TcpListener,
    tls: Option<Arc<TlsServer>>,
    state: Arc<HttpState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("http listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(admitted) = state.auth.admit("http", peer.ip()) else {
            continue;
        };
        let state = Arc::clone(&state);
        let tls = tls.clone();
        tokio::spawn(async move {
            // One request per connection: the handshakes and the request within the timeout.
            let served = tokio::time::timeout(state.auth.handshake_timeout(), async {
                match &tls {
                    None => serve_one(stream, &state).await,
                    Some(t) => match state.auth.accept_tls(t, stream).await {
                        Ok((s, _)) => serve_one(s, &state).await,
                        Err(e) => {
                            tracing::debug!("http: {e}");
                            Ok(())
                        }
                    },
                }
            })
            .await;
            if served.is_err() {
                state.auth.handshake_timed_out();
                tracing::debug!(%peer, "http: no complete request within the handshake timeout");
            }
            drop(admitted);
        });
    }
}

async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    state: &HttpState,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let end = loop {
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
        if head.len() > 8192 {
            tracing::debug!("http: a request head over 8 KiB refused");
            return respond(&mut stream, 431, "text/plain", "request head too large\n").await;
        }
    };
    let Some(RequestHead {
        method,
        path,
        authorization,
    }) = parse_head(&head[..end])
    else {
        tracing::debug!("http: a malformed request head refused");
        return respond(&mut stream, 400, "text/plain", "malformed request head\n").await;
    };
    if method != "GET" {
        return respond(&mut stream, 405, "text/plain", "only GET is supported\n").await;
    }
    if !state.auth.http_allows(path, authorization) {
        return respond(
            &mut stream,
            401,
            "text/plain",
            "a token is required: Authorization: Bearer TOKEN, or TOKEN as the password of Basic authentication (auth.http_token_file)\n",
        )
        .await;
    }
    match path {
        "/" => respond(&mut stream, 200, "text/html; charset=utf-8", status::PAGE).await,
        "/api/status" => {
            let body =
                serde_json::to_string(&status::report(state)).unwrap_or_else(|_| "{}".into());
            respond(&mut stream, 200, "application/json", &body).await
        }
        "/metrics" => {
            let body = metrics(state);
            respond(&mut stream, 200, "text/plain; version=0.0.4", &body).await
        }
        "/healthz" => {
            let problems = health(state);
            if problems.is_empty() {
                respond(&mut stream, 200, "text/plain", "ok\n").await
            } else {
                respond(
                    &mut stream,
                    503,
                    "text/plain",
                    &format!("degraded: {}\n", problems.join("; ")),
                )
                .await
            }
        }
        "/api/topics" => {
            let body = topics_json(state);
            respond(&mut stream, 200, "application/json", &body).await
        }
        "/api/mirrors" => {
            let body = serde_json::to_string(&state.mirrors.rows()).unwrap_or_else(|_| "[]".into());
            respond(&mut stream, 200, "application/json", &body).await
        }
        _ => respond(&mut stream, 404, "text/plain", "not found\n").await,
    }
}

/// What Brook reads of a request head.
#[derive(Debug, PartialEq, Eq)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// The request target without its query.
    pub path: &'a str,
    /// The `Authorization` header's value.
    pub authorization: Option<&'a str>,
}

/// Reads a request head (the bytes a client sent up to its blank line, which may follow).
/// None when it is not one: not UTF-8, or no method and target.
pub fn parse_head(head: &[u8]) -> Option<RequestHead<'_>> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next()?.split_whitespace();
    let (method, target) = (request_line.next()?, request_line.next()?);
    let path = target.split('?').next().unwrap_or(target);
    let authorization = lines.take_while(|l| !l.is_empty()).find_map(|h| {
        let (name, value) = h.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("authorization")
            .then(|| value.trim())
    });
    Some(RequestHead {
        method,
        path,
        authorization,
    })
}

async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    ctype: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    // A browser asks for the token as a password; the page loads nothing from elsewhere.
    let extra = match status {
        401 => "WWW-Authenticate: Basic realm=\"brook\", charset=\"UTF-8\"\r\n",
        _ if ctype.starts_with("text/html") => {
            "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; frame-ancestors 'none'\r\nCache-Control: no-store\r\n"
        }
        _ => "Cache-Control: no-store\r\n",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}Connection: close\r\nX-Content-Type-Options: nosniff\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

fn topics_json(state: &HttpState) -> String {
    let topics: Vec<TopicReport> = state
        .broker
        .topics()
        .iter()
        .map(|t| topic_report(t))
        .collect();
    serde_json::to_string(&topics).unwrap_or_else(|_| "[]".into())
}

/// A topic as `/api/topics` (and `brook topics describe --json`) shows it.
fn topic_report(t: &Topic) -> TopicReport {
    let cfg = t.config();
    TopicReport {
        name: t.name().to_string(),
        retention: cfg.retention.to_string(),
        retention_size: cfg.retention_size.bytes(),
        segment_size: cfg.segment_size.bytes(),
        on_full: cfg.on_full,
        cleanup: Some(cfg.cleanup),
        delete_retention: Some(cfg.delete_retention.to_string()),
        partitions: t
            .partitions()
            .iter()
            .map(|p| {
                let s = p.status();
                PartitionReport {
                    partition: p.id(),
                    log_start: s.log_start,
                    end_offset: s.next_offset,
                    durable_offset: s.durable_offset,
                    segments: s.segments as u64,
                    bytes: s.bytes,
                    refuses_writes: s.poisoned,
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads_are_read_or_refused() {
        let h = parse_head(
            b"GET /api/status?x=1 HTTP/1.1\r\nHost: a\r\nauthorization:  Bearer t \r\n\r\n",
        );
        assert_eq!(
            h,
            Some(RequestHead {
                method: "GET",
                path: "/api/status",
                authorization: Some("Bearer t"),
            })
        );
        // Nothing is read past the blank line (a body is not a header).
        let h = parse_head(b"GET / HTTP/1.0\r\n\r\nAuthorization: Bearer t\r\n").expect("head");
        assert_eq!((h.path, h.authorization), ("/", None));
        assert_eq!(parse_head(b"GET\r\n\r\n"), None, "no target");
        assert_eq!(parse_head(b""), None);
        assert_eq!(parse_head(b"GET /\xff HTTP/1.1\r\n\r\n"), None, "not UTF-8");
    }

    /// The fuzz target's regression inputs (fuzz/regressions/http_request/) read as expected.
    #[test]
    fn fuzz_regressions_read_as_expected() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/http_request");
        let mut read = Vec::new();
        for e in std::fs::read_dir(&dir).expect("fuzz/regressions/http_request") {
            let path = e.expect("entry").path();
            let bytes = std::fs::read(&path).expect("read");
            let head = parse_head(&bytes);
            let token = head
                .as_ref()
                .and_then(|h| h.authorization)
                .and_then(crate::auth::http_token_given);
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            read.push((name.to_string(), head.is_some(), token));
        }
        read.sort();
        let token = Some("0123456789abcdef".to_string());
        let expected = [
            ("basic_login", true, token.clone()),
            ("basic_not_base64", true, None),
            ("bearer", true, token),
            ("not_utf8", false, None),
        ];
        let expected: Vec<_> = expected
            .into_iter()
            .map(|(n, h, t)| (n.to_string(), h, t))
            .collect();
        assert_eq!(read, expected);
    }
}

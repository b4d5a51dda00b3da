//! A GET of Brook's HTTP API (`/api/...`, `/metrics`, `/healthz`), for the CLI's status commands
//! and the tests.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ClientError, Result};

/// GETs `path` from Brook's HTTP listener at `http` (with the HTTP token, if one is set); the
/// body of a 200 answer.
pub async fn http_get(http: &str, path: &str, token: Option<&str>) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(http)
        .await
        .map_err(|source| ClientError::Connect {
            addr: http.to_string(),
            source,
        })?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {http}\r\n{auth}Connection: close\r\n\r\n");
    let lost = |e: std::io::Error| ClientError::Closed(e.to_string());
    s.write_all(request.as_bytes()).await.map_err(lost)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.map_err(lost)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| ClientError::Protocol("malformed HTTP answer".into()))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(ClientError::Http {
            url: format!("{http}{path}"),
            status: head.lines().next().unwrap_or("").to_string(),
        });
    }
    Ok(body.to_string())
}

//! `score-worker health [--live]`: asks the worker serving `http.listen` on this host for `/readyz` (or
//! `/healthz`) and exits 0 on 200, 1 otherwise — a container health check for the distroless image,
//! which has no shell or HTTP client.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The whole exchange (connect, request, response) must finish within this.
const TIMEOUT: Duration = Duration::from_secs(3);
/// More than any answer of the worker's own endpoints.
const MAX_RESPONSE: u64 = 64 * 1024;

/// Why the endpoint gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("{addr}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr}: no answer within {TIMEOUT:?}")]
    Timeout { addr: SocketAddr },
    #[error("{addr}: not an HTTP response: {0:?}", .line)]
    Response { addr: SocketAddr, line: String },
}

/// Where to reach a server listening on `listen` from the same host: an unspecified address
/// (`0.0.0.0`, `::`) is reached on loopback.
pub fn local_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Prints the endpoint's answer; exit 0 if it was 200.
pub async fn run(listen: SocketAddr, live: bool) -> ExitCode {
    let addr = local_address(listen);
    let path = if live { "/healthz" } else { "/readyz" };
    match get(addr, path).await {
        Ok((200, body)) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!(
                "score-worker health: {path} answered {status}: {}",
                body.trim()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("score-worker health: {path}: {}", crate::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// `GET path` over HTTP/1.1 with `Connection: close`: the status code and the body.
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), HealthError> {
    let io = |source| HealthError::Io { addr, source };
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.map_err(io)?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        let mut raw = Vec::new();
        stream
            .take(MAX_RESPONSE)
            .read_to_end(&mut raw)
            .await
            .map_err(io)?;
        Ok(String::from_utf8_lossy(&raw).into_owned())
    };
    let raw = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| HealthError::Timeout { addr })??;
    parse(&raw).ok_or_else(|| HealthError::Response {
        addr,
        line: raw.lines().next().unwrap_or_default().to_string(),
    })
}

/// The status code and body of an HTTP/1.x response (the worker's bodies are never chunked).
fn parse(raw: &str) -> Option<(u16, String)> {
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.lines().next()?;
    let code = status
        .strip_prefix("HTTP/1.")?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((code, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listen_address_is_reached_on_loopback() {
        let local = |s: &str| local_address(s.parse().unwrap()).to_string();
        assert_eq!(local("0.0.0.0:9102"), "127.0.0.1:9102");
        assert_eq!(local("[::]:9102"), "[::1]:9102");
        assert_eq!(local("10.1.2.3:9102"), "10.1.2.3:9102");
    }

    #[test]
    fn responses_are_parsed_and_garbage_is_not() {
        assert_eq!(
            parse("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 9\r\n\r\nnot ready"),
            Some((503, "not ready".into()))
        );
        assert_eq!(parse("HTTP/1.0 200 OK\r\n\r\n"), Some((200, String::new())));
        assert_eq!(parse("SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse("HTTP/2 200\r\n\r\n"), None);
    }
}

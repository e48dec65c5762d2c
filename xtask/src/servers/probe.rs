//! Is it there, and is it what we think: one short TCP exchange per question, each bounded by a few
//! seconds, no client library (a server that is starting, frozen or foreign must not hang a probe).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(3);

fn connect(host: &str, port: u16) -> Option<TcpStream> {
    let addr: SocketAddr = (host, port).to_socket_addrs().ok()?.next()?;
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT).ok()?;
    stream.set_read_timeout(Some(TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(TIMEOUT)).ok()?;
    Some(stream)
}

/// Something accepts connections on `host:port`.
pub fn tcp_open(host: &str, port: u16) -> bool {
    connect(host, port).is_some()
}

/// The INFO line a NATS server greets every connection with (its JSON), if one answers.
fn nats_info(host: &str, port: u16) -> Option<String> {
    let mut stream = connect(host, port)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.contains(&b'\n') && buf.len() < 64 * 1024 {
        let n = stream.read(&mut chunk).ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf).lines().next()?.to_owned();
    line.strip_prefix("INFO ").map(str::to_owned)
}

/// A NATS server answers on `host:port`.
pub fn nats_ping(host: &str, port: u16) -> bool {
    nats_info(host, port).is_some()
}

/// The version a NATS server on `host:port` reports, e.g. "2.9.10".
pub fn nats_version(host: &str, port: u16) -> Option<String> {
    let info: serde_json::Value = serde_json::from_str(&nats_info(host, port)?).ok()?;
    info.get("version")?.as_str().map(str::to_owned)
}

/// `GET path` over HTTP/1.0: the status code and the body.
pub fn http_get(host: &str, port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = connect(host, port)?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    Some((status, body.unwrap_or_default()))
}

/// The NATS monitor's `/healthz` says ok (JetStream current with its meta leader and streams).
pub fn nats_healthz(host: &str, monitor_port: u16) -> bool {
    matches!(http_get(host, monitor_port, "/healthz"), Some((200, _)))
}

/// The JetStream meta leader as the node behind `monitor_port` sees it.
pub fn nats_meta_leader(host: &str, monitor_port: u16) -> Option<String> {
    let (_, body) = http_get(host, monitor_port, "/jsz").filter(|(s, _)| *s == 200)?;
    let jsz: serde_json::Value = serde_json::from_str(&body).ok()?;
    jsz.pointer("/meta_cluster/leader")?
        .as_str()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
}

/// A CQL node answers an OPTIONS request (protocol v4: version 4, flags 0, stream 0, opcode 5, no
/// body) with a SUPPORTED frame (response version 0x84, opcode 6).
pub fn cql_ping(host: &str, port: u16) -> bool {
    let Some(mut stream) = connect(host, port) else {
        return false;
    };
    let mut header = [0u8; 5];
    stream.write_all(&[4, 0, 0, 0, 5, 0, 0, 0, 0]).is_ok()
        && stream.read_exact(&mut header).is_ok()
        && header == [0x84, 0, 0, 0, 6]
}

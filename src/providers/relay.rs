//! Upstream connections for streamed answers, with a first-byte and an idle deadline.
//!
//! Pingora applies one read timeout to every upstream read, but a stream needs two bounds: a
//! long wait for the answer to begin, then short silences between chunks. A stream's connection
//! therefore goes through a relay task: Pingora talks to one end of a socket pair, the relay
//! copies between the other end and the provider, and closes both when a deadline passes. It
//! records that it did, so the proxy can report a timeout rather than a closed connection.
//!
//! The answer begins with its first body byte, not its headers: servers that send headers at
//! once and then queue or prefill would otherwise spend the first-byte allowance under the idle
//! bound. The relay holds the header block until a body byte follows it (or the headers say
//! there is no body), so a provider that stalls after its headers still fails before anything
//! reached the client, and the request can go to another target.

use async_trait::async_trait;
use pingora::connectors::L4Connect;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::l4::stream::Stream;
use pingora::{Error, ErrorType, Result};
use std::collections::HashMap;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::{sleep_until, Instant};

/// Why a relay closed its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    FirstByte,
    Idle,
}

/// What the proxy can learn about a relayed connection.
#[derive(Debug, Default)]
pub struct RelayState(AtomicU8);

impl RelayState {
    pub fn expired(&self) -> Option<Expired> {
        match self.0.load(Ordering::Acquire) {
            1 => Some(Expired::FirstByte),
            2 => Some(Expired::Idle),
            _ => None,
        }
    }

    fn set(&self, why: Expired) {
        let v = match why {
            Expired::FirstByte => 1,
            Expired::Idle => 2,
        };
        self.0.store(v, Ordering::Release);
    }
}

/// Connects a provider's stream requests through relays. One per provider.
///
/// Pingora checks that a pooled connection's descriptor is connected to the peer's address
/// before it reuses it; a socket pair never is, except that Pingora skips the check for the
/// unspecified address 0.0.0.0. So relayed peers are given [`RelayConnect::peer_addr`], and
/// the relay connects to the provider's real address.
#[derive(Debug)]
pub struct RelayConnect {
    /// The provider's address; `None` when it is unavailable.
    addr: Option<std::net::SocketAddr>,
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
    /// Live relays by the file descriptor Pingora holds. An entry is replaced when the
    /// descriptor is reused, so the map is bounded by the number of open descriptors.
    relays: Mutex<HashMap<RawFd, Arc<RelayState>>>,
}

impl RelayConnect {
    pub fn new(
        addr: Option<std::net::SocketAddr>,
        connect: Duration,
        first_byte: Duration,
        idle: Duration,
    ) -> RelayConnect {
        RelayConnect {
            addr,
            connect,
            first_byte,
            idle,
            relays: Mutex::new(HashMap::new()),
        }
    }

    /// The address to give Pingora for a relayed peer (see above); its port keeps the pool
    /// keys of providers apart along with their group key and SNI.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        let port = self.addr?.port();
        Some(std::net::SocketAddr::from(([0, 0, 0, 0], port)))
    }

    /// The relay behind the connection Pingora holds as `fd`.
    pub fn state(&self, fd: RawFd) -> Option<Arc<RelayState>> {
        self.relays
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&fd)
            .cloned()
    }
}

#[async_trait]
impl L4Connect for RelayConnect {
    async fn connect(&self, _peer: &SocketAddr) -> Result<Stream> {
        let Some(inet) = self.addr else {
            return Error::e_explain(ErrorType::ConnectError, "the provider has no address");
        };
        let upstream = match tokio::time::timeout(self.connect, TcpStream::connect(inet)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let kind = if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    ErrorType::ConnectRefused
                } else {
                    ErrorType::ConnectError
                };
                return Error::e_because(kind, format!("Fail to connect to {inet}"), e);
            }
            Err(_) => {
                return Error::e_explain(
                    ErrorType::ConnectTimedout,
                    format!("timeout {:?} connecting to server {inet}", self.connect),
                )
            }
        };
        upstream
            .set_nodelay(true)
            .map_err(|e| Error::because(ErrorType::ConnectError, "set_nodelay", e))?;
        let (ours, theirs) = UnixStream::pair()
            .map_err(|e| Error::because(ErrorType::SocketError, "socket pair", e))?;
        let state = Arc::new(RelayState::default());
        self.relays
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(ours.as_raw_fd(), state.clone());
        let (first_byte, idle) = (self.first_byte, self.idle);
        tokio::spawn(async move {
            if let Some(why) = relay(upstream, theirs, first_byte, idle).await {
                state.set(why);
            }
        });
        Ok(Stream::from(ours))
    }
}

/// Copies between Pingora's end and the provider until either side closes or a deadline
/// passes. A request written starts the first-byte clock; each piece of the answer restarts the
/// idle clock. Returns the deadline that passed, if one did.
async fn relay(
    upstream: TcpStream,
    local: UnixStream,
    first_byte: Duration,
    idle: Duration,
) -> Option<Expired> {
    let (mut up_read, mut up_write) = upstream.into_split();
    let (mut local_read, mut local_write) = local.into_split();
    let mut request = vec![0u8; 16 * 1024];
    let mut answer = vec![0u8; 16 * 1024];
    // The connection waits in Pingora's pool with no deadline until a request is written.
    let mut deadline: Option<(Instant, Expired)> = None;
    // Set from a request written until its answer's first body byte.
    let mut beginning: Option<Beginning> = None;
    loop {
        tokio::select! {
            n = local_read.read(&mut request) => {
                let n = match n {
                    Ok(n) if n > 0 => n,
                    _ => return None,
                };
                if up_write.write_all(&request[..n]).await.is_err() {
                    return None;
                }
                if beginning.is_none() && deadline.is_none_or(|d| d.1 == Expired::Idle) {
                    beginning = Some(Beginning::default());
                    deadline = Some((Instant::now() + first_byte, Expired::FirstByte));
                }
            }
            n = up_read.read(&mut answer) => {
                let n = match n {
                    Ok(n) if n > 0 => n,
                    _ => {
                        // Whatever was held goes on; Pingora sees the connection close.
                        if let Some(b) = beginning.take() {
                            let _ = local_write.write_all(&b.held).await;
                        }
                        return None;
                    }
                };
                let piece = &answer[..n];
                let out: std::borrow::Cow<[u8]> = match beginning.as_mut() {
                    None => piece.into(),
                    Some(b) => match b.push(piece) {
                        Some(out) => out.into(),
                        None => continue,
                    },
                };
                if local_write.write_all(&out).await.is_err() {
                    return None;
                }
                if beginning.as_ref().is_some_and(|b| b.begun) {
                    beginning = None;
                }
                if beginning.is_none() {
                    deadline = Some((Instant::now() + idle, Expired::Idle));
                }
            }
            _ = sleep_until(deadline.map_or_else(Instant::now, |d| d.0)), if deadline.is_some() => {
                return deadline.map(|d| d.1);
            }
        }
    }
}

/// The start of an answer, held until its body begins.
#[derive(Debug, Default)]
struct Beginning {
    held: Vec<u8>,
    /// Where the search for the end of the header block resumes.
    searched: usize,
    /// The end of a final answer's header block, once found.
    head_end: Option<usize>,
    /// The body has begun (or there is none): what is held goes on, and the idle clock runs.
    begun: bool,
}

/// Past this, a header block that has not ended is let through as it is.
const MAX_HELD: usize = 64 * 1024;

impl Beginning {
    /// Takes a piece of the answer; returns what to send on now, if anything.
    fn push(&mut self, piece: &[u8]) -> Option<Vec<u8>> {
        self.held.extend_from_slice(piece);
        if let Some(end) = self.head_end {
            if self.held.len() > end {
                self.begun = true;
                return Some(std::mem::take(&mut self.held));
            }
            return None;
        }
        let from = self.searched.saturating_sub(3);
        let Some(at) = memchr::memmem::find(&self.held[from..], b"\r\n\r\n") else {
            self.searched = self.held.len();
            if self.held.len() > MAX_HELD {
                self.begun = true;
                return Some(std::mem::take(&mut self.held));
            }
            return None;
        };
        // What is held always begins with the header block.
        let end = from + at + 4;
        let head = std::str::from_utf8(&self.held[..end]).unwrap_or_default();
        let status = head
            .split_ascii_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(200);
        if (100..200).contains(&status) {
            // An interim answer goes on at once; the real one follows.
            let rest = self.held.split_off(end);
            let mut out = std::mem::replace(&mut self.held, rest);
            self.searched = 0;
            if !self.held.is_empty() {
                if let Some(more) = self.push(&[]) {
                    out.extend(more);
                }
            }
            return Some(out);
        }
        let bodiless = matches!(status, 204 | 304)
            || head
                .split("\r\n")
                .any(|l| l.replace(' ', "").eq_ignore_ascii_case("content-length:0"));
        if bodiless || self.held.len() > end {
            self.begun = true;
            return Some(std::mem::take(&mut self.held));
        }
        self.head_end = Some(end);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn headers_are_held_until_the_body_begins() {
        let mut b = Beginning::default();
        assert_eq!(
            b.push(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r"),
            None
        );
        assert_eq!(b.push(b"\n\r\n"), None, "the header block alone is held");
        assert!(!b.begun);
        let out = b.push(b"data: x").unwrap();
        assert!(out.starts_with(b"HTTP/1.1 200") && out.ends_with(b"data: x"));
        assert!(b.begun);
        // No body to wait for.
        for head in [
            &b"HTTP/1.1 204 No Content\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ] {
            let mut b = Beginning::default();
            assert_eq!(b.push(head).as_deref(), Some(head));
            assert!(b.begun);
        }
        // A header block that arrives in pieces is still read from its status line.
        let mut b = Beginning::default();
        assert_eq!(b.push(b"HTTP/1.1 204 No"), None);
        assert!(b.push(b" Content\r\n\r\n").is_some());
        assert!(b.begun);
        // An interim answer goes on; the real one is held again.
        let mut b = Beginning::default();
        assert_eq!(
            b.push(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
                .as_deref(),
            Some(&b"HTTP/1.1 100 Continue\r\n\r\n"[..])
        );
        assert_eq!(b.push(b"a: b\r\n\r\n"), None);
        assert_eq!(
            b.push(b"x").as_deref(),
            Some(&b"HTTP/1.1 200 OK\r\na: b\r\n\r\nx"[..])
        );
    }

    #[tokio::test]
    async fn headers_then_silence_expire_the_first_byte_deadline() {
        let (c, mut s, mut server) = pair(300, 100).await;
        let state = c.state(s.as_raw_fd()).unwrap();
        s.write_all(b"request").await.unwrap();
        // A server answers once it has the request.
        let mut request = [0u8; 7];
        server.read_exact(&mut request).await.unwrap();
        server
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 256];
        // Nothing reaches Pingora, and the first-byte bound, not the idle one, ends it.
        assert_eq!(s.read(&mut buf).await.unwrap(), 0);
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert_eq!(state.expired(), Some(Expired::FirstByte));
    }

    async fn pair(first_byte_ms: u64, idle_ms: u64) -> (RelayConnect, Stream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let c = RelayConnect::new(
            Some(addr),
            Duration::from_secs(1),
            Duration::from_millis(first_byte_ms),
            Duration::from_millis(idle_ms),
        );
        let stream = c
            .connect(&SocketAddr::Inet(c.peer_addr().unwrap()))
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (c, stream, server)
    }

    #[tokio::test]
    async fn bytes_flow_both_ways() {
        let (_c, mut s, mut server) = pair(1000, 1000).await;
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\npong";
        server.write_all(answer).await.unwrap();
        let mut got = vec![0u8; answer.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, answer);
    }

    #[tokio::test]
    async fn a_silent_upstream_expires_the_first_byte_deadline() {
        let (c, mut s, _server) = pair(100, 5000).await;
        let state = c.state(s.as_raw_fd()).unwrap();
        s.write_all(b"request").await.unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 8];
        assert_eq!(s.read(&mut buf).await.unwrap(), 0, "closed, not answered");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(state.expired(), Some(Expired::FirstByte));
    }

    #[tokio::test]
    async fn gaps_longer_than_idle_expire_but_a_slow_first_byte_does_not() {
        let (c, mut s, mut server) = pair(2000, 150).await;
        let state = c.state(s.as_raw_fd()).unwrap();
        s.write_all(b"request").await.unwrap();
        let mut buf = [0u8; 16];
        // The first byte may take longer than the idle bound.
        tokio::time::sleep(Duration::from_millis(400)).await;
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\nx").await.unwrap();
        let mut got = vec![0u8; 20];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"HTTP/1.1 200 OK\r\n\r\nx");
        assert_eq!(state.expired(), None);
        // Then silence longer than the idle bound ends it.
        assert_eq!(s.read(&mut buf).await.unwrap(), 0);
        assert_eq!(state.expired(), Some(Expired::Idle));
    }

    #[tokio::test]
    async fn a_pooled_connection_has_no_deadline() {
        let (c, s, _server) = pair(50, 50).await;
        let state = c.state(s.as_raw_fd()).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(state.expired(), None);
    }

    #[tokio::test]
    async fn closing_pingoras_end_closes_the_upstream() {
        let (_c, s, mut server) = pair(1000, 1000).await;
        drop(s);
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(2), server.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0);
    }
}

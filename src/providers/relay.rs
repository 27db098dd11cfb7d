//! Upstream connections for streamed answers, with a first-byte and an idle deadline.
//!
//! Pingora applies one read timeout to every upstream read, but a stream needs two bounds: a
//! long wait for the answer to begin, then short silences between chunks. A stream's connection
//! therefore goes through a relay task: Pingora talks to one end of a socket pair, the relay
//! copies between the other end and the provider, and closes both when a deadline passes. It
//! records that it did, so the proxy can report a timeout rather than a closed connection.

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
#[derive(Debug)]
pub struct RelayConnect {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
    /// Live relays by the file descriptor Pingora holds. An entry is replaced when the
    /// descriptor is reused, so the map is bounded by the number of open descriptors.
    relays: Mutex<HashMap<RawFd, Arc<RelayState>>>,
}

impl RelayConnect {
    pub fn new(connect: Duration, first_byte: Duration, idle: Duration) -> RelayConnect {
        RelayConnect {
            connect,
            first_byte,
            idle,
            relays: Mutex::new(HashMap::new()),
        }
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
    async fn connect(&self, addr: &SocketAddr) -> Result<Stream> {
        let SocketAddr::Inet(inet) = addr else {
            return Error::e_explain(ErrorType::ConnectError, "relays connect over TCP only");
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
                deadline = Some((Instant::now() + first_byte, Expired::FirstByte));
            }
            n = up_read.read(&mut answer) => {
                let n = match n {
                    Ok(n) if n > 0 => n,
                    _ => return None,
                };
                if local_write.write_all(&answer[..n]).await.is_err() {
                    return None;
                }
                deadline = Some((Instant::now() + idle, Expired::Idle));
            }
            _ = sleep_until(deadline.map_or_else(Instant::now, |d| d.0)), if deadline.is_some() => {
                return deadline.map(|d| d.1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair(first_byte_ms: u64, idle_ms: u64) -> (RelayConnect, Stream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let c = RelayConnect::new(
            Duration::from_secs(1),
            Duration::from_millis(first_byte_ms),
            Duration::from_millis(idle_ms),
        );
        let stream = c.connect(&SocketAddr::Inet(addr)).await.unwrap();
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
        server.write_all(b"pong").await.unwrap();
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
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
        server.write_all(b"head").await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 4);
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

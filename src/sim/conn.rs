//! The connection's socket, with the `reset` and `stall` faults applied when hyper drops it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

const NORMAL: u8 = 0;
const RESET: u8 = 1;
const STALL: u8 = 2;

/// Shared between a connection's socket and its service.
#[derive(Default)]
pub(crate) struct ConnCtl(AtomicU8);

impl ConnCtl {
    /// On drop, close with an RST instead of a FIN.
    pub(crate) fn reset(&self) {
        self.0.store(RESET, Ordering::Relaxed);
    }

    /// On drop, keep the socket open (sending nothing) until the client closes it.
    pub(crate) fn stall(&self) {
        self.0.store(STALL, Ordering::Relaxed);
    }

    fn mode(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }
}

pub(crate) struct SimIo {
    stream: Option<TcpStream>,
    ctl: Arc<ConnCtl>,
}

impl SimIo {
    pub(crate) fn new(stream: TcpStream, ctl: Arc<ConnCtl>) -> SimIo {
        SimIo {
            stream: Some(stream),
            ctl,
        }
    }

    fn stream(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        self.stream
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

/// Reads and discards until the client closes.
async fn hold(mut stream: TcpStream) {
    let mut buf = [0u8; 4096];
    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
}

impl Drop for SimIo {
    fn drop(&mut self) {
        match self.ctl.mode() {
            RESET => {
                if let Some(s) = &self.stream {
                    if let Err(e) = s.set_zero_linger() {
                        log::debug!("sim: SO_LINGER failed: {e}");
                    }
                }
            }
            STALL => {
                if let (Some(s), Ok(rt)) =
                    (self.stream.take(), tokio::runtime::Handle::try_current())
                {
                    rt.spawn(hold(s));
                }
            }
            _ => {}
        }
    }
}

impl AsyncRead for SimIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for SimIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ctl.mode() != NORMAL {
            // No FIN: the drop decides how the connection ends.
            return Poll::Ready(Ok(()));
        }
        match this.stream() {
            Ok(s) => s.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

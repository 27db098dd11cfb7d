//! Response bodies: whole, or paced frame by frame with cancellation tracking.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use super::history::{Outcome, Record};

pub(crate) enum SimBody {
    Full(Option<Bytes>),
    Paced(Paced),
}

/// Frames sent one by one: the first after `delay`, the rest `gap` apart.
/// Sets the record's outcome when the last frame goes out, or `cancelled` if dropped before.
pub(crate) struct Paced {
    frames: VecDeque<Bytes>,
    delay: Duration,
    gap: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    exact_len: Option<u64>,
    track: Option<(Arc<Record>, Outcome)>,
}

impl SimBody {
    pub(crate) fn full(bytes: impl Into<Bytes>) -> SimBody {
        SimBody::Full(Some(bytes.into()))
    }

    pub(crate) fn paced(
        frames: Vec<Bytes>,
        delay: Duration,
        gap: Duration,
        exact_len: Option<u64>,
        rec: Arc<Record>,
        done: Outcome,
    ) -> SimBody {
        SimBody::Paced(Paced {
            frames: frames.into(),
            delay,
            gap,
            sleep: None,
            exact_len,
            track: Some((rec, done)),
        })
    }
}

impl Paced {
    fn finish(&mut self) {
        if let Some((rec, done)) = self.track.take() {
            rec.set_outcome(done);
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if self.frames.is_empty() {
            self.finish();
            return Poll::Ready(None);
        }
        if !self.delay.is_zero() {
            let delay = self.delay;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            ready!(sleep.as_mut().poll(cx));
            self.sleep = None;
        }
        self.delay = self.gap;
        let frame = self.frames.pop_front();
        if self.frames.is_empty() {
            self.finish();
        }
        Poll::Ready(frame)
    }
}

impl Drop for Paced {
    fn drop(&mut self) {
        if let Some((rec, _)) = self.track.take() {
            rec.set_outcome(Outcome::Cancelled);
        }
    }
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = match self.get_mut() {
            SimBody::Full(bytes) => Poll::Ready(bytes.take()),
            SimBody::Paced(paced) => paced.poll_next(cx),
        };
        next.map(|b| b.map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, SimBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            SimBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            SimBody::Paced(p) => p.exact_len.map(SizeHint::with_exact).unwrap_or_default(),
        }
    }
}

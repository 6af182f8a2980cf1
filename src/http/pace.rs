//! Pacing rules for the two directions of a connection, so a client cannot hold one open by
//! moving too little data: a request body must keep a minimum rate while the service waits for
//! it (a trickle of one byte every few seconds passes any idle timeout, and would hold an upload
//! slot for ever), and a response must be read by the client without long pauses.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The rate rule, as pure accounting: the time spent waiting for the client (never the time
/// the service itself took between reads, say while a storage part was written) is summed
/// into windows, and each full window must have brought at least `min_rate` bytes per second.
#[derive(Debug, Clone)]
pub struct Pace {
    window: Duration,
    min_bytes_per_sec: u64,
    waited: Duration,
    bytes: u64,
}

/// A body slower than the rate rule allows.
#[derive(Debug, thiserror::Error)]
#[error("the request body arrived slower than {min_bytes_per_sec} bytes/s over {window:?} of waiting")]
pub struct TooSlow {
    pub min_bytes_per_sec: u64,
    pub window: Duration,
}

impl Pace {
    pub fn new(window: Duration, min_bytes_per_sec: u64) -> Self {
        Self {
            window,
            min_bytes_per_sec,
            waited: Duration::ZERO,
            bytes: 0,
        }
    }

    /// Records `bytes` that arrived after the service had waited `waited` for them.
    pub fn arrived(&mut self, waited: Duration, bytes: u64) -> Result<(), TooSlow> {
        self.waited += waited;
        self.bytes = self.bytes.saturating_add(bytes);
        if self.waited < self.window {
            return Ok(());
        }
        let needed = u128::from(self.min_bytes_per_sec) * self.waited.as_millis() / 1000;
        if u128::from(self.bytes) < needed {
            return Err(TooSlow {
                min_bytes_per_sec: self.min_bytes_per_sec,
                window: self.window,
            });
        }
        self.waited = Duration::ZERO;
        self.bytes = 0;
        Ok(())
    }
}

pin_project_lite::pin_project! {
    /// A request body held to a [`Pace`] (the idle timeout between reads is the body inside's).
    pub struct PacedBody<B> {
        #[pin]
        inner: B,
        pace: Pace,
        waiting_since: Option<Instant>,
    }
}

impl<B> PacedBody<B> {
    pub fn new(inner: B, pace: Pace) -> Self {
        Self {
            inner,
            pace,
            waiting_since: None,
        }
    }
}

impl<B> Body for PacedBody<B>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        use hyper::body::Buf as _;
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        let now = Instant::now();
        let Poll::Ready(frame) = polled else {
            this.waiting_since.get_or_insert(now);
            return Poll::Pending;
        };
        let waited = this.waiting_since.take().map_or(Duration::ZERO, |since| now - since);
        match frame {
            Some(Ok(frame)) => {
                let bytes = frame.data_ref().map_or(0, |data| data.remaining() as u64);
                this.pace.arrived(waited, bytes)?;
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection whose writes may not stay blocked longer than `limit`: a client that stops
/// reading its response (a download it never consumes) is cut instead of holding the
/// connection, its slot and whatever the response holds.
pub struct WriteIdle<S> {
    inner: S,
    limit: Duration,
    blocked: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteIdle<S> {
    pub fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            blocked: None,
        }
    }
}

impl<S: AsyncWrite + Unpin> WriteIdle<S> {
    /// Runs one write-side poll, arming the timer when it blocks and disarming it when it
    /// completes.
    fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if let Poll::Ready(done) = poll(Pin::new(&mut self.inner), cx) {
            self.blocked = None;
            return Poll::Ready(done);
        }
        let limit = self.limit;
        let blocked = self.blocked.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        ready!(blocked.as_mut().poll(cx));
        Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client stopped reading the response",
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteIdle<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteIdle<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.guard(cx, |inner, cx| inner.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.guard(cx, |inner, cx| inner.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.guard(cx, AsyncWrite::poll_flush)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.guard(cx, AsyncWrite::poll_shutdown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(30);

    #[test]
    fn a_body_at_the_rate_passes_window_after_window() {
        let mut pace = Pace::new(WINDOW, 500);
        for _ in 0..100 {
            pace.arrived(Duration::from_secs(1), 500).unwrap();
        }
    }

    #[test]
    fn a_trickle_is_caught_once_a_window_of_waiting_is_full() {
        let mut pace = Pace::new(WINDOW, 500);
        pace.arrived(Duration::from_secs(29), 1).unwrap();
        pace.arrived(Duration::from_secs(29), 1).unwrap_err();
    }

    #[test]
    fn time_the_service_spent_elsewhere_is_not_held_against_the_client() {
        let mut pace = Pace::new(WINDOW, 500);
        // Each piece was already waiting in the socket when the service came back for it.
        for _ in 0..1000 {
            pace.arrived(Duration::ZERO, 1).unwrap();
        }
    }

    #[test]
    fn a_zero_rate_accepts_any_moving_body() {
        let mut pace = Pace::new(WINDOW, 0);
        pace.arrived(Duration::from_secs(29), 1).unwrap();
        pace.arrived(Duration::from_secs(29), 1).unwrap();
    }

    #[test]
    fn a_burst_covers_the_slow_start_of_its_window() {
        let mut pace = Pace::new(WINDOW, 500);
        pace.arrived(Duration::from_secs(20), 10).unwrap();
        pace.arrived(Duration::from_secs(10), 15_000).unwrap();
        pace.arrived(Duration::from_secs(30), 14_999).unwrap_err();
    }

    #[tokio::test]
    async fn a_write_blocked_past_the_limit_fails_and_a_moving_one_does_not() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (near, mut far) = tokio::io::duplex(16);
        let mut guarded = WriteIdle::new(near, Duration::from_secs(2));
        let mut reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                far.read_exact(&mut buf).await.unwrap();
            }
            far
        });
        guarded.write_all(&[7u8; 80]).await.unwrap();
        let _far = (&mut reader).await.unwrap();
        let blocked = guarded.write_all(&[7u8; 64]).await.unwrap_err();
        assert_eq!(blocked.kind(), std::io::ErrorKind::TimedOut);
    }
}

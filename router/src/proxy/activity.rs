//! Client connection timeouts, two-phase like a careful HTTP server should have them.
//!
//! Between requests a keep-alive connection may sit idle for `frontend_idle_timeout` (long, so a load balancer in
//! front never reuses a connection the router just closed). Once the first byte of a request head arrives, the
//! rest of the head must follow within `read_header_timeout` (short, so slow-loris clients cannot hold
//! connections). While a request is being served there is no frontend timeout; backend timeouts apply instead.
//! An upgraded connection (WebSocket) is a tunnel with no timeout.
//!
//! hyper's own header timer cannot tell idle from slow, so the phases are tracked here: the request handler
//! marks a request busy, its response body marks it done, and [`TimedIo`] arms a single lazily-reset timer only
//! while the connection is waiting for a request.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// What the request side tells the IO side about a connection.
#[derive(Debug, Default)]
pub struct Activity {
    busy: AtomicU32,
    completed: AtomicU32,
    tunnel: AtomicBool,
    multiplexed: AtomicBool,
}

impl Activity {
    /// Marks a request as being served until the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> BusyGuard {
        self.busy.fetch_add(1, Ordering::Relaxed);
        BusyGuard(Arc::clone(self))
    }

    /// Marks the connection as a tunnel: no frontend timeouts from now on.
    pub fn become_tunnel(&self) {
        self.tunnel.store(true, Ordering::Relaxed);
    }

    /// Marks the connection as HTTP/2: between requests it carries control frames (pings, window updates) that
    /// are not the start of a request, so only the idle timeout applies once the first request has been served.
    pub fn become_multiplexed(&self) {
        self.multiplexed.store(true, Ordering::Relaxed);
    }
}

/// Keeps a connection in the busy phase while alive.
#[derive(Debug)]
pub struct BusyGuard(Arc<Activity>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.completed.fetch_add(1, Ordering::Relaxed);
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Timeouts for the waiting phases.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From the first byte of a request head to the whole head (and from accept to the first head).
    pub header: Duration,
    /// Between requests on a keep-alive connection.
    pub idle: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Waiting {
    /// Completed-request count when this wait began; a change means a new wait.
    generation: u32,
    since: Instant,
    head_started: Option<Instant>,
}

/// A client stream that times out while waiting for a request, and never while serving one.
pub struct TimedIo<T> {
    inner: T,
    activity: Arc<Activity>,
    timeouts: Timeouts,
    waiting: Option<Waiting>,
    timer: Pin<Box<Sleep>>,
    armed: Instant,
}

impl<T> TimedIo<T> {
    /// Wraps a freshly accepted stream.
    pub fn new(inner: T, activity: Arc<Activity>, timeouts: Timeouts) -> Self {
        let now = Instant::now();
        let first_deadline = now + timeouts.header;
        Self {
            inner,
            activity,
            timeouts,
            waiting: Some(Waiting { generation: 0, since: now, head_started: None }),
            timer: Box::pin(tokio::time::sleep_until(first_deadline)),
            armed: first_deadline,
        }
    }

    fn deadline(&self, waiting: &Waiting) -> Instant {
        match waiting.head_started {
            Some(started) => started + self.timeouts.header,
            // The first request gets the header timeout from accept; later ones the idle timeout.
            None if waiting.generation == 0 => waiting.since + self.timeouts.header,
            None => waiting.since + self.timeouts.idle,
        }
    }

    /// Checks the timer while a read is pending. Resets it only when the deadline moved earlier than what is
    /// armed; a timer that fires early is simply re-armed, so steady keep-alive traffic costs no timer work.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some(waiting) = self.waiting else { return Poll::Pending };
        let deadline = self.deadline(&waiting);
        if deadline < self.armed {
            self.timer.as_mut().reset(deadline);
            self.armed = deadline;
        }
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() >= deadline {
                let phase = if waiting.head_started.is_some() { "request head" } else { "next request" };
                return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, format!("client too slow: timed out waiting for the {phase}")));
            }
            self.timer.as_mut().reset(deadline);
            self.armed = deadline;
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let busy = this.activity.busy.load(Ordering::Relaxed) > 0 || this.activity.tunnel.load(Ordering::Relaxed);
        if busy {
            this.waiting = None;
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let generation = this.activity.completed.load(Ordering::Relaxed);
        if this.waiting.is_none_or(|w| w.generation != generation) {
            this.waiting = Some(Waiting { generation, since: Instant::now(), head_started: None });
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                let control_frames = generation > 0 && this.activity.multiplexed.load(Ordering::Relaxed);
                if buf.filled().len() > before
                    && !control_frames
                    && let Some(waiting) = this.waiting.as_mut() {
                        waiting.head_started.get_or_insert_with(Instant::now);
                    }
                Poll::Ready(result)
            }
            Poll::Pending => match this.poll_deadline(cx) {
                Poll::Ready(err) => Poll::Ready(Err(err)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    fn timeouts() -> Timeouts {
        Timeouts { header: Duration::from_millis(100), idle: Duration::from_millis(1000) }
    }

    #[tokio::test(start_paused = true)]
    async fn silent_new_connection_times_out_after_the_header_timeout() {
        let (client, server) = duplex(64);
        let mut io = TimedIo::new(server, Arc::new(Activity::default()), timeouts());
        let started = Instant::now();
        let mut buf = [0u8; 8];
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_between_requests_gets_the_idle_timeout() {
        let (mut client, server) = duplex(64);
        let activity = Arc::new(Activity::default());
        let mut io = TimedIo::new(server, Arc::clone(&activity), timeouts());
        client.write_all(b"GET").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(io.read(&mut buf).await.unwrap(), 3);
        // A request is served, then completes.
        drop(activity.begin());
        let started = Instant::now();
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_millis(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_head_gets_the_header_timeout() {
        let (mut client, server) = duplex(64);
        let activity = Arc::new(Activity::default());
        let mut io = TimedIo::new(server, Arc::clone(&activity), timeouts());
        drop(activity.begin());
        let mut buf = [0u8; 8];
        client.write_all(b"GE").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 2);
        let started = Instant::now();
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn multiplexed_connections_wait_idle_between_requests_even_with_traffic() {
        let (mut client, server) = duplex(64);
        let activity = Arc::new(Activity::default());
        activity.become_multiplexed();
        let mut io = TimedIo::new(server, Arc::clone(&activity), timeouts());
        drop(activity.begin());
        let mut buf = [0u8; 8];
        client.write_all(b"ping").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 4);
        let started = Instant::now();
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_millis(1000), "the idle timeout, not the header timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn busy_and_tunnel_connections_never_time_out() {
        let (mut client, server) = duplex(64);
        let activity = Arc::new(Activity::default());
        let mut io = TimedIo::new(server, Arc::clone(&activity), timeouts());
        let guard = activity.begin();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            let n = io.read(&mut buf).await.unwrap();
            (n, io)
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        client.write_all(b"body").await.unwrap();
        let (n, mut io) = reader.await.unwrap();
        assert_eq!(n, 4);
        activity.become_tunnel();
        drop(guard);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            io.read(&mut buf).await.unwrap()
        });
        tokio::time::sleep(Duration::from_secs(3600)).await;
        client.write_all(b"ws").await.unwrap();
        assert_eq!(reader.await.unwrap(), 2);
    }
}

//! The connection side of the server: the accept loop ([`serve`]), a slot
//! per connection under `--web.max-connections`, the watchdog that closes a
//! connection whose handshake, headers or idleness outlast their bounds or
//! whose client stopped reading, and the deadline on request bodies. The
//! routes (`super::app`) know nothing of it.

use crate::metrics::ServerStats;
use crate::webconfig::{Limits, MIN_HEADER_BYTES};
use axum::body::Body;
use axum::http::Request;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tower::ServiceExt;

/// Counts a connection open while it lives.
struct OpenConnection(Arc<ServerStats>);

impl OpenConnection {
    fn new(stats: &Arc<ServerStats>) -> Self {
        stats.opened();
        OpenConnection(stats.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.closed();
    }
}

/// How long a connection past the cap waits for a slot before it is closed.
const SLOT_WAIT: Duration = Duration::from_millis(250);

/// HTTP/2 flow-control windows: what a peer may send ahead of a stream's
/// reader, and of all of a connection's.
const H2_STREAM_WINDOW: u32 = 256 * 1024;
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;

/// How long connections may finish their requests after a stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serve `app` on `listener`, over TLS when `tls` is given, until `stop`;
/// then let open connections finish for up to five seconds.
///
/// One accept loop for both: a connection takes a slot of
/// `max_connections` (none free within 250 ms: closed and counted), and a
/// watchdog closes it when its handshake, headers or idleness outlast
/// their bounds. Running out of file descriptors pauses accepting briefly;
/// the kernel keeps the waiting connections until descriptors free up.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    stats: Arc<ServerStats>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // The watchdog bounds header reads (hyper's own timer would also cut
    // idle keep-alive connections at the header bound).
    // Headers are bounded in bytes too (hyper's default HTTP/1 buffer is
    // about 400 KB a connection); HTTP/2 streams and flow-control windows
    // so that one connection cannot hold more than a few MiB of a body.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.max_h2_streams)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_send_buf_size(H2_STREAM_WINDOW as usize);
    let builder = Arc::new(builder);
    let mut conns = tokio::task::JoinSet::new();
    let mut refused = Throttled::new("connections refused: --web.max-connections reached");
    let mut accept_errors = AcceptErrors::default();
    loop {
        while conns.try_join_next().is_some() {}
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                accept_errors.recovered();
                stream
            }
            Err(e) => {
                if let Some(pause) = accept_errors.failed(&e) {
                    tokio::time::sleep(pause).await;
                }
                continue;
            }
        };
        // At the cap, the oldest waiting connection gets a short, bounded
        // wait for a slot (failed logins close theirs, see webconfig), so
        // that slots go first come, first served rather than to whoever
        // reconnects fastest; then it is closed.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(s) => Some(s),
            Err(_) => tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                s = tokio::time::timeout(SLOT_WAIT, slots.clone().acquire_owned()) => s.ok().and_then(Result::ok),
            },
        };
        let Some(slot) = slot else {
            stats.refused("max_connections");
            refused.add();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            app: app.clone(),
            builder: builder.clone(),
            limits,
            stop: stop.clone(),
            stats: stats.clone(),
        };
        let tls = tls.clone();
        let open = OpenConnection::new(&stats);
        conns.spawn(async move {
            let _slot = (slot, open);
            match tls {
                None => conn.run(stream).await,
                Some(acceptor) => {
                    let handshake = acceptor.accept(stream);
                    match tokio::time::timeout(limits.read_header_timeout, handshake).await {
                        Ok(Ok(stream)) => conn.run(stream).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => {
                            conn.stats.refused("header_timeout");
                            tracing::debug!("TLS handshake timed out");
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        tracing::warn!(
            connections = conns.len(),
            "closing connections still open after the shutdown grace"
        );
    }
}

/// Accept failures: those of one connection (reset before it was
/// accepted) are skipped; a lack of resources (file descriptors, memory)
/// pauses accepting, 5 ms doubling to 1 s, logged once per episode.
#[derive(Default)]
struct AcceptErrors {
    failures: u64,
    pause: Duration,
}

impl AcceptErrors {
    fn failed(&mut self, e: &std::io::Error) -> Option<Duration> {
        use std::io::ErrorKind::*;
        if matches!(
            e.kind(),
            ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
        ) {
            return None;
        }
        if self.failures == 0 {
            tracing::warn!(error = %e, "cannot accept connections (raise the open-files limit, e.g. LimitNOFILE, or lower --web.max-connections); retrying");
        }
        self.failures += 1;
        self.pause = (self.pause * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
        Some(self.pause)
    }

    fn recovered(&mut self) {
        if self.failures > 0 {
            tracing::info!(failures = self.failures, "accepting connections again");
            *self = AcceptErrors::default();
        }
    }
}

/// A count logged when it starts and then at most every ten seconds.
struct Throttled {
    what: &'static str,
    count: u64,
    last_log: Option<tokio::time::Instant>,
}

impl Throttled {
    fn new(what: &'static str) -> Self {
        Throttled {
            what,
            count: 0,
            last_log: None,
        }
    }

    fn add(&mut self) {
        self.count += 1;
        let now = tokio::time::Instant::now();
        if self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
        {
            tracing::warn!(total = self.count, "{}", self.what);
            self.last_log = Some(now);
        }
    }
}

/// One accepted connection: served until it ends, its watchdog fires, or
/// the server stops (then gracefully: the current request finishes).
struct Connection {
    app: Router,
    builder: Arc<hyper_util::server::conn::auto::Builder<TokioExecutor>>,
    limits: Limits,
    stop: watch::Receiver<bool>,
    stats: Arc<ServerStats>,
}

impl Connection {
    async fn run<S>(mut self, stream: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let watch = Arc::new(Activity::new());
        let io = TokioIo::new(Watched {
            inner: stream,
            activity: watch.clone(),
        });
        let (app, activity, body_timeout) = (
            self.app.clone(),
            watch.clone(),
            self.limits.read_body_timeout,
        );
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let handling = Handling::start(activity.clone());
            let app = app.clone();
            async move {
                let deadline = tokio::time::Instant::now() + body_timeout;
                let req = req.map(|b| Body::new(DeadlineBody::new(b, deadline)));
                let Ok(resp) = app.oneshot(req).await;
                let sending = handling.responded();
                Ok::<_, Infallible>(resp.map(|b| {
                    Body::new(Sending {
                        inner: b,
                        _guard: sending,
                    })
                }))
            }
        });
        let conn = self.builder.serve_connection(io, service);
        tokio::pin!(conn);
        let mut stopping = false;
        loop {
            tokio::select! {
                _ = conn.as_mut() => return,
                why = watch.expired(&self.limits) => {
                    self.stats.refused(why);
                    tracing::debug!(reason = why, "closing a connection");
                    return;
                }
                _ = self.stop.wait_for(|s| *s), if !stopping => {
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// What a connection is doing, for its watchdog.
struct Activity {
    state: std::sync::Mutex<ActivityState>,
    /// Wakes the watchdog when its deadline may have come closer.
    changed: tokio::sync::Notify,
}

struct ActivityState {
    /// Requests whose handler runs (reading the body included).
    handling: usize,
    /// Responses being written.
    sending: usize,
    /// Since when (the oldest of them).
    sending_since: Instant,
    /// Since when neither is the case.
    quiet_since: Instant,
    /// The first byte read while quiet: a request head has begun.
    head_started: Option<Instant>,
    /// A request was answered: the wait for the next is keep-alive idleness.
    answered: bool,
    last_write: Instant,
    /// Since when the connection has bytes it could not write (a write
    /// refused or cut short, until a flush completed): hyper may have
    /// finished with a response's body long before the client read it.
    backlog_since: Option<Instant>,
}

impl Activity {
    fn new() -> Self {
        let now = Instant::now();
        Activity {
            state: std::sync::Mutex::new(ActivityState {
                handling: 0,
                sending: 0,
                sending_since: now,
                quiet_since: now,
                head_started: None,
                answered: false,
                last_write: now,
                backlog_since: None,
            }),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut ActivityState)) {
        f(&mut self.lock());
        self.changed.notify_one();
    }

    /// When the connection is to be closed, and why; `None` while a
    /// handler runs and nothing is being written (its body and work have
    /// their own bounds).
    fn deadline(&self, l: &Limits) -> Option<(Instant, &'static str)> {
        let s = self.lock();
        // No write for the idle timeout, or a response (its body, or the
        // bytes it left unwritten) longer than the write timeout: a trickle
        // moves neither start. This holds while a handler runs too: hyper
        // runs the next pipelined request's handler while the last
        // response's bytes wait for the client.
        let writing = (s.sending > 0 || s.backlog_since.is_some()).then(|| {
            let mut at = s.last_write + l.idle_timeout;
            if s.sending > 0 {
                at = at.min(s.sending_since + l.write_timeout);
            }
            if let Some(t) = s.backlog_since {
                at = at.min(t + l.write_timeout);
            }
            (at, "response_stalled")
        });
        if s.handling > 0 || writing.is_some() {
            writing
        } else if !s.answered {
            Some((s.quiet_since + l.read_header_timeout, "header_timeout"))
        } else if let Some(t) = s.head_started {
            Some((t + l.read_header_timeout, "header_timeout"))
        } else {
            Some((s.quiet_since + l.idle_timeout, "idle_timeout"))
        }
    }

    /// A write of `wanted` bytes returned `r`: a refused or short one
    /// starts a backlog (the deadline may come closer: the watchdog is told).
    fn wrote(&self, r: &Poll<std::io::Result<usize>>, wanted: usize) {
        let now = Instant::now();
        let mut s = self.lock();
        let short = match r {
            Poll::Ready(Ok(n)) => {
                if *n > 0 {
                    s.last_write = now;
                }
                *n < wanted
            }
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
        };
        if short && s.backlog_since.is_none() {
            s.backlog_since = Some(now);
            drop(s);
            self.changed.notify_one();
        }
    }

    /// Resolves when the current deadline passes.
    async fn expired(&self, l: &Limits) -> &'static str {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.deadline(l) {
                None => changed.await,
                Some((at, why)) => {
                    if at <= Instant::now() {
                        return why;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = changed => {}
                    }
                }
            }
        }
    }
}

/// A request being handled; dropping it without a response (the
/// connection went away) ends it too.
struct Handling(Option<Arc<Activity>>);

impl Handling {
    fn start(a: Arc<Activity>) -> Self {
        a.update(|s| s.handling += 1);
        Handling(Some(a))
    }

    /// The handler answered: the response is being written.
    fn responded(mut self) -> SendingGuard {
        let a = self.0.take().expect("a running handler");
        a.update(|s| {
            let now = Instant::now();
            s.handling -= 1;
            if s.sending == 0 {
                s.sending_since = now;
            }
            s.sending += 1;
            s.last_write = now;
        });
        SendingGuard(a)
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        if let Some(a) = self.0.take() {
            a.update(|s| {
                s.handling -= 1;
                s.quiet(Instant::now());
            });
        }
    }
}

impl ActivityState {
    fn quiet(&mut self, now: Instant) {
        if self.handling == 0 && self.sending == 0 {
            self.quiet_since = now;
            self.head_started = None;
        }
    }
}

/// A response being written; dropped when hyper has sent it (or gave up).
struct SendingGuard(Arc<Activity>);

impl Drop for SendingGuard {
    fn drop(&mut self) {
        self.0.update(|s| {
            s.sending -= 1;
            s.answered = true;
            s.quiet(Instant::now());
        });
    }
}

/// The response body, carrying its [`SendingGuard`].
struct Sending {
    inner: Body,
    _guard: SendingGuard,
}

impl http_body::Body for Sending {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's bytes, noting reads and writes for the watchdog.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let mut s = self.activity.lock();
            if s.handling == 0 && s.sending == 0 && s.head_started.is_none() {
                s.head_started = Some(Instant::now());
                drop(s);
                self.activity.changed.notify_one();
            }
        }
        r
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.activity.wrote(&r, buf.len());
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.activity
            .wrote(&r, bufs.iter().map(|b| b.len()).sum::<usize>());
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            // hyper flushes once its buffer is written: nothing is left.
            self.activity.lock().backlog_since = None;
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A request body that fails with [`BodyTimeout`] once its deadline
/// passes: a sender that stops sending cannot hold a handler.
struct DeadlineBody {
    inner: hyper::body::Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl DeadlineBody {
    fn new(inner: hyper::body::Incoming, at: tokio::time::Instant) -> Self {
        DeadlineBody {
            inner,
            deadline: Box::pin(tokio::time::sleep_until(at)),
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = bytes::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A request body did not arrive within `--web.read-body-timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within --web.read-body-timeout")]
pub struct BodyTimeout;

impl BodyTimeout {
    /// Whether a body's read error is this timeout.
    pub fn caused(e: &(dyn std::error::Error + 'static)) -> bool {
        let mut cur = Some(e);
        while let Some(e) = cur {
            if e.is::<BodyTimeout>() {
                return true;
            }
            cur = e.source();
        }
        false
    }
}

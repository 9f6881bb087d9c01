//! One served connection: hyper's h1/h2 connection under the watchdog (`watch/`), its
//! signals (drain, shed, close), and the answer to a connection refused as abusive.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::io::ClientIo;
use super::watch::{self, ConnWatch, Signal, Verdict};
use super::{ABUSE_GRACE, ConnInfo, Handler, Response, Shared};

/// The answer to a stream opened after its connection cancelled too many (GOAWAY is on its way).
pub(super) fn abusive_refusal() -> Response {
    use http_body_util::BodyExt;
    crate::error::error_response(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "this connection cancelled too many streams and is closing; open a new one",
        "server_error",
        "too_many_cancelled_streams",
    )
    .map(|b| b.map_err(Into::into).boxed_unsync())
}

pub(super) struct Connection<H> {
    pub(super) handler: H,
    pub(super) shared: Arc<Shared>,
    pub(super) peer: SocketAddr,
}

impl<H: Handler> Connection<H> {
    pub(super) async fn run(self, tcp: TcpStream, watch: Arc<ConnWatch>) {
        let info = ConnInfo {
            peer: self.peer,
            tls: self.shared.tls.is_some(),
        };
        let handler = self.handler.clone();
        let conn_watch = watch.clone();
        // Every response body holds its request as in flight until it ends; HTTP/2 bodies are
        // also watched for a stalled stream (`watch::Watched`).
        let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let handler = handler.clone();
            let watch = conn_watch.clone();
            let guard = watch.request();
            let h2 = req.version() == http::Version::HTTP_2;
            async move {
                // Asked when the stream's task first runs, not as hyper accepts it: the resets
                // that arrived in the same read as this stream's HEADERS woke their streams'
                // tasks first, so their cancels are counted by now.
                if watch.abusive() {
                    let resp = abusive_refusal();
                    return Ok(resp.map(|b| watch.watch_body(b, guard, h2)));
                }
                // Boxed once: hyper moves the service future it is given (into its in-flight
                // slot), and the request's whole pipeline state is several KiB. The box is
                // allocated first and the future written into it, so that it is built in place
                // rather than on the stack and then copied (`Box::pin(f)` evaluates `f` first).
                let slot = Box::new_uninit();
                let resp = Box::into_pin(Box::write(slot, handler.handle(req, info))).await;
                Ok::<_, std::convert::Infallible>(resp.map(|b| watch.watch_body(b, guard, h2)))
            }
        });
        match self.shared.tls.clone() {
            Some(acceptor) => {
                let deadline = self
                    .shared
                    .tls_handshake
                    .min(self.shared.limits.client_header);
                let shed = std::future::poll_fn(|cx| watch.poll_shed(cx));
                let handshake = tokio::select! {
                    h = tokio::time::timeout(deadline, acceptor.accept(tcp)) => h,
                    () = shed => {
                        tracing::debug!(peer = %self.peer, "shed during the TLS handshake (max_connections)");
                        return;
                    }
                };
                match handshake {
                    Ok(Ok(stream)) => {
                        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                        let io =
                            ClientIo::new(stream, watch.clone(), self.handler.clone(), true, h2);
                        self.serve(io, service, watch).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        tracing::debug!(peer = %self.peer, "TLS handshake timed out");
                    }
                }
            }
            None => {
                let io = ClientIo::new(tcp, watch.clone(), self.handler.clone(), false, false);
                self.serve(io, service, watch).await;
            }
        }
    }

    /// Drives one connection under its watchdog and the server's drain signal. Each wake-up
    /// polls the connection, then the watchdog's signal bits, then one timer (the next check, or
    /// the hard stop after an abuse GOAWAY, whichever is first).
    async fn serve<I, S>(&self, io: ClientIo<I, H>, service: S, watch: Arc<ConnWatch>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<
                http::Request<Incoming>,
                Response = http::Response<watch::Watched>,
                Error = std::convert::Infallible,
            > + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        enum Event<E> {
            Ended(Result<(), E>),
            Raised(u8),
            Due,
        }
        let conn = self
            .shared
            .builder
            .serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let mut closing = false;
        let mut hard_stop: Option<tokio::time::Instant> = None;
        let mut next = tokio::time::Instant::now();
        let timer = tokio::time::sleep_until(next);
        tokio::pin!(timer);
        loop {
            let event = std::future::poll_fn(|cx| {
                if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                    return Poll::Ready(Event::Ended(result));
                }
                match watch.poll_signals(cx) {
                    0 => {}
                    raised => return Poll::Ready(Event::Raised(raised)),
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Event::Due),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            let now = tokio::time::Instant::now();
            match event {
                Event::Ended(result) => {
                    if let Err(e) = result {
                        tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                Event::Raised(raised) => {
                    if Signal::Drain.is_in(raised) && !closing {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    if Signal::Abuse.is_in(raised) && hard_stop.is_none() {
                        tracing::warn!(peer = %self.peer, "client cancelled too many streams; GOAWAY");
                        if !closing {
                            conn.as_mut().graceful_shutdown();
                            closing = true;
                        }
                        hard_stop = Some(now + ABUSE_GRACE);
                    }
                    if Signal::Rearm.is_in(raised) {
                        next = now;
                    }
                    if Signal::Shed.is_in(raised) && watch.accept_shed() {
                        tracing::debug!(peer = %self.peer, "connection shed (max_connections)");
                        return;
                    }
                }
                Event::Due if hard_stop.is_some_and(|t| now >= t) => return,
                Event::Due => {
                    let (verdict, at) = watch.check();
                    next = at.into();
                    match verdict {
                        Verdict::Continue => {}
                        Verdict::Close(why) => {
                            tracing::debug!(peer = %self.peer, why, "connection closed");
                            return;
                        }
                        Verdict::Drain(why) if !closing => {
                            tracing::debug!(peer = %self.peer, why, "connection closing");
                            conn.as_mut().graceful_shutdown();
                            closing = true;
                        }
                        Verdict::Drain(_) => {}
                    }
                }
            }
            let due = hard_stop.map_or(next, |stop| stop.min(next));
            if timer.deadline() != due {
                timer.as_mut().reset(due);
            }
        }
    }
}

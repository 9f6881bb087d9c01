//! The connection watchdog: every timer a client connection is bounded by, whatever its protocol.
//!
//! hyper could time HTTP/1 heads itself (with a boxed timer per request, which also cuts idle
//! keep-alive connections at the head limit), but nothing of hyper's bounds the time before
//! protocol detection, an HTTP/2 client that never sends a request, an idle HTTP/2 connection, a
//! client that stops reading, or an HTTP/2 stream whose flow-control window stays at zero. One
//! [`ConnWatch`] per connection records what the connection is doing (from the service, the
//! response bodies and the socket wrapper), and the connection task asks it, at the next deadline,
//! what to do ([`Verdict`]):
//!
//! | rule | deadline | verdict |
//! |---|---|---|
//! | no complete request head yet | accept + `client_header` | close |
//! | a later HTTP/1 head not complete | its first byte + `client_header` | close |
//! | nothing could be written to the socket | first blocked write + `client_write` | close |
//! | no request in flight | end of the last one + `client_idle` | graceful close (h1) / GOAWAY (h2) |
//! | an HTTP/2 response body hyper stopped taking | last frame handed over + `client_write` | cancel that exchange |
//! | too many streams cancelled by the client | token bucket of `http2_max_cancels` | GOAWAY |
//! | `max_connections` reached and a new client waits | at once | close the best [`ConnWatch::shed_rank`] (no request in flight) |
//!
//! Cancelling an exchange drops its response body, which drops the upstream request (the paid
//! generation stops); the client's stream ends with an error the next time hyper polls it.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;

mod stream;

pub use self::stream::Watched;
use self::stream::{Stream, decode};

/// The limits one connection is held to (from `server:` at bind time).
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub client_header: Duration,
    pub client_idle: Duration,
    pub client_write: Duration,
    /// The upstream `idle` limit: a body not polled for `idle + client_write` while it waits on
    /// the upstream can only be stuck behind the client.
    pub upstream_idle: Duration,
    pub max_cancels: u32,
}

/// What the connection task should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing is due.
    Continue,
    /// Drop the connection at once.
    Close(&'static str),
    /// Finish in-flight requests, then close (HTTP/2: GOAWAY).
    Drain(&'static str),
}

/// Shared between the connection task, its service, its response bodies and its socket.
pub struct ConnWatch {
    start: Instant,
    limits: ConnLimits,
    /// A complete request head has been received (the service was called).
    seen_request: AtomicBool,
    /// Requests whose response has not finished.
    active: AtomicUsize,
    /// The client cancelled past `http2_max_cancels`: no new stream reaches a handler.
    abusive: AtomicBool,
    /// When the last request finished (ms since `start`).
    idle_since: AtomicU64,
    /// When a socket write first returned `Pending` (ms since `start`, plus 1; 0 = not blocked).
    write_blocked_since: AtomicU64,
    /// When the first byte of an HTTP/1 head arrived while no request was in flight (ms since
    /// `start`, plus 1; 0 = none). Cleared when the head is complete.
    head_since: AtomicU64,
    cancels: Mutex<Bucket>,
    /// When the connection task will next call [`ConnWatch::check`] (ms since `start`).
    next_check: AtomicU64,
    /// Events for the connection task ([`Signal`]), raised from anywhere.
    raised: AtomicU8,
    /// A new client's accept loop chose this connection to shed ([`ConnWatch::claim_shed`]): its
    /// slot is spoken for, so no other waiting client chooses it too.
    shed_claimed: AtomicBool,
    /// The connection task, woken when a signal is raised.
    task: AtomicWaker,
    streams: Mutex<Vec<Weak<Stream>>>,
}

/// What the connection task is told from outside, through [`ConnWatch::raise`]. The task polls
/// its connection, these bits and one timer, so a wake-up costs an atomic load, not a lock per
/// signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The server is shutting down: finish in-flight requests and close (HTTP/2: GOAWAY).
    Drain = 1,
    /// The client cancelled too many streams (`http2_max_cancels`): GOAWAY, then a short grace.
    Abuse = 2,
    /// A deadline now falls before the check the task has planned (the connection went idle, or
    /// an HTTP/1 head started, and its limit is shorter than the check interval): check again at
    /// once.
    Rearm = 4,
    /// The listener is at `max_connections` and a new client waits: close now unless a request
    /// is in flight ([`ConnWatch::shed_rank`] chose this connection).
    Shed = 8,
}

impl Signal {
    /// Whether `bits` (from [`ConnWatch::poll_signals`]) include this signal.
    pub fn is_in(self, bits: u8) -> bool {
        bits & self as u8 != 0
    }
}

/// A token bucket: `capacity` at once, refilled at `capacity / 10` per second.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl ConnWatch {
    pub fn new(limits: ConnLimits) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Self {
            start: now,
            limits,
            seen_request: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            abusive: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            write_blocked_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            cancels: Mutex::new(Bucket {
                tokens: f64::from(limits.max_cancels),
                at: now,
            }),
            next_check: AtomicU64::new(0),
            raised: AtomicU8::new(0),
            shed_claimed: AtomicBool::new(false),
            task: AtomicWaker::new(),
            streams: Mutex::new(Vec::new()),
        })
    }

    /// Tells the connection task `signal` and wakes it.
    pub fn raise(&self, signal: Signal) {
        self.raised.fetch_or(signal as u8, Ordering::Release);
        self.task.wake();
    }

    /// The signals raised since the last call (as bits; 0 for none), registering the task to be
    /// woken by the next one.
    pub fn poll_signals(&self, cx: &Context<'_>) -> u8 {
        self.task.register(cx.waker());
        if self.raised.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.raised.swap(0, Ordering::Acquire)
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Whether [`Signal::Shed`] was raised (clearing it, and only it), registering the task to be
    /// woken by the next signal: for the TLS handshake, before the connection is polled.
    pub fn poll_shed(&self, cx: &Context<'_>) -> Poll<()> {
        self.task.register(cx.waker());
        let bit = Signal::Shed as u8;
        if self.raised.load(Ordering::Relaxed) & bit != 0
            && self.raised.fetch_and(!bit, Ordering::Acquire) & bit != 0
        {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// How readily this connection is closed to make room at `max_connections`, lowest first:
    /// one that never completed a request head (silent, slow TLS or HTTP/2 preface, slowloris)
    /// before one that is part-way through a later head, before an idle keep-alive one; the
    /// oldest first within each. `None` while a request is in flight (it is never shed) and
    /// once it is claimed to be shed (it is closing, and its slot goes to the client that
    /// claimed it).
    pub fn shed_rank(&self) -> Option<(u8, Instant)> {
        if self.active.load(Ordering::Relaxed) != 0 || self.shed_claimed.load(Ordering::Relaxed) {
            return None;
        }
        if !self.seen_request.load(Ordering::Relaxed) {
            return Some((0, self.start));
        }
        let head = self.head_since.load(Ordering::Relaxed);
        if head != 0 {
            return Some((1, self.start + Duration::from_millis(head - 1)));
        }
        let idle = self.idle_since.load(Ordering::Relaxed);
        Some((2, self.start + Duration::from_millis(idle)))
    }

    /// Claims this connection to be shed for one waiting client, then tells it
    /// ([`Signal::Shed`]); `false` if another client's accept loop claimed it first. Without the
    /// claim, two accept loops at `max_connections` chose the same connection, one slot came
    /// free for two clients, and one of them waited out `SHED_RETRY` (50 ms) for each such
    /// collision: a request behind 500 silent connections waited 180–340 ms for its slot (over
    /// 1 s in CI), where it now waits under 10 ms.
    pub fn claim_shed(&self) -> bool {
        if self.shed_claimed.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.raise(Signal::Shed);
        true
    }

    /// Whether a connection told to shed closes now: yes when no request is in flight; a request
    /// that arrived since the claim keeps it open, and the claim is lifted so that it may be
    /// chosen again once idle.
    pub fn accept_shed(&self) -> bool {
        if self.active.load(Ordering::Relaxed) == 0 {
            return true;
        }
        self.shed_claimed.store(false, Ordering::Relaxed);
        false
    }

    /// A request head arrived: the returned guard keeps it counted as in flight until dropped.
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        if !self.seen_request.load(Ordering::Relaxed) {
            self.seen_request.store(true, Ordering::Relaxed);
        }
        if self.head_since.load(Ordering::Relaxed) != 0 {
            self.head_since.store(0, Ordering::Relaxed);
        }
        self.active.fetch_add(1, Ordering::Relaxed);
        RequestGuard {
            conn: self.clone(),
            finished: false,
        }
    }

    /// A socket write could not proceed.
    pub fn write_blocked(&self) {
        if self.write_blocked_since.load(Ordering::Relaxed) == 0 {
            self.write_blocked_since
                .store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    /// Bytes arrived on an HTTP/1 connection. With no request in flight they start the next head,
    /// which then has `client_header` to complete. (hyper's own head timer would do this with a
    /// boxed timer per request, and would also cut idle keep-alive connections at
    /// `client_header`, not `client_idle`.) A head pipelined behind a request in flight is
    /// bounded by `client_idle` instead.
    pub fn http1_read(&self) {
        if self.active.load(Ordering::Relaxed) != 0
            || self.head_since.load(Ordering::Relaxed) != 0
            || !self.seen_request.load(Ordering::Relaxed)
        {
            return;
        }
        let now = self.now_ms();
        self.head_since.store(now + 1, Ordering::Relaxed);
        let due = now + self.limits.client_header.as_millis() as u64;
        if due < self.next_check.load(Ordering::Relaxed) {
            self.raise(Signal::Rearm);
        }
    }

    /// A socket write made progress.
    pub fn write_progressed(&self) {
        if self.write_blocked_since.load(Ordering::Relaxed) != 0 {
            self.write_blocked_since.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a stream the client gave up on; past the budget, wakes the connection task.
    fn client_cancelled(&self) {
        let cap = f64::from(self.limits.max_cancels);
        let mut b = self.cancels.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * cap / 10.0).min(cap);
        b.at = now;
        b.tokens -= 1.0;
        if b.tokens < 0.0 {
            self.abusive.store(true, Ordering::Relaxed);
            self.raise(Signal::Abuse);
        }
    }

    /// Whether the client has cancelled past its budget. From then on the connection's new
    /// streams are answered at once without reaching a handler (or an upstream), so what reaches
    /// upstreams is bounded by the budget plus the streams already accepted (at most one batch
    /// of `http2_max_streams`), however fast the client sends HEADERS before the GOAWAY lands.
    pub fn abusive(&self) -> bool {
        self.abusive.load(Ordering::Relaxed)
    }

    /// Applies every rule that is due and returns what the connection must do, and when to ask
    /// again.
    pub fn check(&self) -> (Verdict, Instant) {
        let (verdict, at) = self.check_rules();
        let next = at.saturating_duration_since(self.start).as_millis() as u64;
        self.next_check.store(next, Ordering::Relaxed);
        (verdict, at)
    }

    fn check_rules(&self) -> (Verdict, Instant) {
        let now = self.now_ms();
        let l = &self.limits;
        let ms = |d: Duration| d.as_millis() as u64;
        let at = |ms: u64| self.start + Duration::from_millis(ms);
        let tick = ms(l.client_write / 4).max(50);

        if !self.seen_request.load(Ordering::Relaxed) {
            let due = ms(l.client_header);
            if now >= due {
                return (
                    Verdict::Close("no request head within client_header"),
                    at(now),
                );
            }
            return (Verdict::Continue, at(due.min(now + tick)));
        }
        let blocked = self.write_blocked_since.load(Ordering::Relaxed);
        if blocked != 0 && now >= blocked - 1 + ms(l.client_write) {
            return (
                Verdict::Close("client took nothing for client_write"),
                at(now),
            );
        }
        self.cancel_stalled_streams(now);
        if self.active.load(Ordering::Relaxed) == 0 {
            let head = self.head_since.load(Ordering::Relaxed);
            let head_due = (head != 0).then(|| head - 1 + ms(l.client_header));
            if head_due.is_some_and(|due| now >= due) {
                return (
                    Verdict::Close("request head not complete within client_header"),
                    at(now),
                );
            }
            let due = self.idle_since.load(Ordering::Relaxed) + ms(l.client_idle);
            if now >= due {
                return (Verdict::Drain("idle for client_idle"), at(now));
            }
            let due = head_due.map_or(due, |h| h.min(due));
            return (Verdict::Continue, at(due.min(now + tick)));
        }
        (Verdict::Continue, at(now + tick))
    }

    fn cancel_stalled_streams(&self, now: u64) {
        let write = self.limits.client_write.as_millis() as u64;
        let stuck = write + self.limits.upstream_idle.as_millis() as u64;
        let streams: Vec<Arc<Stream>> = {
            let mut list = self.streams.lock().unwrap_or_else(|p| p.into_inner());
            list.retain(|s| s.strong_count() > 0);
            list.iter().filter_map(Weak::upgrade).collect()
        };
        for s in streams {
            let (last, waiting) = decode(s.state.load(Ordering::Relaxed));
            let idle_for = now.saturating_sub(last);
            if (waiting && idle_for >= write) || idle_for >= stuck {
                s.cancel();
            }
        }
    }
}

/// Holds a request as in flight; counts a client cancellation if dropped before it finished.
pub struct RequestGuard {
    conn: Arc<ConnWatch>,
    finished: bool,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.conn.client_cancelled();
        }
        if self.conn.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            let now = self.conn.now_ms();
            self.conn.idle_since.store(now, Ordering::Relaxed);
            // The idle deadline may come before the check the task has planned (it planned
            // one `client_write / 4` away while a request was in flight).
            let idle_due = now + self.conn.limits.client_idle.as_millis() as u64;
            if idle_due < self.conn.next_check.load(Ordering::Relaxed) {
                self.conn.raise(Signal::Rearm);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnLimits {
        let s = Duration::from_secs(30);
        ConnLimits {
            client_header: s,
            client_idle: s,
            client_write: s,
            upstream_idle: s,
            max_cancels: 100,
        }
    }

    #[test]
    fn a_connection_is_claimed_for_one_waiting_client_only() {
        let conn = ConnWatch::new(limits());
        assert_eq!(conn.shed_rank().map(|r| r.0), Some(0), "silent: shed first");
        assert!(conn.claim_shed());
        assert!(
            !conn.claim_shed(),
            "a second accept loop must choose another"
        );
        assert_eq!(
            conn.shed_rank(),
            None,
            "a claimed connection is not chosen again"
        );
        assert!(Signal::Shed.is_in(conn.raised.load(Ordering::Relaxed)));
        assert!(conn.accept_shed(), "idle: it closes");
    }

    #[test]
    fn a_busy_connection_declines_the_shed_and_can_be_chosen_again_once_idle() {
        let conn = ConnWatch::new(limits());
        assert!(conn.claim_shed());
        let request = conn.request();
        assert!(!conn.accept_shed(), "a request in flight keeps it open");
        assert_eq!(conn.shed_rank(), None, "busy");
        drop(request);
        assert!(conn.shed_rank().is_some(), "the claim was lifted");
        assert!(conn.claim_shed());
    }
}

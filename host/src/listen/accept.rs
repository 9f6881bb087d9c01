//! The accept loop every worker runs on the shared socket, and the registry of connections it
//! sheds from at `max_connections`.

use std::sync::{Arc, Weak};
use std::time::Duration;

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, watch as signal};
use tokio::task::JoinSet;

use super::balance::{Handoff, Serving, Worker};
use super::per_ip::IpPermit;
use super::watch::{ConnWatch, Signal};
use super::{Connection, Handler, SHED_RETRY, Shared, per_ip};

/// One thread's accept loop: serves connections until `stop` turns true, then closes its copy
/// of the listener and drains its connections within the grace period. With a `worker` (one of
/// several threads on the socket), a connection accepted while another worker serves fewer goes
/// to that worker, and the ones handed to this worker arrive in its inbox (`balance.rs`).
pub(super) async fn accept_loop<H: Handler>(
    shared: Arc<Shared>,
    listener: TcpListener,
    handler: H,
    stop: signal::Receiver<bool>,
    mut worker: Option<Worker>,
) {
    let mut conns = JoinSet::new();
    let mut waiter = stop;
    let stopped = async move {
        let _ = waiter.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    loop {
        let inbox = async {
            match worker.as_mut() {
                Some(w) => w.inbox.recv().await,
                None => std::future::pending().await,
            }
        };
        let (tcp, peer) = tokio::select! {
            _ = &mut stopped => break,
            Some(h) = inbox => {
                serve_handed(&mut conns, &shared, &handler, h);
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ip_permit = match shared.per_ip.acquire(peer.ip()) {
            Ok(permit) => permit,
            Err(why) => {
                per_ip::refuse(tcp, peer, why, shared.tls.is_some());
                continue;
            }
        };
        let permit = match shared.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => tokio::select! {
                _ = &mut stopped => break,
                permit = shared.make_room() => permit,
            },
        };
        let Some((tcp, permits)) = hand_over(worker.as_ref(), tcp, peer, permit, ip_permit) else {
            continue;
        };
        serve(&mut conns, &shared, &handler, (tcp, peer), permits);
    }

    drop(listener);
    // No connection is handed to this worker any more (a handover now fails and the other worker
    // serves it itself); the ones already in its inbox are served and drained with the rest.
    if let Some(w) = worker.as_mut() {
        w.inbox.close();
        while let Ok(h) = w.inbox.try_recv() {
            serve_handed(&mut conns, &shared, &handler, h);
        }
    }
    // Every loop tells every connection (its own and the others'): raising twice is harmless.
    for watch in shared.live_conns() {
        watch.raise(Signal::Drain);
    }
    tracing::info!(in_flight = conns.len(), grace = ?shared.grace, "shutting down: draining connections");
    let drained = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(shared.grace, drained).await.is_err() {
        tracing::warn!(
            left = conns.len(),
            "grace period over; closing remaining connections"
        );
    }
    conns.shutdown().await;
}

/// The permits a connection holds while it is served, and its count on its worker.
type Held = (OwnedSemaphorePermit, Option<IpPermit>, Option<Serving>);

/// Gives a connection this worker accepted to a less loaded one; `None` once it is handed over,
/// else the connection, to serve here.
fn hand_over(
    worker: Option<&Worker>,
    tcp: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    ip_permit: Option<IpPermit>,
) -> Option<(TcpStream, Held)> {
    let Some(w) = worker else {
        return Some((tcp, (permit, ip_permit, None)));
    };
    let to = w.balance.target(w.index);
    if to == w.index {
        return Some((tcp, (permit, ip_permit, Some(w.balance.serving(w.index)))));
    }
    let std = match tcp.into_std() {
        Ok(std) => std,
        Err(e) => {
            // Deregistering failed: the socket is gone with the error.
            tracing::debug!(error = %e, "a connection could not be handed over");
            return None;
        }
    };
    let handoff = Handoff {
        tcp: std,
        peer,
        permit,
        ip_permit,
        counted: w.balance.serving(to),
    };
    match w.balance.hand_over(to, handoff) {
        Ok(()) => None,
        // That worker has stopped: serve it here.
        Err(h) => match TcpStream::from_std(h.tcp) {
            Ok(tcp) => Some((
                tcp,
                (h.permit, h.ip_permit, Some(w.balance.serving(w.index))),
            )),
            Err(e) => {
                tracing::debug!(error = %e, "a connection could not be taken back");
                None
            }
        },
    }
}

/// Serves a connection another worker handed to this one, with what it holds and its count here.
fn serve_handed<H: Handler>(
    conns: &mut JoinSet<()>,
    shared: &Arc<Shared>,
    handler: &H,
    h: Handoff,
) {
    match TcpStream::from_std(h.tcp) {
        Ok(tcp) => serve(
            conns,
            shared,
            handler,
            (tcp, h.peer),
            (h.permit, h.ip_permit, Some(h.counted)),
        ),
        Err(e) => tracing::warn!(error = %e, "a connection handed over could not be served"),
    }
}

/// Serves one connection on this thread; what it holds is released when it ends.
fn serve<H: Handler>(
    conns: &mut JoinSet<()>,
    shared: &Arc<Shared>,
    handler: &H,
    (tcp, peer): (TcpStream, SocketAddr),
    held: Held,
) {
    let _ = tcp.set_nodelay(true);
    let conn = Connection {
        handler: handler.clone(),
        shared: shared.clone(),
        peer,
    };
    let watch = ConnWatch::new(shared.limits);
    shared.register(&watch);
    conns.spawn(async move {
        conn.run(tcp, watch).await;
        drop(held);
    });
    // Reap finished connection tasks so the set does not grow without bound.
    while conns.try_join_next().is_some() {}
}

impl Shared {
    /// Adds a new connection to the registry.
    fn register(&self, watch: &Arc<ConnWatch>) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns.len() == conns.capacity() {
            // Forget closed connections before the list grows (amortised: it at most doubles).
            conns.retain(|w| w.strong_count() > 0);
        }
        conns.push(Arc::downgrade(watch));
    }

    fn live_conns(&self) -> Vec<Arc<ConnWatch>> {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.iter().filter_map(Weak::upgrade).collect()
    }

    /// At `max_connections` with a client accepted: tells the connection that holds its slot for
    /// the least ([`ConnWatch::shed_rank`]) to close, and waits for a slot, choosing again every
    /// [`SHED_RETRY`]. With every connection busy, this is a wait for one to end.
    async fn make_room(&self) -> tokio::sync::OwnedSemaphorePermit {
        loop {
            let victim = {
                let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
                conns
                    .iter()
                    .filter_map(Weak::upgrade)
                    .filter_map(|w| w.shed_rank().map(|rank| (rank, w)))
                    .min_by_key(|(rank, _)| *rank)
            };
            if let Some((rank, watch)) = victim {
                if !watch.claim_shed() {
                    // Another accept loop claimed it between the choice and now: choose again.
                    continue;
                }
                tracing::debug!(
                    rank = rank.0,
                    "max_connections reached: shedding a connection"
                );
            }
            let wait = tokio::time::timeout(SHED_RETRY, self.permits.clone().acquire_owned());
            if let Ok(permit) = wait.await {
                return permit.expect("semaphore is never closed");
            }
        }
    }
}

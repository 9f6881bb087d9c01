//! Exact connection balance between the worker threads (Envoy's `exact_balance` does the same).
//!
//! The workers race for one listening socket. A worker that is already awake when a burst of
//! connections arrives accepts the whole burst before the others wake up. Keep-alive clients then
//! hold those connections for their whole life, so one worker serves everything while the others
//! idle. That was measured: wrk's 64 connections all landed on one of two workers, and the other
//! ran for 0.05 ms in 5 s (`bench/latency-profile.sh`).
//!
//! The fix is to count each worker's connections. A worker that accepts a connection while
//! another worker serves fewer hands the socket to that worker, through the receiver's inbox.
//! The receiver serves it as if it had accepted it. A handoff costs one channel send per
//! accepted connection, not per request. With one worker nothing is ever handed off.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::per_ip::IpPermit;

/// A connection accepted by one worker, for another to serve, with the permits it holds and its
/// count on the receiving worker (taken when it was handed over, so a burst handed over before
/// the receiver runs is counted where it goes).
pub(super) struct Handoff {
    pub(super) tcp: std::net::TcpStream,
    pub(super) peer: SocketAddr,
    pub(super) permit: OwnedSemaphorePermit,
    pub(super) ip_permit: Option<IpPermit>,
    pub(super) counted: Serving,
}

/// Every worker's connection count and inbox.
pub(super) struct Balance {
    load: Box<[AtomicUsize]>,
    inboxes: Box<[mpsc::UnboundedSender<Handoff>]>,
}

/// A worker's share of the [`Balance`]: its index and its inbox.
pub(super) struct Worker {
    pub(super) balance: Arc<Balance>,
    pub(super) index: usize,
    pub(super) inbox: mpsc::UnboundedReceiver<Handoff>,
}

impl Balance {
    /// A balance for `count` threads: one [`Worker`] for each, in order.
    pub(super) fn workers(count: usize) -> Vec<Worker> {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..count).map(|_| mpsc::unbounded_channel()).unzip();
        let balance = Arc::new(Self {
            load: (0..count).map(|_| AtomicUsize::new(0)).collect(),
            inboxes: senders.into(),
        });
        receivers
            .into_iter()
            .enumerate()
            .map(|(index, inbox)| Worker {
                balance: balance.clone(),
                index,
                inbox,
            })
            .collect()
    }

    /// The worker that should serve a connection that worker `me` just accepted: the least
    /// loaded one if it serves fewer than `me` does, else `me`. Ties stay, so a balanced set of
    /// workers hands nothing over.
    pub(super) fn target(&self, me: usize) -> usize {
        let mine = self.load[me].load(Ordering::Relaxed);
        let (least, load) = self
            .load
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .enumerate()
            .min_by_key(|&(_, l)| l)
            .unwrap_or((me, mine));
        if load < mine { least } else { me }
    }

    /// Hands `conn` to worker `to`; gives it back if that worker has stopped.
    pub(super) fn hand_over(&self, to: usize, conn: Handoff) -> Result<(), Handoff> {
        self.inboxes[to].send(conn).map_err(|e| e.0)
    }

    /// Counts a connection on worker `index` until the guard drops (it goes with the connection
    /// to the worker that serves it).
    pub(super) fn serving(self: &Arc<Self>, index: usize) -> Serving {
        self.load[index].fetch_add(1, Ordering::Relaxed);
        Serving {
            balance: self.clone(),
            index,
        }
    }
}

/// One connection counted on its worker (see [`Balance::serving`]).
pub(super) struct Serving {
    balance: Arc<Balance>,
    index: usize,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.balance.load[self.index].fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_goes_to_the_least_loaded_worker_and_ties_stay() {
        let workers = Balance::workers(3);
        let b = workers[0].balance.clone();
        assert_eq!(b.target(0), 0, "all idle: no handoff");
        let _a = b.serving(0);
        assert_eq!(b.target(0), 1, "worker 0 serves one, 1 and 2 none");
        let _c = b.serving(1);
        let _d = b.serving(2);
        assert_eq!(b.target(0), 0, "one each: a tie stays");
        let e = b.serving(0);
        assert_eq!(b.target(0), 1);
        assert_eq!(b.target(2), 2);
        drop(e);
        assert_eq!(b.target(0), 0, "the guard gave its count back");
    }
}

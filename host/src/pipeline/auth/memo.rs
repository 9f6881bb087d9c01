//! The key ids of keys the table recognised, remembered so that a key's next request skips its
//! HMAC.
//!
//! A key's id is `HMAC-SHA256(server secret, key)`: two SHA-256 blocks per request, about 6,900
//! instructions where the CPU has no SHA extensions (many server CPUs before 2020), and the largest
//! single cost of authenticating. The memo maps a 128-bit SipHash-2-4 tag of the presented key,
//! under a key drawn at random when the ring is made, to the id the HMAC gave; a tag costs a few
//! hundred instructions.
//!
//! Each worker thread keeps its own map (a thread-local), so the request path takes no lock and
//! writes no memory another core reads: a shared map's reader count alone would move its cache
//! line between the cores on every request. A thread's map belongs to one ring at a time (the ring
//! in force); a request on another ring (after a reload) empties it first.
//!
//! What it does not change:
//! - **Which key a request authenticates as.** The id is a pure function of the server secret and
//!   the key, and a ring (with its random tag key) lives as long as its secret. The table is
//!   still asked for every request, so a key revoked, expired or rotated away is refused on its
//!   next request whether or not its id is remembered.
//! - **What an attacker can do.** A presented key that is not the remembered one but has its tag
//!   would authenticate as it: finding one without the memo's random key is a 2^-128 guess per
//!   try (SipHash is a keyed pseudo-random function, made for short inputs). Keys the table does
//!   not know are never remembered, so unknown keys cannot fill the memo; they pay the HMAC, as
//!   before.
//! - **What is in memory.** Tags and ids, never the keys.
//!
//! Each thread holds at most [`CAPACITY`] ids (about 3 MiB), and empties its map when full (a key
//! remembered again costs one HMAC).

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use siphasher::sip128::{Hasher128, SipHasher24};

use super::KeyId;

/// Most ids one thread remembers at once.
pub(super) const CAPACITY: usize = 32_768;

/// Tells rings apart, so a thread's map is never read for a ring it was not filled for.
static RINGS: AtomicU64 = AtomicU64::new(0);

type Ids = HashMap<u128, KeyId, BuildHasherDefault<Tagged>>;

thread_local! {
    /// This thread's remembered ids, and the ring they were remembered for.
    static IDS: RefCell<(u64, Ids)> = RefCell::new((u64::MAX, Ids::default()));
}

/// Presented key → its id, for keys the table recognised.
pub(super) struct IdMemo {
    sip: SipHasher24,
    ring: u64,
}

impl IdMemo {
    pub(super) fn new() -> Self {
        let mut seed = [0u8; 16];
        getrandom::fill(&mut seed).expect("the OS random source is available");
        let (k0, k1) = seed.split_at(8);
        let key = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        Self {
            sip: SipHasher24::new_with_keys(key(k0), key(k1)),
            ring: RINGS.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The tag `key` is remembered by.
    pub(super) fn tag(&self, key: &[u8]) -> u128 {
        let mut h = self.sip;
        h.write(key);
        h.finish128().as_u128()
    }

    /// Runs `f` on this thread's map for this ring (emptied first if it was another ring's).
    fn with<R>(&self, f: impl FnOnce(&mut Ids) -> R) -> R {
        IDS.with_borrow_mut(|(ring, ids)| {
            if *ring != self.ring {
                ids.clear();
                *ring = self.ring;
            }
            f(ids)
        })
    }

    /// The id remembered for `tag`, if any.
    pub(super) fn get(&self, tag: u128) -> Option<KeyId> {
        self.with(|ids| ids.get(&tag).copied())
    }

    /// Remembers `id` for `tag` (the table recognised the key).
    pub(super) fn put(&self, tag: u128, id: KeyId) {
        self.with(|ids| {
            if ids.len() >= CAPACITY {
                ids.clear();
            }
            ids.insert(tag, id);
        });
    }

    /// How many ids this thread remembers for this ring.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.with(|ids| ids.len())
    }
}

/// The map's hasher: a tag is already a keyed pseudo-random value, so its low bits are its hash.
#[derive(Default)]
pub(super) struct Tagged(u64);

impl Hasher for Tagged {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u128` keys reach this map; anything else still hashes correctly, if slowly.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

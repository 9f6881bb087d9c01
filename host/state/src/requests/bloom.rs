//! The Bloom filter of a block's summary: which values (a key, an address, a model, a request
//! id…) its requests may hold, so that a query skips the blocks that surely hold none. Each
//! value is hashed with its field as the seed ([`term`]); the filter is written in the blocked
//! layout ([`bloom`]), and blocks written in the first layout are still read ([`bloom_has`]).

use std::net::IpAddr;

/// Bits of the Bloom filter per distinct value (at least), and probes per value: 2.2% false
/// positives at 10 bits a value ([`bloom`]).
const BLOOM_BITS_PER_VALUE: usize = 10;
const BLOOM_PROBES: u32 = 7;

/// The fields a query matches exactly, each hashed with its own seed into the Bloom filter.
#[derive(Clone, Copy)]
pub(super) enum Field {
    RequestId = 1,
    KeyId,
    KeyName,
    ClientIp,
    Route,
    Model,
    Upstream,
    Outcome,
    Error,
    AnsweredBy,
}

/// A value's hash in the Bloom filter: xxh3, whose output is fixed by its specification, so a
/// block written by one version is read right by the next.
pub(super) fn term(field: Field, value: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(value, field as u64)
}

pub(super) fn ip_term(ip: &IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => term(Field::ClientIp, &v4.octets()),
        IpAddr::V6(v6) => term(Field::ClientIp, &v6.octets()),
    }
}

/// The last byte of a blocked filter ([`bloom`]); a filter of exactly a power of two bytes is
/// of the first layout ([`legacy_has`]), still read.
const BLOCKED: u8 = 2;

/// A blocked Bloom filter of `terms`: 64-bit words, at least [`BLOOM_BITS_PER_VALUE`] bits a
/// value and a power of two of them, then the byte [`BLOCKED`]. Each value sets
/// [`BLOOM_PROBES`] bits of one word (which word: its hash's low half; which bits: six bits each
/// of its high half), so adding or testing it touches one word, not seven scattered bytes: about
/// 15 instructions a value instead of 70, for a false-positive rate of 2.2% instead of 0.8% at
/// 10 bits a value (the smallest: sizes are rounded up to a power of two, so 10 to 20 bits).
/// Little-endian.
pub(super) fn bloom(terms: &[u64]) -> Vec<u8> {
    let words = (terms.len() * BLOOM_BITS_PER_VALUE / 64)
        .max(1)
        .next_power_of_two();
    let mut filter = vec![0u64; words];
    for &t in terms {
        let (word, mask) = blocked(t, words);
        filter[word] |= mask;
    }
    let mut out = Vec::with_capacity(words * 8 + 1);
    for w in filter {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.push(BLOCKED);
    out
}

/// The word of a filter of `words` (a power of two) words that holds `t`, and its bits there.
fn blocked(t: u64, words: usize) -> (usize, u64) {
    let word = (t as usize) & (words - 1);
    let mut mask = 0u64;
    let mut h = t >> 32;
    for _ in 0..BLOOM_PROBES {
        mask |= 1 << (h & 63);
        // Four bits of the high half are not enough for seven six-bit picks: mix as we go.
        h = (h >> 6) | (h.wrapping_mul(0x9E37_79B9) << 26);
    }
    (word, mask)
}

/// Where a value's bits are in a first-layout filter of `bits` (a power of two) bits: double
/// hashing of its two halves.
fn probes(t: u64, bits: usize) -> impl Iterator<Item = usize> {
    let (h1, h2) = (t as u32 as u64, (t >> 32) | 1);
    let mask = bits as u64 - 1;
    (0..u64::from(BLOOM_PROBES)).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) & mask) as usize)
}

/// Whether `t` may be in the filter (false: surely not). A filter of neither layout is not
/// one this code wrote: it rules nothing out.
pub(super) fn bloom_has(bloom: &[u8], t: u64) -> bool {
    match bloom.split_last() {
        Some((&BLOCKED, words))
            if words.len() >= 8 && (words.len() / 8).is_power_of_two() && words.len() % 8 == 0 =>
        {
            let (word, mask) = blocked(t, words.len() / 8);
            let mut w = [0u8; 8];
            w.copy_from_slice(&words[word * 8..word * 8 + 8]);
            u64::from_le_bytes(w) & mask == mask
        }
        _ => legacy_has(bloom, t),
    }
}

/// [`bloom_has`] for a filter of the first layout: bits set by [`probes`], exactly a power of
/// two bytes long.
fn legacy_has(bloom: &[u8], t: u64) -> bool {
    let bits = bloom.len() * 8;
    !bits.is_power_of_two() || probes(t, bits).all(|bit| bloom[bit / 8] & (1 << (bit % 8)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A first-layout filter, as blocks written before the blocked one hold.
    fn legacy(terms: &[u64]) -> Vec<u8> {
        let bits = (terms.len() * BLOOM_BITS_PER_VALUE)
            .max(64)
            .next_power_of_two();
        let mut out = vec![0u8; bits / 8];
        for &t in terms {
            for bit in probes(t, bits) {
                out[bit / 8] |= 1 << (bit % 8);
            }
        }
        out
    }

    /// At its smallest size (exactly 10 bits a value) the blocked filter lets about 2.2% of
    /// absent values through, against 0.8% for the first layout: what its docs say.
    #[test]
    fn false_positives_at_ten_bits_a_value() {
        // 3,277 values: 512 words, 10.0 bits a value.
        let terms: Vec<u64> = (0..3277u32)
            .map(|i| term(Field::Model, &i.to_le_bytes()))
            .collect();
        let b = bloom(&terms);
        assert_eq!(b.len(), 512 * 8 + 1);
        let rate = |has: &dyn Fn(u64) -> bool| {
            let hits = (0..100_000u32)
                .filter(|i| has(term(Field::Route, &i.to_le_bytes())))
                .count();
            hits as f64 / 1_000.0
        };
        let blocked = rate(&|t| bloom_has(&b, t));
        let old = legacy(&terms);
        let first = rate(&|t| bloom_has(&old, t));
        assert!((1.5..3.0).contains(&blocked), "blocked: {blocked}%");
        assert!(first < 1.2, "first layout: {first}%");
    }

    #[test]
    fn an_empty_bloom_filter_holds_nothing_and_a_full_one_everything() {
        assert!(!bloom_has(&bloom(&[]), 1));
        assert!(bloom_has(&[0; 3], 1), "not one of ours: rules nothing out");
        let terms: Vec<u64> = (0..1000u32)
            .map(|i| term(Field::Model, &i.to_le_bytes()))
            .collect();
        // Both layouts: the blocked one written now, the first one still read.
        for (layout, b, most) in [
            ("blocked", bloom(&terms), 250),
            ("first", legacy(&terms), 150),
        ] {
            assert!(terms.iter().all(|&t| bloom_has(&b, t)), "{layout}");
            let false_hits = (0..10_000u32)
                .filter(|i| bloom_has(&b, term(Field::Route, &i.to_le_bytes())))
                .count();
            assert!(
                false_hits < most,
                "{layout}: {false_hits} false positives in 10,000"
            );
        }
        assert_eq!(bloom(&terms).last(), Some(&BLOCKED));
        assert!(legacy(&terms).len().is_power_of_two());
    }
}

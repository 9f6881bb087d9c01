//! A block of the request log: the requests of one flush (or of a few small flushes), written
//! together in one database row. Writing a row per request cost about 47,000 instructions a
//! request (SQLite's B-trees for the table and four indexes, binding 25 columns); a block costs
//! the encoding of its requests and a share of one insert.
//!
//! A block holds:
//! - `data`: its requests, laid out as `codec.rs` says (texts they share written once); a
//!   request's id is the block's id times 2^16 plus its place in the block ([`row_id`]);
//! - what a query reads to skip it without opening it: the time span, a bit per status class
//!   seen, how many requests the gateway answered itself, and a Bloom filter (`bloom.rs`) of
//!   every exact filter's value (key, name, address, route, model, upstream, outcome, error
//!   code, what answered, request id). A block a query skips costs reading those few columns; a block it
//!   opens is decoded, and its requests matched one by one ([`Matcher`]).

use std::net::IpAddr;
use std::sync::Arc;

use super::bloom::{Field, bloom, bloom_has, ip_term, term};
use super::codec::{self, Dict, Row, TEXTS};
use super::{RequestEntry, RequestQuery, RequestRow};

/// The most requests one block holds.
pub(super) const MAX_ROWS: usize = 4096;

/// Bits of a request's id that are its place in its block.
pub(super) const ROW_BITS: u32 = 16;

/// A request's id: its block's and its place there.
pub(super) fn row_id(block: i64, index: u32) -> i64 {
    (block << ROW_BITS) | i64::from(index)
}

/// The block of a request id, and its place there.
pub(super) fn split_id(id: i64) -> (i64, u32) {
    (id >> ROW_BITS, (id & ((1 << ROW_BITS) - 1)) as u32)
}

/// The field of each of [`codec::texts`] that a query can ask for (method and path: none).
const TEXT_FIELDS: [Option<Field>; TEXTS] = [
    Some(Field::KeyId),
    Some(Field::KeyName),
    None,
    None,
    Some(Field::Route),
    Some(Field::Model),
    Some(Field::Upstream),
    Some(Field::Outcome),
    Some(Field::Error),
    Some(Field::AnsweredBy),
    None,
];

impl Row<'_> {
    /// The record the API returns (bodies are filled in by the caller).
    pub(super) fn record(&self, id: i64) -> RequestRow {
        let [
            key_id,
            key_name,
            method,
            path,
            route,
            model,
            upstream,
            outcome,
            error,
            answered_by,
            served_model,
        ] = self.texts;
        let attempts = self
            .attempts
            .iter()
            .map(|a| {
                let mut o = serde_json::Map::new();
                o.insert("upstream".into(), a.upstream.into());
                o.insert("status".into(), a.status.into());
                if !a.error.is_empty() {
                    o.insert("error".into(), a.error.into());
                }
                o.insert("ms".into(), a.ms.into());
                serde_json::Value::Object(o)
            })
            .collect();
        RequestRow {
            id,
            at_ms: self.at_ms,
            request_id: self.request_id.into(),
            key_id: key_id.into(),
            key_name: key_name.into(),
            client_ip: self.client_ip.to_string(),
            method: method.into(),
            path: path.into(),
            route: route.into(),
            model: model.into(),
            served_model: served_model.into(),
            upstream: upstream.into(),
            attempts: serde_json::Value::Array(attempts),
            status: self.status,
            outcome: outcome.into(),
            error: error.into(),
            answered_by: answered_by.into(),
            first_byte_us: self.first_byte_us,
            duration_us: self.duration_us,
            input_tokens: self.tokens.map(|t| t.0),
            output_tokens: self.tokens.map(|t| t.1),
            cached_tokens: self.tokens.map(|t| t.2),
            partial: self.partial,
            cost_nanos: self.cost_nanos,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            decisions: if self.decisions.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_str(self.decisions)
                    .unwrap_or_else(|_| serde_json::Value::String(self.decisions.into()))
            },
            request_body: None,
            response_body: None,
        }
    }
}

/// What a query skips a block by: its summary columns.
#[derive(Debug, Clone)]
pub(super) struct Summary {
    pub id: i64,
    pub first_row: u32,
    pub from_ms: u64,
    pub to_ms: u64,
    /// Bit `c` set: a request of status class `c` (`2` for 2xx, …) is in the block.
    pub statuses: u32,
    /// Requests the gateway answered itself.
    pub refused: u32,
    pub bloom: Vec<u8>,
}

/// A block being written: the segment of its new requests (`codec.rs`), its summary so far,
/// and the bodies `capture` kept, by place in the block.
pub(crate) struct Builder {
    dict: Dict,
    encoded: Vec<u8>,
    /// Requests in the segment being written.
    segment_rows: u32,
    /// The previous request's texts (their places in `dict`): equal texts are not looked up
    /// or hashed again.
    prev: Option<[u32; TEXTS]>,
    /// The previous request's address: a repeated one is not hashed again.
    prev_ip: Option<IpAddr>,
    /// The previous request's shared texts, by identity (see [`Held`]).
    held: Held,
    /// Bloom filter hashes of the values seen: each text once a segment (the segment's strings
    /// note the fields they were seen in), an address each time it changes, every request id.
    terms: Vec<u64>,
    pub rows: u32,
    pub from_ms: u64,
    pub to_ms: u64,
    pub statuses: u32,
    pub refused: u32,
    pub bodies: Vec<(u32, String, String)>,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            dict: Dict::default(),
            encoded: vec![codec::FORMAT],
            segment_rows: 0,
            prev: None,
            prev_ip: None,
            held: Held::default(),
            terms: Vec::new(),
            rows: 0,
            from_ms: u64::MAX,
            to_ms: 0,
            statuses: 0,
            refused: 0,
            bodies: Vec::new(),
        }
    }
}

/// The texts many requests share, kept from the previous request so that the next one's are
/// recognised by identity rather than read: the key (its id and name), the route and the
/// upstream are the same `Arc` from request to request, and the method and outcome the same
/// static text. Holding the previous `Arc`s keeps their addresses from being reused by other
/// texts meanwhile. Comparing texts was a third of encoding a request (callgrind).
#[derive(Default)]
struct Held {
    key: Option<Arc<crate::ClientKey>>,
    route: Option<Arc<str>>,
    upstream: Option<Arc<str>>,
    /// Address and length of the static method and outcome.
    method: (usize, usize),
    outcome: (usize, usize),
}

/// Places in [`codec::texts`] of the texts [`Held`] knows.
const KEY_ID: usize = 0;
const KEY_NAME: usize = 1;
const METHOD: usize = 2;
const ROUTE: usize = 4;
const UPSTREAM: usize = 6;
const OUTCOME: usize = 7;

/// Whether `new` is `held`, which becomes `new` when it is not.
fn same_arc<T: ?Sized>(held: &mut Option<Arc<T>>, new: Option<&Arc<T>>) -> bool {
    match (held.as_ref(), new) {
        (Some(h), Some(n)) if Arc::ptr_eq(h, n) => true,
        (None, None) => true,
        _ => {
            *held = new.cloned();
            false
        }
    }
}

impl Held {
    /// The texts of `e` (bits by place in [`codec::texts`]) known to be the previous
    /// request's; the others are compared by their text. Then holds `e`'s.
    fn update(&mut self, e: &RequestEntry<'_>) -> u32 {
        let mut known = 0;
        if same_arc(&mut self.key, e.key) {
            known |= 1 << KEY_ID | 1 << KEY_NAME;
        }
        if same_arc(&mut self.route, e.route) {
            known |= 1 << ROUTE;
        }
        if same_arc(&mut self.upstream, e.upstream) {
            known |= 1 << UPSTREAM;
        }
        // Static texts are never freed: an equal address and length is the same text.
        let at = |s: &'static str| (s.as_ptr() as usize, s.len());
        let (method, outcome) = (at(e.method), at(e.outcome));
        if method == self.method {
            known |= 1 << METHOD;
        }
        if outcome == self.outcome {
            known |= 1 << OUTCOME;
        }
        (self.method, self.outcome) = (method, outcome);
        known
    }
}

/// A block ready to write, with its Bloom filter.
pub(super) struct Sealed {
    pub data: Vec<u8>,
    pub bloom: Vec<u8>,
}

impl Builder {
    /// Encodes one request at the end of the block (and takes its bodies).
    pub(super) fn push(&mut self, e: &mut RequestEntry<'_>) {
        let now = codec::texts(e);
        let known = self.held.update(e);
        let had_prev = self.prev.is_some();
        let mut places = self.prev.unwrap_or([0; TEXTS]);
        for (i, text) in now.iter().enumerate() {
            // The previous request's text: its place, and already in the Bloom filter.
            if had_prev && (known & (1 << i) != 0 || self.dict.text(places[i]) == text.as_bytes()) {
                continue;
            }
            let place = self.dict.intern(text);
            places[i] = place;
            if let Some(field) = TEXT_FIELDS[i]
                && !text.is_empty()
                && self.dict.first_in(place, field as u8)
            {
                self.terms.push(term(field, text.as_bytes()));
            }
        }
        self.terms
            .push(term(Field::RequestId, e.request_id.as_bytes()));
        if self.prev_ip != Some(e.client_ip) {
            self.terms.push(ip_term(&e.client_ip));
            self.prev_ip = Some(e.client_ip);
        }
        codec::put_row(
            &mut self.encoded,
            &mut self.dict,
            e,
            (&now, &places),
            &e.decisions,
        );
        self.prev = Some(places);
        self.from_ms = self.from_ms.min(e.at_ms);
        self.to_ms = self.to_ms.max(e.at_ms);
        self.statuses |= 1 << (e.status / 100).min(9);
        if e.error.is_some() {
            self.refused += 1;
        }
        if let Some((request, response)) = e.bodies.take() {
            self.bodies.push((self.rows, request, response));
        }
        self.segment_rows += 1;
        self.rows += 1;
    }

    /// Appends the segment being written (its rows, strings and trailer) to `out`.
    fn segment_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.encoded[1..]);
        codec::end_segment(out, &self.dict, self.segment_rows, self.encoded.len() - 1);
    }

    /// The block, written in the buffer its requests were encoded into (no copy), and its
    /// Bloom filter. The builder keeps its summary, for [`Builder::extend`] and
    /// [`Builder::recycle`].
    pub(super) fn seal(&mut self) -> Sealed {
        let mut data = std::mem::take(&mut self.encoded);
        let rows_len = data.len() - 1;
        codec::end_segment(&mut data, &self.dict, self.segment_rows, rows_len);
        Sealed {
            data,
            bloom: self.bloom(),
        }
    }

    /// Adds `other`'s requests after this block's, whose data is `data`: as a segment of its
    /// own after it, so adding to a block does not rewrite it. The block's summary and bodies
    /// become both blocks'; `other` is left as it was (to be written alone if need be).
    pub(super) fn extend(&mut self, mut data: Vec<u8>, other: &Builder) -> Sealed {
        other.segment_into(&mut data);
        self.terms.extend_from_slice(&other.terms);
        self.from_ms = self.from_ms.min(other.from_ms);
        self.to_ms = self.to_ms.max(other.to_ms);
        self.statuses |= other.statuses;
        self.refused += other.refused;
        let base = self.rows;
        self.bodies.extend(
            other
                .bodies
                .iter()
                .map(|(i, a, b)| (base + i, a.clone(), b.clone())),
        );
        self.rows += other.rows;
        Sealed {
            data,
            bloom: self.bloom(),
        }
    }

    /// Its encoding buffer, taken (after an [`Builder::extend`] wrote its requests elsewhere).
    pub(super) fn encoded_buffer(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.encoded)
    }

    /// Empties it for the next block, with `buffer` (a written block's data) to encode into:
    /// a flush then allocates no new memory (growing buffers afresh took new pages from the
    /// kernel at every flush, each zeroed: 2% of the gateway's CPU time at 5,000 requests a
    /// second).
    pub(super) fn recycle(&mut self, mut buffer: Vec<u8>) {
        buffer.clear();
        buffer.push(codec::FORMAT);
        self.encoded = buffer;
        self.dict.clear();
        self.segment_rows = 0;
        self.prev = None;
        self.prev_ip = None;
        self.held = Held::default();
        self.terms.clear();
        self.rows = 0;
        self.from_ms = u64::MAX;
        self.to_ms = 0;
        self.statuses = 0;
        self.refused = 0;
        self.bodies.clear();
    }

    /// The Bloom filter of the values seen. They are not deduplicated (sorting them cost
    /// more than a hundred instructions a request): each text is hashed once a segment already,
    /// and a repeat only makes the filter a little larger than it needs to be.
    fn bloom(&mut self) -> Vec<u8> {
        bloom(&self.terms)
    }
}

/// A query, ready to skip blocks and match requests.
pub(super) struct Matcher {
    q: RequestQuery,
    /// Values every matching block's Bloom filter must hold.
    terms: Vec<u64>,
    ip: Option<IpAddr>,
    /// Nothing can match (an address that does not parse).
    none: bool,
}

impl Matcher {
    pub(super) fn new(q: RequestQuery) -> Self {
        let mut terms = Vec::new();
        let mut none = false;
        let mut ip = None;
        if let Some(text) = &q.ip {
            match text.parse::<IpAddr>() {
                Ok(addr) => {
                    terms.push(ip_term(&addr));
                    ip = Some(addr);
                }
                Err(_) => none = true,
            }
        }
        if let Some(k) = &q.key_id
            && k.len() == 64
        {
            terms.push(term(Field::KeyId, k.to_ascii_lowercase().as_bytes()));
        }
        for (field, value) in [
            (Field::RequestId, &q.request_id),
            (Field::KeyName, &q.key_name),
            (Field::Route, &q.route),
            (Field::Model, &q.model),
            (Field::Upstream, &q.upstream),
            (Field::Outcome, &q.outcome),
            (Field::AnsweredBy, &q.answered_by),
        ] {
            if let Some(v) = value {
                terms.push(term(field, v.as_bytes()));
            }
        }
        if let Some(code) = q.error.as_deref().filter(|c| *c != "any") {
            terms.push(term(Field::Error, code.as_bytes()));
        }
        Self { q, terms, ip, none }
    }

    /// Whether the block may hold a match (false: it surely holds none).
    pub(super) fn may_match(&self, b: &Summary) -> bool {
        let q = &self.q;
        !self.none
            && q.from_ms.is_none_or(|f| b.to_ms >= f)
            && q.to_ms.is_none_or(|t| b.from_ms <= t)
            && q.status_class
                .is_none_or(|c| b.statuses & (1 << c.min(9)) != 0)
            && (q.error.as_deref() != Some("any") || b.refused > 0)
            && self.terms.iter().all(|&t| bloom_has(&b.bloom, t))
    }

    /// Whether the request matches every filter.
    pub(super) fn matches(&self, r: &Row<'_>) -> bool {
        let q = &self.q;
        let [
            key_id,
            key_name,
            _,
            _,
            route,
            model,
            upstream,
            outcome,
            error,
            answered_by,
            _,
        ] = r.texts;
        let eq =
            |filter: &Option<String>, value: &str| filter.as_deref().is_none_or(|f| f == value);
        !self.none
            && q.from_ms.is_none_or(|f| r.at_ms >= f)
            && q.to_ms.is_none_or(|t| r.at_ms <= t)
            && q.key_id.as_deref().is_none_or(|k| {
                let k = k.to_ascii_lowercase();
                if k.len() == 64 {
                    key_id == k
                } else {
                    !key_id.is_empty() && key_id.starts_with(&k)
                }
            })
            && self.ip.is_none_or(|ip| r.client_ip == ip)
            && eq(&q.request_id, r.request_id)
            && eq(&q.key_name, key_name)
            && eq(&q.route, route)
            && eq(&q.model, model)
            && eq(&q.upstream, upstream)
            && eq(&q.outcome, outcome)
            && eq(&q.answered_by, answered_by)
            && match q.error.as_deref() {
                None => true,
                Some("any") => !error.is_empty(),
                Some(code) => error == code,
            }
            && q.status_class.is_none_or(|c| r.status / 100 == c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::requests::Attempt;

    /// Leaked: test entries borrow for the whole test.
    fn leak(s: String) -> &'static str {
        Box::leak(s.into_boxed_str())
    }

    /// A shared text, as the request path's `Arc`s are.
    fn shared(s: &str) -> &'static Arc<str> {
        Box::leak(Box::new(Arc::from(s)))
    }

    /// The key most entries share: the same `Arc` for even entries, an equal one for odd ones
    /// (recognised by identity, and by text).
    fn key(i: u32) -> &'static Arc<crate::ClientKey> {
        use crate::{ClientKey, KeyId, KeySource};
        static SHARED: std::sync::LazyLock<Arc<ClientKey>> = std::sync::LazyLock::new(|| {
            Arc::new(ClientKey::plain(
                KeyId([0xab; 32]),
                "team",
                KeySource::Config,
            ))
        });
        if i.is_multiple_of(2) {
            &SHARED
        } else {
            Box::leak(Box::new(Arc::new(ClientKey::plain(
                KeyId([0xab; 32]),
                "team",
                KeySource::Config,
            ))))
        }
    }

    fn entry(i: u32) -> RequestEntry<'static> {
        let refused = i.is_multiple_of(3);
        let attempts: &'static [Attempt] = Box::leak(Box::new([Attempt {
            upstream: "up".into(),
            status: 502,
            error: Some("upstream_connect"),
            ms: 3,
        }]));
        RequestEntry {
            at_ms: 1_000 + u64::from(i),
            request_id: leak(format!("req-{i}")),
            key: Some(key(i)),
            client_ip: format!("10.0.0.{}", i % 4).parse().unwrap(),
            method: "POST",
            path: "/v1/chat/completions",
            route: Some(shared("/v1/")),
            model: Some(if i.is_multiple_of(2) { "a" } else { "b" }),
            served_model: Some("a-2025"),
            upstream: (!refused).then(|| shared("up")),
            attempts,
            status: if refused { 429 } else { 200 },
            outcome: if refused { "refused" } else { "complete" },
            error: refused.then_some("rate_limit_exceeded"),
            answered_by: refused.then_some("limits:per-ip"),
            first_byte_us: Some(5),
            duration_us: 9,
            tokens: Some((1, 2, 0)),
            partial: i == 7,
            cost_nanos: None,
            bytes_in: 10,
            bytes_out: 20,
            decisions: serde_json::json!([{"policy": "p", "decision": {"order": ["up"]}}])
                .to_string(),
            bodies: (i == 4).then(|| ("{}".to_owned(), "{\"x\":1}".to_owned())),
        }
    }

    fn summary(b: &Builder, s: &Sealed) -> Summary {
        Summary {
            id: 1,
            first_row: 0,
            from_ms: b.from_ms,
            to_ms: b.to_ms,
            statuses: b.statuses,
            refused: b.refused,
            bloom: s.bloom.clone(),
        }
    }

    #[test]
    fn a_block_gives_back_what_was_written_and_its_summary_skips_what_it_lacks() {
        let mut a = Builder::default();
        let mut b = Builder::default();
        for i in 0..6 {
            a.push(&mut entry(i));
        }
        for i in 6..9 {
            b.push(&mut entry(i));
        }
        let first = a.seal();
        let sealed = a.extend(first.data.clone(), &b);
        assert!(
            sealed.data.starts_with(&first.data),
            "a segment added after the first"
        );
        assert_eq!((a.rows, a.from_ms, a.to_ms, a.refused), (9, 1000, 1008, 3));
        assert_eq!(a.bodies.len(), 1);
        assert_eq!(a.bodies[0].0, 4);
        let rows = codec::rows(&sealed.data).unwrap();
        assert_eq!(rows.len(), 9);
        let row = rows[3].record(row_id(1, 3));
        assert_eq!(row.id, 65_539);
        assert_eq!(row.request_id, "req-3");
        assert_eq!(row.status, 429);
        assert_eq!(row.error, "rate_limit_exceeded");
        assert_eq!(row.answered_by, "limits:per-ip");
        assert_eq!(row.client_ip, "10.0.0.3");
        assert_eq!(row.upstream, "");
        assert_eq!(
            row.attempts,
            serde_json::json!([{"upstream": "up", "status": 502, "error": "upstream_connect", "ms": 3}])
        );
        assert_eq!(row.decisions[0]["decision"]["order"][0], "up");
        assert!(rows[7].partial && rows[4].captured && !rows[3].captured);
        assert_eq!(rows[8].record(0).path, "/v1/chat/completions");
        assert_eq!(rows[4].record(0).key_name, "team");
        assert_eq!(rows[4].record(0).served_model, "a-2025");
        assert_eq!(rows[5].tokens, Some((1, 2, 0)));
        assert_eq!((rows[5].first_byte_us, rows[5].cost_nanos), (Some(5), None));
        assert_eq!(split_id(row.id), (1, 3));

        let s = summary(&a, &sealed);
        let q = |f: &dyn Fn(&mut RequestQuery)| {
            let mut q = RequestQuery::default();
            f(&mut q);
            q
        };
        let hits = |q: &RequestQuery| {
            let m = Matcher::new(q.clone());
            (
                m.may_match(&s),
                rows.iter().filter(|r| m.matches(r)).count(),
            )
        };
        assert_eq!(
            hits(&q(&|q| q.request_id = Some("req-5".into()))),
            (true, 1)
        );
        assert_eq!(hits(&q(&|q| q.ip = Some("10.0.0.2".into()))), (true, 2));
        assert_eq!(hits(&q(&|q| q.status_class = Some(4))), (true, 3));
        assert_eq!(hits(&q(&|q| q.error = Some("any".into()))), (true, 3));
        assert_eq!(hits(&q(&|q| q.key_id = Some("abab".into()))), (true, 9));
        assert_eq!(hits(&q(&|q| q.key_id = Some("ab".repeat(32)))), (true, 9));
        assert_eq!(
            hits(&q(&|q| q.answered_by = Some("limits:per-ip".into()))),
            (true, 3)
        );
        // Absent values: the summary alone rules the block out (a Bloom filter of this size
        // has a few percent of false positives; these are fixed, so the test is deterministic).
        for absent in [
            q(&|q| q.request_id = Some("req-99".into())),
            q(&|q| q.ip = Some("10.0.0.9".into())),
            q(&|q| q.model = Some("c".into())),
            q(&|q| q.status_class = Some(5)),
            q(&|q| q.from_ms = Some(2_000)),
            q(&|q| q.ip = Some("not an address".into())),
        ] {
            assert_eq!(hits(&absent), (false, 0), "{absent:?}");
        }
        // Trimming the oldest keeps the rest as written: inside the first segment, all of it,
        // into the second.
        for skip in [0, 4, 6, 7, 9] {
            let trimmed = codec::without_first(&sealed.data, skip).unwrap();
            let rest: Vec<&str> = codec::rows(&trimmed)
                .unwrap()
                .iter()
                .map(|r| r.request_id)
                .collect();
            let want: Vec<String> = (skip..9).map(|i| format!("req-{i}")).collect();
            assert_eq!(rest, want, "skipping {skip}");
        }
    }

    /// Texts recognised by identity and texts compared by content read back as written, as
    /// they alternate: the same key `Arc`, another key, the first again; the same static method,
    /// then another.
    #[test]
    fn shared_texts_alternating_read_back_as_written() {
        use crate::{ClientKey, KeyId, KeySource};
        let a = Arc::new(ClientKey::plain(KeyId([1; 32]), "alice", KeySource::Config));
        let b = Arc::new(ClientKey::plain(KeyId([2; 32]), "bob", KeySource::Database));
        let up: Arc<str> = Arc::from("up-a");
        let other: Arc<str> = Arc::from("up-b");
        let mut builder = Builder::default();
        let cases = [
            (&a, &up, "POST"),
            (&a, &up, "POST"),
            (&b, &other, "GET"),
            (&a, &up, "POST"),
            (&b, &up, "GET"),
        ];
        for (key, upstream, method) in cases {
            let mut e = RequestEntry {
                key: Some(key),
                upstream: Some(upstream),
                method,
                ..entry(1)
            };
            builder.push(&mut e);
        }
        let sealed = builder.seal();
        let rows = codec::rows(&sealed.data).unwrap();
        let got: Vec<(String, String, String, String)> = rows
            .iter()
            .map(|r| {
                let r = r.record(0);
                (r.key_name, r.key_id[..2].to_owned(), r.upstream, r.method)
            })
            .collect();
        let want = [
            ("alice", "01", "up-a", "POST"),
            ("alice", "01", "up-a", "POST"),
            ("bob", "02", "up-b", "GET"),
            ("alice", "01", "up-a", "POST"),
            ("bob", "02", "up-a", "GET"),
        ];
        let want: Vec<(String, String, String, String)> = want
            .iter()
            .map(|(a, b, c, d)| ((*a).into(), (*b).into(), (*c).into(), (*d).into()))
            .collect();
        assert_eq!(got, want);
    }

    /// Every number at its largest, an IPv6 address, several attempts naming other upstreams
    /// and errors, and long decisions: the row fits the room sized for it and reads back.
    #[test]
    fn a_row_at_its_largest_round_trips() {
        let attempts: &'static [Attempt] = Box::leak(
            (0..5)
                .map(|i| Attempt {
                    upstream: format!("other-{i}").into(),
                    status: u16::MAX,
                    error: Some("upstream_timeout"),
                    ms: u32::MAX,
                })
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        );
        let mut e = RequestEntry {
            at_ms: u64::MAX,
            client_ip: "2001:db8::ffff:1".parse().unwrap(),
            attempts,
            status: u16::MAX,
            first_byte_us: Some(u64::MAX - 1),
            duration_us: u64::MAX,
            tokens: Some((u64::MAX, u64::MAX, u64::MAX)),
            cost_nanos: Some(u64::MAX),
            bytes_in: u64::MAX,
            bytes_out: u64::MAX,
            decisions: serde_json::json!([{"policy": "p", "decision": "x".repeat(5000)}])
                .to_string(),
            ..entry(1)
        };
        let mut b = Builder::default();
        b.push(&mut e);
        let sealed = b.seal();
        let rows = codec::rows(&sealed.data).unwrap();
        let row = rows[0].record(0);
        assert_eq!(row.at_ms, u64::MAX);
        assert_eq!(row.client_ip, "2001:db8::ffff:1");
        assert_eq!(row.attempts.as_array().unwrap().len(), 5);
        assert_eq!(row.attempts[4]["upstream"], "other-4");
        assert_eq!(row.attempts[4]["ms"], u32::MAX);
        assert_eq!(
            (row.first_byte_us, row.duration_us, row.bytes_out),
            (Some(u64::MAX - 1), u64::MAX, u64::MAX)
        );
        assert_eq!(rows[0].tokens, Some((u64::MAX, u64::MAX, u64::MAX)));
        assert_eq!(row.cost_nanos, Some(u64::MAX));
        assert_eq!(row.decisions[0]["decision"].as_str().unwrap().len(), 5000);
    }
}

//! How a block's requests are laid out in its `data` (format 2).
//!
//! ```text
//! data    = FORMAT segment+
//! segment = row* string* trailer                           one flush's requests
//! trailer = u32 rows, u32 strings, u32 bytes of rows, u32 bytes of strings (little-endian)
//! string  = varint(len) utf-8 bytes
//! row     = varint(at_ms) string(request_id) varint(text index)×11 ip
//!           varint(attempts) (varint(upstream) varint(status) varint(error) varint(ms))*
//!           varint(status) varint(first_byte_us + 1, or 0) varint(duration_us)
//!           flags [varint×3 tokens] [varint cost] varint(bytes_in) varint(bytes_out)
//!           string(decisions)
//! ip      = 4 and 4 bytes, or 6 and 16 bytes
//! ```
//!
//! Varints are LEB128. Each segment has its own strings: every text a request shares with
//! others (key id and name, method, path, route, model, upstream, outcome, error, what
//! answered; an attempt's upstream and error) is written once per segment and referred to by
//! its place; the request id and the decisions are written inline. The strings and the trailer
//! come after the rows so that a block is written in the buffer its requests were encoded
//! into, without a copy; a reader finds the segments from the end. A block that grows by a
//! later flush gets a segment after the first, so adding never rewrites what is there. Nothing
//! is compressed: a request takes about 80 bytes (a third of them its id), and compressing cost
//! more instructions a request than all the rest of the encoding (callgrind, zstd at its
//! fastest level).

use std::collections::HashMap;
use std::net::IpAddr;

use super::RequestEntry;

/// The version of the layout, the first byte of `data`. Format 2 (the first) had no served
/// model (ten texts a request); it is still read.
pub(super) const FORMAT: u8 = 3;

/// The texts of a request written by reference, in this order.
pub(super) const TEXTS: usize = 11;

/// The places of the upstream and the error among [`texts`].
const UPSTREAM: usize = 6;
const ERROR: usize = 8;

/// A request's texts written by reference: key id, key name, method, path, route, model,
/// upstream, outcome, error, answered by, served model (empty when there is none).
#[inline]
pub(super) fn texts<'a>(e: &RequestEntry<'a>) -> [&'a str; TEXTS] {
    let (key_id, key_name) = e.key.map_or(("", ""), |k| (&*k.hex, &*k.name));
    [
        key_id,
        key_name,
        e.method,
        e.path,
        e.route.map_or("", |r| r),
        e.model.unwrap_or(""),
        e.upstream.map_or("", |u| u),
        e.outcome,
        e.error.unwrap_or(""),
        e.answered_by.unwrap_or(""),
        e.served_model.unwrap_or(""),
    ]
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A segment's strings, as it is written.
#[derive(Default)]
pub(super) struct Dict {
    bytes: Vec<u8>,
    /// Where each string's text is in `bytes`.
    spans: Vec<(u32, u32)>,
    /// For each string, the fields (bits by number) it was already seen in: what the Bloom
    /// filter holds of this segment (`block.rs`).
    fields: Vec<u16>,
    index: HashMap<Box<str>, u32, foldhash::fast::RandomState>,
}

impl Dict {
    /// Empties it, keeping its memory.
    pub(super) fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
        self.fields.clear();
        self.index.clear();
    }

    /// The text of string `i`.
    pub(super) fn text(&self, i: u32) -> &[u8] {
        let (at, len) = self.spans[i as usize];
        &self.bytes[at as usize..(at + len) as usize]
    }

    /// Notes string `i` as seen in field number `field` (below 16); true the first time.
    pub(super) fn first_in(&mut self, i: u32, field: u8) -> bool {
        let bit = 1 << field;
        let seen = &mut self.fields[i as usize];
        let first = *seen & bit == 0;
        *seen |= bit;
        first
    }

    /// The place of `s`, added if new.
    pub(super) fn intern(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.spans.len() as u32;
        put_varint(&mut self.bytes, s.len() as u64);
        self.spans.push((self.bytes.len() as u32, s.len() as u32));
        self.fields.push(0);
        self.bytes.extend_from_slice(s.as_bytes());
        self.index.insert(s.into(), i);
        i
    }
}

const TOKENS: u8 = 1;
const PARTIAL: u8 = 2;
const CAPTURED: u8 = 4;
const COST: u8 = 8;

/// Writes into a slice sized beforehand: the position stays in a register, where a `Vec`'s
/// length and capacity are read and written again for every byte pushed (half of what
/// encoding a request cost under callgrind).
struct Cursor<'a> {
    buf: &'a mut [u8],
    at: usize,
}

/// The longest LEB128 varint of a `u64`.
const MAX_VARINT: usize = 10;

impl Cursor<'_> {
    fn byte(&mut self, b: u8) {
        self.buf[self.at] = b;
        self.at += 1;
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.byte(v as u8 | 0x80);
            v >>= 7;
        }
        self.byte(v as u8);
    }

    fn bytes(&mut self, b: &[u8]) {
        self.buf[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
    }

    fn str(&mut self, s: &str) {
        self.varint(s.len() as u64);
        self.bytes(s.as_bytes());
    }
}

/// Writes one request, whose [`texts`] are `values`, at `texts` in `dict`.
pub(super) fn put_row(
    out: &mut Vec<u8>,
    dict: &mut Dict,
    e: &RequestEntry<'_>,
    (values, texts): (&[&str; TEXTS], &[u32; TEXTS]),
    decisions: &str,
) {
    // At most: 24 varints (the texts' included), the two strings' bytes, the address (17) and
    // the flags (1), and four varints an attempt.
    let most = MAX_VARINT * (TEXTS + 13)
        + e.request_id.len()
        + decisions.len()
        + 18
        + e.attempts.len() * 4 * MAX_VARINT;
    let start = out.len();
    out.resize(start + most, 0);
    let mut c = Cursor {
        buf: &mut out[start..],
        at: 0,
    };
    c.varint(e.at_ms);
    c.str(e.request_id);
    for &t in texts {
        c.varint(u64::from(t));
    }
    match e.client_ip {
        IpAddr::V4(v4) => {
            c.byte(4);
            c.bytes(&v4.octets());
        }
        IpAddr::V6(v6) => {
            c.byte(6);
            c.bytes(&v6.octets());
        }
    }
    c.varint(e.attempts.len() as u64);
    for a in e.attempts {
        // Most attempts are the answering upstream's, without an error: no lookup then.
        let upstream = if *a.upstream == *values[UPSTREAM] {
            texts[UPSTREAM]
        } else {
            dict.intern(&a.upstream)
        };
        let error = match a.error {
            None if values[ERROR].is_empty() => texts[ERROR],
            error => dict.intern(error.unwrap_or("")),
        };
        c.varint(u64::from(upstream));
        c.varint(u64::from(a.status));
        c.varint(u64::from(error));
        c.varint(u64::from(a.ms));
    }
    c.varint(u64::from(e.status));
    c.varint(e.first_byte_us.map_or(0, |v| v.saturating_add(1)));
    c.varint(e.duration_us);
    let mut flags = 0;
    if e.tokens.is_some() {
        flags |= TOKENS;
    }
    if e.partial {
        flags |= PARTIAL;
    }
    if e.bodies.is_some() {
        flags |= CAPTURED;
    }
    if e.cost_nanos.is_some() {
        flags |= COST;
    }
    c.byte(flags);
    if let Some((input, output, cached)) = e.tokens {
        c.varint(input);
        c.varint(output);
        c.varint(cached);
    }
    if let Some(cost) = e.cost_nanos {
        c.varint(cost);
    }
    c.varint(e.bytes_in);
    c.varint(e.bytes_out);
    c.str(decisions);
    let written = c.at;
    out.truncate(start + written);
}

const TRAILER: usize = 16;

/// Ends a segment whose `rows` requests (`rows_len` bytes) were written into `out`: appends its
/// strings and its trailer.
pub(super) fn end_segment(out: &mut Vec<u8>, dict: &Dict, rows: u32, rows_len: usize) {
    out.extend_from_slice(&dict.bytes);
    for v in [
        rows,
        dict.spans.len() as u32,
        rows_len as u32,
        dict.bytes.len() as u32,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// One upstream attempt, as read.
pub(super) struct ReadAttempt<'a> {
    pub upstream: &'a str,
    pub status: u16,
    pub error: &'a str,
    pub ms: u32,
}

/// One request, as read (its texts borrowed from the block).
pub(super) struct Row<'a> {
    pub at_ms: u64,
    pub request_id: &'a str,
    /// In [`texts`] order.
    pub texts: [&'a str; TEXTS],
    pub client_ip: IpAddr,
    pub attempts: Vec<ReadAttempt<'a>>,
    pub status: u16,
    pub first_byte_us: Option<u64>,
    pub duration_us: u64,
    pub tokens: Option<(u64, u64, u64)>,
    pub partial: bool,
    pub captured: bool,
    pub cost_nanos: Option<u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub decisions: &'a str,
}

/// A block that does not read as written.
#[derive(Debug)]
pub(super) struct Corrupt(&'static str);

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "corrupt request log block: {}", self.0)
    }
}

impl std::error::Error for Corrupt {}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
    /// Texts a row holds in this block's format.
    texts: usize,
}

impl<'a> Reader<'a> {
    #[cfg(test)]
    fn done(&self) -> bool {
        self.at >= self.data.len()
    }

    fn byte(&mut self) -> Result<u8, Corrupt> {
        let b = *self.data.get(self.at).ok_or(Corrupt("cut short"))?;
        self.at += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, Corrupt> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Corrupt("varint too long"))
    }

    fn small(&mut self) -> Result<u32, Corrupt> {
        u32::try_from(self.varint()?).map_err(|_| Corrupt("number out of range"))
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], Corrupt> {
        let end = self.at.checked_add(n).ok_or(Corrupt("length"))?;
        let b = self.data.get(self.at..end).ok_or(Corrupt("cut short"))?;
        self.at = end;
        Ok(b)
    }

    fn str(&mut self) -> Result<&'a str, Corrupt> {
        let n = usize::try_from(self.varint()?).map_err(|_| Corrupt("length"))?;
        std::str::from_utf8(self.bytes(n)?).map_err(|_| Corrupt("text is not UTF-8"))
    }

    fn text(&mut self, strings: &[&'a str]) -> Result<&'a str, Corrupt> {
        let i = self.small()? as usize;
        strings
            .get(i)
            .copied()
            .ok_or(Corrupt("string out of range"))
    }

    fn row(&mut self, strings: &[&'a str]) -> Result<Row<'a>, Corrupt> {
        let at_ms = self.varint()?;
        let request_id = self.str()?;
        let mut texts = [""; TEXTS];
        for t in &mut texts[..self.texts] {
            *t = self.text(strings)?;
        }
        let client_ip = match self.byte()? {
            4 => IpAddr::from(<[u8; 4]>::try_from(self.bytes(4)?).map_err(|_| Corrupt("ip"))?),
            6 => IpAddr::from(<[u8; 16]>::try_from(self.bytes(16)?).map_err(|_| Corrupt("ip"))?),
            _ => return Err(Corrupt("ip")),
        };
        let n = self.small()?.min(64) as usize;
        let mut attempts = Vec::with_capacity(n);
        for _ in 0..n {
            attempts.push(ReadAttempt {
                upstream: self.text(strings)?,
                status: self.small()?.min(u32::from(u16::MAX)) as u16,
                error: self.text(strings)?,
                ms: self.small()?,
            });
        }
        let status = self.small()?.min(u32::from(u16::MAX)) as u16;
        let first_byte_us = self.varint()?.checked_sub(1);
        let duration_us = self.varint()?;
        let flags = self.byte()?;
        let tokens = if flags & TOKENS != 0 {
            Some((self.varint()?, self.varint()?, self.varint()?))
        } else {
            None
        };
        let cost_nanos = if flags & COST != 0 {
            Some(self.varint()?)
        } else {
            None
        };
        Ok(Row {
            at_ms,
            request_id,
            texts,
            client_ip,
            attempts,
            status,
            first_byte_us,
            duration_us,
            tokens,
            partial: flags & PARTIAL != 0,
            captured: flags & CAPTURED != 0,
            cost_nanos,
            bytes_in: self.varint()?,
            bytes_out: self.varint()?,
            decisions: self.str()?,
        })
    }
}

/// Where a segment is in a block.
struct Segment {
    /// Its first row, and the end of its rows (where its strings start).
    rows: std::ops::Range<usize>,
    strings: std::ops::Range<usize>,
    /// The end of its trailer.
    end: usize,
    count: u32,
    string_count: u32,
}

/// A block's segments, in order.
fn segments(data: &[u8]) -> Result<Vec<Segment>, Corrupt> {
    texts_of(data)?;
    let mut out = Vec::new();
    let mut end = data.len();
    while end > 1 {
        let t = end
            .checked_sub(TRAILER)
            .filter(|t| *t >= 1)
            .ok_or(Corrupt("trailer"))?;
        let word = |i: usize| {
            let b: [u8; 4] = data[t + 4 * i..t + 4 * i + 4].try_into().unwrap_or([0; 4]);
            u32::from_le_bytes(b)
        };
        let (count, string_count) = (word(0), word(1));
        let (rows_len, strings_len) = (word(2) as usize, word(3) as usize);
        let strings_start = t.checked_sub(strings_len).ok_or(Corrupt("strings"))?;
        let start = strings_start
            .checked_sub(rows_len)
            .filter(|s| *s >= 1)
            .ok_or(Corrupt("rows"))?;
        out.push(Segment {
            rows: start..strings_start,
            strings: strings_start..t,
            end,
            count,
            string_count,
        });
        end = start;
    }
    out.reverse();
    Ok(out)
}

/// Texts a row holds in the block's format.
fn texts_of(data: &[u8]) -> Result<usize, Corrupt> {
    match data.first() {
        Some(&FORMAT) => Ok(TEXTS),
        Some(2) => Ok(TEXTS - 1),
        _ => Err(Corrupt("unknown format")),
    }
}

/// A segment's strings.
fn strings<'a>(data: &'a [u8], seg: &Segment) -> Result<Vec<&'a str>, Corrupt> {
    let mut r = Reader {
        data: &data[..seg.strings.end],
        at: seg.strings.start,
        texts: 0,
    };
    let mut out = Vec::with_capacity((seg.string_count as usize).min(1 << 16));
    for _ in 0..seg.string_count {
        out.push(r.str()?);
    }
    Ok(out)
}

/// Every request of a block, in the order written.
pub(super) fn rows(data: &[u8]) -> Result<Vec<Row<'_>>, Corrupt> {
    let texts = texts_of(data)?;
    let mut out = Vec::new();
    for seg in segments(data)? {
        let strings = strings(data, &seg)?;
        let mut r = Reader {
            data: &data[..seg.rows.end],
            at: seg.rows.start,
            texts,
        };
        out.reserve(seg.count as usize);
        for _ in 0..seg.count {
            out.push(r.row(&strings)?);
        }
    }
    Ok(out)
}

/// The block without its first `skip` requests (for trimming the oldest away); its other
/// requests keep their bytes.
pub(super) fn without_first(data: &[u8], mut skip: u32) -> Result<Vec<u8>, Corrupt> {
    let texts = texts_of(data)?;
    let mut out = vec![data[0]];
    for seg in segments(data)? {
        if skip >= seg.count {
            skip -= seg.count;
            continue;
        }
        if skip == 0 {
            out.extend_from_slice(&data[seg.rows.start..seg.end]);
            continue;
        }
        let strings = strings(data, &seg)?;
        let mut r = Reader {
            data: &data[..seg.rows.end],
            at: seg.rows.start,
            texts,
        };
        for _ in 0..skip {
            r.row(&strings)?;
        }
        let kept = r.at..seg.rows.end;
        out.extend_from_slice(&data[kept.clone()]);
        out.extend_from_slice(&data[seg.strings.clone()]);
        for v in [
            seg.count - skip,
            seg.string_count,
            kept.len() as u32,
            seg.strings.len() as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        skip = 0;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_their_edges() {
        for v in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut r = Reader {
                data: &out,
                at: 0,
                texts: TEXTS,
            };
            assert_eq!(r.varint().unwrap(), v);
            assert!(r.done());
        }
        let mut r = Reader {
            data: &[0xff; 11],
            at: 0,
            texts: TEXTS,
        };
        assert!(r.varint().is_err(), "more than 64 bits");
        assert!(rows(&[FORMAT, 1, 5, b'a']).is_err(), "cut short");
        assert!(rows(&[1]).is_err(), "another format");
        let mut trailer = vec![FORMAT];
        for v in [1u32, 0, 100, 0] {
            trailer.extend_from_slice(&v.to_le_bytes());
        }
        assert!(rows(&trailer).is_err(), "rows longer than the block");
        assert!(rows(&[FORMAT]).unwrap().is_empty());
    }

    #[test]
    fn a_block_of_the_first_format_is_read_without_a_served_model() {
        // Format 2: ten texts a row. One row, one string ("").
        let mut row = vec![5, 1, b'r'];
        row.extend([0; 10]);
        row.extend([4, 10, 0, 0, 1]);
        row.extend([0, 0xc8, 0x01, 0, 1, 0, 0, 0, 0]);
        let mut block = vec![2];
        block.extend(&row);
        block.push(0);
        for v in [1u32, 1, row.len() as u32, 1] {
            block.extend(v.to_le_bytes());
        }
        let read = rows(&block).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!((read[0].request_id, read[0].status), ("r", 200));
        assert_eq!(read[0].texts[TEXTS - 1], "");
        assert_eq!(read[0].client_ip.to_string(), "10.0.0.1");
        assert_eq!(without_first(&block, 0).unwrap(), block);
    }
}

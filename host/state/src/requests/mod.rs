//! The request log: one record per request the data plane answered, proxied or refused.
//!
//! The request path hands each finished request to [`Stores::record_request`], which encodes
//! it into the block being filled (`block.rs`, `codec.rs`: a few hundred nanoseconds under a
//! lock, no I/O, no wake-up; encoding it there, while its data is in the cache, and spread over
//! every request, costs less than a burst at each flush); past `request_log.max_pending`
//! requests waiting it is dropped and counted. At each flush the writer (`writer.rs`) takes the
//! blocks and [`LogWriter`] writes them, one database row each, with a summary that lets a
//! query skip the block. A flush too small to make a block worth its row is added to the
//! previous block while that one is small, young and still the newest.
//!
//! Reading (`store.rs`) is filtered, newest first, and paged by request id (keyset: a request's
//! id is its block's id and its place there), so a page deep in the log costs what the first
//! does.

mod block;
mod bloom;
mod codec;
mod store;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;

pub(crate) use self::block::Builder;
use self::block::MAX_ROWS;
use super::{StoreError, StoreResult, Stores};

/// One upstream attempt of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Attempt {
    pub upstream: Arc<str>,
    /// The upstream's status (0 when it gave none: the connection failed, or timed out).
    pub status: u16,
    /// Why the attempt failed, as the gateway's error code (`upstream_connect`, …), or why it was
    /// not taken (`retry` when a filter moved on from its answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    /// From the start of the request until the attempt's response head (or its failure).
    pub ms: u32,
}

/// One request, as the log keeps it.
#[derive(Debug, Clone)]
pub struct RequestEntry<'a> {
    /// When the request started (unix ms).
    pub at_ms: u64,
    pub request_id: &'a str,
    /// The client key, once authenticated (its id and name are logged). The key, the route
    /// and the upstream are shared by many requests: a block compares them with its previous
    /// request's by identity (it holds the previous ones, so an address is never reused
    /// meanwhile), not by their text.
    pub key: Option<&'a Arc<crate::ClientKey>>,
    pub client_ip: IpAddr,
    pub method: &'static str,
    pub path: &'a str,
    pub route: Option<&'a Arc<str>>,
    /// As the client asked for it.
    pub model: Option<&'a str>,
    /// As the upstream's answer named it.
    pub served_model: Option<&'a str>,
    /// The upstream that answered.
    pub upstream: Option<&'a Arc<str>>,
    pub attempts: &'a [Attempt],
    pub status: u16,
    /// `complete`, `client_aborted`, `upstream_aborted`, `refused` or `cut`.
    pub outcome: &'static str,
    /// The code of the gateway's own answer (a policy's refusal: the policy's code).
    pub error: Option<&'a str>,
    /// The filter or step that answered instead of an upstream (`auth`, `limits:per-ip`,
    /// `plugin:bind`), or that ended the stream.
    pub answered_by: Option<&'a str>,
    pub first_byte_us: Option<u64>,
    pub duration_us: u64,
    /// Input, output and cached tokens, as reported (or seen, when `partial`).
    pub tokens: Option<(u64, u64, u64)>,
    pub partial: bool,
    pub cost_nanos: Option<u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// What the policies decided, in order, as a JSON array of `{"policy", "decision"}`
    /// objects (empty: nothing recorded). Written as text where the request ends, so no JSON
    /// value is built for the log.
    pub decisions: String,
    /// The request's and the answer's bodies, redacted and capped, where `capture` keeps them.
    pub bodies: Option<(String, String)>,
}

/// A request read back from the log.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RequestRow {
    pub id: i64,
    pub at_ms: u64,
    pub request_id: String,
    pub key_id: String,
    pub key_name: String,
    pub client_ip: String,
    pub method: String,
    pub path: String,
    pub route: String,
    /// The model asked for, and the model the answer named ('' when it named none).
    pub model: String,
    pub served_model: String,
    pub upstream: String,
    pub attempts: serde_json::Value,
    pub status: u16,
    pub outcome: String,
    pub error: String,
    pub answered_by: String,
    pub first_byte_us: Option<u64>,
    pub duration_us: u64,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cached_tokens: Option<u64>,
    pub partial: bool,
    pub cost_nanos: Option<u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub decisions: serde_json::Value,
    /// Where `capture` kept them: the body sent upstream and the answer (a stream as its text).
    pub request_body: Option<String>,
    pub response_body: Option<String>,
}

/// Which requests to read. Text filters match exactly, except `key`.
#[derive(Debug, Clone, Default)]
pub struct RequestQuery {
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    /// A key id, or the start of one (at least 4 hex digits).
    pub key_id: Option<String>,
    pub key_name: Option<String>,
    pub ip: Option<String>,
    pub route: Option<String>,
    pub model: Option<String>,
    pub upstream: Option<String>,
    /// 2, 4 or 5: the status class (`2xx`…).
    pub status_class: Option<u16>,
    pub outcome: Option<String>,
    /// The gateway's error code, or `any` for every request it answered itself.
    pub error: Option<String>,
    pub answered_by: Option<String>,
    pub request_id: Option<String>,
}

/// A block smaller than this stays open to the next flushes (while [`OPEN_FOR`] lasts).
const MERGE_BELOW: u32 = 1024;

/// How long a small block stays open to the next flushes.
const OPEN_FOR: std::time::Duration = std::time::Duration::from_secs(600);

/// Builders kept between flushes with their memory, for the next blocks.
const SPARE_BUILDERS: usize = 4;

/// The requests logged since the writer's last flush, encoded as they came: blocks of at most
/// [`MAX_ROWS`], the last one being filled.
#[derive(Default)]
pub(crate) struct Pending {
    full: Vec<Builder>,
    current: Builder,
    rows: usize,
    /// Emptied builders, with their buffers ([`Builder::recycle`]).
    spare: Vec<Builder>,
}

impl Pending {
    fn push(&mut self, e: &mut RequestEntry<'_>) {
        if self.current.rows as usize >= MAX_ROWS {
            let next = self.spare.pop().unwrap_or_default();
            self.full.push(std::mem::replace(&mut self.current, next));
        }
        self.current.push(e);
        self.rows += 1;
    }

    fn take(&mut self) -> Vec<Builder> {
        let next = self.spare.pop().unwrap_or_default();
        let mut blocks = std::mem::take(&mut self.full);
        let current = std::mem::replace(&mut self.current, next);
        if current.rows > 0 {
            blocks.push(current);
        }
        self.rows = 0;
        blocks
    }
}

/// The newest block this writer wrote, while it is small: the next flush is added to it.
struct OpenBlock {
    id: i64,
    /// Its summary so far.
    builder: Builder,
    /// Its requests, as written.
    data: Vec<u8>,
    opened: tokio::time::Instant,
}

/// The writer's side of the request log (owned by the writer task).
#[derive(Default)]
pub(crate) struct LogWriter {
    open: Option<OpenBlock>,
}

/// What a flush writes.
struct Plan {
    /// Its first block added to the open one: the open block grown, how many requests it held,
    /// the block as it is written, and the first block alone (written as a block of its own if
    /// the open one changed meanwhile).
    extend: Option<(OpenBlock, u32, block::Sealed, Builder)>,
    /// New blocks.
    insert: Vec<(Builder, block::Sealed)>,
}

impl LogWriter {
    /// Writes a flush's blocks; how many requests were written, and the error that stopped the
    /// rest. The builders go back to `stores` to be filled again.
    pub(crate) async fn write(
        &mut self,
        stores: &Stores,
        blocks: Vec<Builder>,
    ) -> (u64, Option<StoreError>) {
        if blocks.is_empty() {
            return (0, None);
        }
        let db = &stores.db;
        // Sealing builds each block's Bloom filter (about 80 instructions a request, no
        // copy): small enough for the writer's own task, without a hand-off to another thread.
        let plan = plan(self.open.take(), blocks);
        let mut written = 0u64;
        let mut failed = None;
        let mut last = None;
        let mut spent = Vec::new();
        if let Some((mut open, old_rows, sealed, mut first)) = plan.extend {
            let rows = u64::from(first.rows);
            match db
                .extend_request_block(open.id, old_rows, &open.builder, &sealed)
                .await
            {
                Ok(true) => {
                    open.data = sealed.data;
                    last = Some(open);
                    let buffer = first.encoded_buffer();
                    spent.push((first, buffer));
                    written += rows;
                }
                Ok(false) => {
                    // Another writer (or the pruning) changed the open block: one of its own.
                    let sealed = first.seal();
                    match db.insert_request_block(&first, &sealed).await {
                        Ok(id) => {
                            last = Some(OpenBlock::new(id, first, sealed.data));
                            written += rows;
                        }
                        Err(e) => failed = Some(e),
                    }
                }
                Err(e) => failed = Some(e),
            }
        }
        for (b, sealed) in plan.insert {
            if failed.is_some() {
                spent.push((b, sealed.data));
                continue;
            }
            match db.insert_request_block(&b, &sealed).await {
                Ok(id) => {
                    written += u64::from(b.rows);
                    if let Some(old) = last.replace(OpenBlock::new(id, b, sealed.data)) {
                        spent.push((old.builder, old.data));
                    }
                }
                Err(e) => {
                    spent.push((b, sealed.data));
                    failed = Some(e);
                }
            }
        }
        // The newest block written stays open to the next flush while it is small.
        match last {
            Some(o) if o.builder.rows < MERGE_BELOW => self.open = Some(o),
            Some(o) => spent.push((o.builder, o.data)),
            None => {}
        }
        stores.recycle_requests(spent);
        (written, failed)
    }
}

impl OpenBlock {
    fn new(id: i64, builder: Builder, data: Vec<u8>) -> Self {
        Self {
            id,
            builder,
            data,
            opened: tokio::time::Instant::now(),
        }
    }
}

/// Seals a flush's blocks; the first is added to the open block if it fits there.
fn plan(open: Option<OpenBlock>, blocks: Vec<Builder>) -> Plan {
    let mut blocks = blocks.into_iter().filter(|b| b.rows > 0).peekable();
    let mut extend = None;
    if let Some(mut open) = open
        && let Some(first) = blocks.peek()
        && open.builder.rows as usize + first.rows as usize <= MAX_ROWS
        && open.opened.elapsed() < OPEN_FOR
        && let Some(first) = blocks.next()
    {
        let old_rows = open.builder.rows;
        let sealed = open.builder.extend(std::mem::take(&mut open.data), &first);
        extend = Some((open, old_rows, sealed, first));
    }
    Plan {
        extend,
        insert: blocks
            .map(|mut b| {
                let sealed = b.seal();
                (b, sealed)
            })
            .collect(),
    }
}

impl Stores {
    /// Logs a finished request: encodes it into the block being filled (under a lock, no
    /// I/O, no wake-up; the entry borrows the request's own data, so nothing is copied or
    /// counted before). Past
    /// `request_log.max_pending` requests waiting for the writer it is dropped and counted.
    pub fn record_request(&self, mut entry: RequestEntry<'_>) {
        let mut pending = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        if pending.rows >= self.config.request_log.max_pending {
            drop(pending);
            self.stats.requests_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        pending.push(&mut entry);
    }

    /// The blocks of requests logged since the last call (for the writer).
    pub(crate) fn take_requests(&self) -> Vec<Builder> {
        let mut pending = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        pending.take()
    }

    /// Builders written, emptied for the next blocks, each with a written block's buffer.
    fn recycle_requests(&self, spent: Vec<(Builder, Vec<u8>)>) {
        let mut emptied: Vec<Builder> = spent
            .into_iter()
            .take(SPARE_BUILDERS)
            .map(|(mut b, buffer)| {
                b.recycle(buffer);
                b
            })
            .collect();
        let mut pending = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let room = SPARE_BUILDERS.saturating_sub(pending.spare.len());
        emptied.truncate(room);
        pending.spare.append(&mut emptied);
    }

    /// Deletes what `request_log.max_age` and `max_rows` no longer keep.
    pub async fn prune_requests(&self) -> StoreResult<u64> {
        let c = &self.config.request_log;
        let age = c.max_age.get().as_millis() as u64;
        let before = (age > 0).then(|| super::unix_ms().saturating_sub(age));
        let keep = (c.max_rows > 0).then_some(c.max_rows);
        self.db.prune_requests(before, keep).await
    }
}

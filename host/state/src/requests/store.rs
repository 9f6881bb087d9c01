//! The request log's tables: `request_blocks` (one row per block, `block.rs`) and
//! `request_bodies` (the bodies `capture` kept, by request id, uncompressed so that what was
//! redacted can be checked on disk). Reading walks the blocks newest first (or oldest first for
//! a tail), a few dozen summaries per query, and opens only those that may hold a match.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::Row;

use super::block::{Builder, Matcher, Sealed, Summary, row_id, split_id};
use super::codec;
use super::{RequestQuery, RequestRow};
use crate::StoreResult;
use crate::sql::{SqlStore, db_err};

/// Block summaries read by one query of a scan.
const SUMMARIES_PER_READ: i64 = 64;

const SUMMARY_COLUMNS: &str = "id, first_row, from_ms, to_ms, statuses, refused, bloom";

fn int(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

impl Summary {
    fn read(r: &sqlx::any::AnyRow) -> StoreResult<Self> {
        let n = |c: &str| -> StoreResult<i64> { r.try_get::<i64, _>(c).map_err(db_err) };
        Ok(Self {
            id: n("id")?,
            first_row: n("first_row")?.clamp(0, i64::from(u32::MAX)) as u32,
            from_ms: n("from_ms")?.max(0) as u64,
            to_ms: n("to_ms")?.max(0) as u64,
            statuses: n("statuses")?.clamp(0, i64::from(u32::MAX)) as u32,
            refused: n("refused")?.clamp(0, i64::from(u32::MAX)) as u32,
            bloom: r.try_get("bloom").map_err(db_err)?,
        })
    }
}

/// Which way a scan walks the log.
#[derive(Clone, Copy, PartialEq)]
enum Order {
    /// Newest first, ids below a cursor (a page).
    Before(i64),
    /// Oldest first, ids above a cursor (a tail).
    After(i64),
}

impl SqlStore {
    /// Writes a new block (and the bodies it kept) in one transaction; its id.
    pub(super) async fn insert_request_block(&self, b: &Builder, s: &Sealed) -> StoreResult<i64> {
        self.timed(async {
            let mut tx = self.write_tx().await?;
            let row = bind_block(
                sqlx::query(
                    "INSERT INTO request_blocks \
                     (first_row, row_count, from_ms, to_ms, statuses, refused, bloom, data) \
                     VALUES (0, $1, $2, $3, $4, $5, $6, $7) RETURNING id",
                ),
                b,
                s,
            )
            .fetch_one(&mut *tx)
            .await?;
            let id: i64 = row.try_get("id")?;
            insert_bodies(&mut tx, id, b, 0).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(id)
        })
        .await
    }

    /// Replaces block `id`, which held the first `old_rows` requests of `b`, with `b`, if it is
    /// still as this writer left it and still the newest block (so that a tail, which reads
    /// forward from the newest id it saw, sees the added requests); whether it was.
    pub(super) async fn extend_request_block(
        &self,
        id: i64,
        old_rows: u32,
        b: &Builder,
        s: &Sealed,
    ) -> StoreResult<bool> {
        self.timed(async {
            let mut tx = self.write_tx().await?;
            let done = bind_block(
                sqlx::query(
                    "UPDATE request_blocks SET row_count = $1, from_ms = $2, to_ms = $3, \
                     statuses = $4, refused = $5, bloom = $6, data = $7 \
                     WHERE id = $8 AND first_row = 0 AND row_count = $9 \
                     AND id = (SELECT MAX(id) FROM request_blocks)",
                ),
                b,
                s,
            )
            .bind(id)
            .bind(i64::from(old_rows))
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if done {
                insert_bodies(&mut tx, id, b, old_rows).await?;
                tx.commit().await?;
            }
            Ok::<_, sqlx::Error>(done)
        })
        .await
    }

    /// Up to `limit` matching requests, newest first: those with an id below `before_id` (the
    /// last id of the previous page), or from the newest.
    pub async fn requests_page(
        &self,
        q: &RequestQuery,
        before_id: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<RequestRow>> {
        self.scan(q, Order::Before(before_id.unwrap_or(i64::MAX)), limit)
            .await
    }

    /// Requests newer than `after_id`, oldest first (for a live tail).
    pub async fn requests_after(
        &self,
        q: &RequestQuery,
        after_id: i64,
        limit: u32,
    ) -> StoreResult<Vec<RequestRow>> {
        self.scan(q, Order::After(after_id.max(0)), limit).await
    }

    async fn scan(
        &self,
        q: &RequestQuery,
        order: Order,
        limit: u32,
    ) -> StoreResult<Vec<RequestRow>> {
        let matcher = Arc::new(Matcher::new(q.clone()));
        let limit = limit as usize;
        let mut cursor = match order {
            Order::Before(id) => split_id(id).0,
            Order::After(id) => split_id(id).0,
        };
        let sql = match order {
            Order::Before(_) => format!(
                "SELECT {SUMMARY_COLUMNS} FROM request_blocks WHERE id <= $1 \
                 AND to_ms >= $2 AND from_ms <= $3 ORDER BY id DESC LIMIT $4"
            ),
            Order::After(_) => format!(
                "SELECT {SUMMARY_COLUMNS} FROM request_blocks WHERE id >= $1 \
                 AND to_ms >= $2 AND from_ms <= $3 ORDER BY id ASC LIMIT $4"
            ),
        };
        let mut out: Vec<(RequestRow, bool)> = Vec::new();
        while out.len() < limit {
            let rows = self
                .timed(
                    sqlx::query(&sql)
                        .bind(cursor)
                        .bind(int(q.from_ms.unwrap_or(0)))
                        .bind(int(q.to_ms.unwrap_or(u64::MAX)))
                        .bind(SUMMARIES_PER_READ)
                        .fetch_all(&self.pool),
                )
                .await?;
            let Some(last) = rows.last() else { break };
            let last_id: i64 = last.try_get("id").map_err(db_err)?;
            for r in &rows {
                let b = Summary::read(r)?;
                if !matcher.may_match(&b) {
                    continue;
                }
                let data: Option<Vec<u8>> = self
                    .timed(
                        sqlx::query_scalar("SELECT data FROM request_blocks WHERE id = $1")
                            .bind(b.id)
                            .fetch_optional(&self.pool),
                    )
                    .await?;
                let Some(data) = data else { continue };
                let m = matcher.clone();
                let want = limit - out.len();
                let found =
                    tokio::task::spawn_blocking(move || open_block(&b, &data, &m, order, want))
                        .await
                        .map_err(db_err)??;
                out.extend(found);
                if out.len() >= limit {
                    break;
                }
            }
            cursor = match order {
                Order::Before(_) if last_id > 0 => last_id - 1,
                Order::Before(_) => break,
                Order::After(_) => last_id + 1,
            };
        }
        out.truncate(limit);
        self.with_bodies(out).await
    }

    /// Fills in the bodies of the rows that kept some.
    async fn with_bodies(&self, rows: Vec<(RequestRow, bool)>) -> StoreResult<Vec<RequestRow>> {
        let ids: Vec<i64> = rows.iter().filter(|r| r.1).map(|r| r.0.id).collect();
        let mut bodies: HashMap<i64, (String, String)> = HashMap::new();
        for chunk in ids.chunks(500) {
            let list = (1..=chunk.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT id, request_body, response_body FROM request_bodies WHERE id IN ({list})"
            );
            let query = chunk.iter().fold(sqlx::query(&sql), |q, id| q.bind(*id));
            for r in self.timed(query.fetch_all(&self.pool)).await? {
                bodies.insert(
                    r.try_get("id").map_err(db_err)?,
                    (
                        r.try_get("request_body").map_err(db_err)?,
                        r.try_get("response_body").map_err(db_err)?,
                    ),
                );
            }
        }
        Ok(rows
            .into_iter()
            .map(|(mut row, _)| {
                if let Some((request, response)) = bodies.remove(&row.id) {
                    row.request_body = Some(request);
                    row.response_body = Some(response);
                }
                row
            })
            .collect())
    }

    /// Deletes requests older than `before_ms` (whole blocks whose newest request is older)
    /// and all but the newest `keep` (the oldest block kept loses its oldest requests); how
    /// many went.
    pub async fn prune_requests(
        &self,
        before_ms: Option<u64>,
        keep: Option<u64>,
    ) -> StoreResult<u64> {
        let mut gone = 0u64;
        if let Some(before) = before_ms {
            let counts: Vec<i64> = self
                .timed(
                    sqlx::query_scalar(
                        "DELETE FROM request_blocks WHERE to_ms < $1 RETURNING row_count",
                    )
                    .bind(int(before))
                    .fetch_all(&self.pool),
                )
                .await?;
            gone += counts.iter().map(|n| n.max(&0).unsigned_abs()).sum::<u64>();
        }
        if let Some(keep) = keep {
            gone += self.keep_newest(keep).await?;
        }
        // The bodies of requests no longer in the log.
        let oldest = self
            .timed(
                sqlx::query("SELECT id, first_row FROM request_blocks ORDER BY id ASC LIMIT 1")
                    .fetch_optional(&self.pool),
            )
            .await?;
        let below = match oldest {
            Some(r) => row_id(
                r.try_get("id").map_err(db_err)?,
                r.try_get::<i64, _>("first_row").map_err(db_err)?.max(0) as u32,
            ),
            None => i64::MAX,
        };
        self.timed(
            sqlx::query("DELETE FROM request_bodies WHERE id < $1")
                .bind(below)
                .execute(&self.pool),
        )
        .await?;
        Ok(gone)
    }

    /// Keeps the newest `keep` requests; how many went.
    async fn keep_newest(&self, keep: u64) -> StoreResult<u64> {
        let heads = self
            .timed(
                sqlx::query("SELECT id, first_row, row_count FROM request_blocks ORDER BY id DESC")
                    .fetch_all(&self.pool),
            )
            .await?;
        let mut kept = 0u64;
        for (i, r) in heads.iter().enumerate() {
            let id: i64 = r.try_get("id").map_err(db_err)?;
            let first: i64 = r.try_get("first_row").map_err(db_err)?;
            let rows = r.try_get::<i64, _>("row_count").map_err(db_err)?.max(0) as u64;
            if kept + rows <= keep {
                kept += rows;
                continue;
            }
            // This block keeps its newest `keep - kept` requests; every older block goes.
            let older: u64 = heads[i + 1..]
                .iter()
                .map(|r| {
                    r.try_get::<i64, _>("row_count")
                        .map_or(0, |n| n.max(0) as u64)
                })
                .sum();
            let drop = rows - (keep - kept);
            if drop == rows {
                self.delete_blocks_to(id).await?;
            } else {
                self.delete_blocks_to(id - 1).await?;
                self.trim_block(id, first, rows, drop).await?;
            }
            return Ok(older + drop);
        }
        Ok(0)
    }

    async fn delete_blocks_to(&self, id: i64) -> StoreResult<()> {
        self.timed(
            sqlx::query("DELETE FROM request_blocks WHERE id <= $1")
                .bind(id)
                .execute(&self.pool),
        )
        .await?;
        Ok(())
    }

    /// Drops the oldest `drop` requests of block `id` (which held `rows` from `first`).
    async fn trim_block(&self, id: i64, first: i64, rows: u64, drop: u64) -> StoreResult<()> {
        let data: Option<Vec<u8>> = self
            .timed(
                sqlx::query_scalar("SELECT data FROM request_blocks WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool),
            )
            .await?;
        let Some(data) = data else { return Ok(()) };
        let data = codec::without_first(&data, drop as u32).map_err(db_err)?;
        self.timed(
            sqlx::query(
                "UPDATE request_blocks SET first_row = $1, row_count = $2, data = $3 \
                 WHERE id = $4 AND first_row = $5 AND row_count = $6",
            )
            .bind(first + drop as i64)
            .bind((rows - drop) as i64)
            .bind(&data[..])
            .bind(id)
            .bind(first)
            .bind(rows as i64)
            .execute(&self.pool),
        )
        .await?;
        Ok(())
    }
}

/// Binds a block's columns, in the order both writes name them: row count, time span,
/// statuses, refusals, Bloom filter, data.
fn bind_block<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    b: &Builder,
    s: &'q Sealed,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    q.bind(i64::from(b.rows))
        .bind(int(b.from_ms))
        .bind(int(b.to_ms))
        .bind(i64::from(b.statuses))
        .bind(i64::from(b.refused))
        .bind(&s.bloom[..])
        .bind(&s.data[..])
}

/// The bodies `b` kept from its `from`-th request on, under their requests' ids.
async fn insert_bodies(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    block: i64,
    b: &Builder,
    from: u32,
) -> Result<(), sqlx::Error> {
    for (i, request, response) in b.bodies.iter().filter(|(i, ..)| *i >= from) {
        sqlx::query(
            "INSERT INTO request_bodies (id, request_body, response_body) VALUES ($1, $2, $3)",
        )
        .bind(row_id(block, *i))
        .bind(request.as_str())
        .bind(response.as_str())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// The matching requests of one block, in the scan's order, at most `want`; each with whether
/// it kept bodies.
fn open_block(
    b: &Summary,
    data: &[u8],
    m: &Matcher,
    order: Order,
    want: usize,
) -> StoreResult<Vec<(RequestRow, bool)>> {
    let rows = codec::rows(data).map_err(db_err)?;
    let ids = (0..rows.len()).map(|i| row_id(b.id, b.first_row + i as u32));
    let hit = |(id, r): &(i64, &codec::Row<'_>)| match order {
        Order::Before(before) => *id < before && m.matches(r),
        Order::After(after) => *id > after && m.matches(r),
    };
    let found: Vec<(RequestRow, bool)> = match order {
        Order::Before(_) => ids
            .zip(rows.iter())
            .rev()
            .filter(hit)
            .take(want)
            .map(|(id, r)| (r.record(id), r.captured))
            .collect(),
        Order::After(_) => ids
            .zip(rows.iter())
            .filter(hit)
            .take(want)
            .map(|(id, r)| (r.record(id), r.captured))
            .collect(),
    };
    Ok(found)
}

//! CSV and NDJSON exports of the admin API, streamed: rows are read a page at a time by id, newest first
//! (keyset paging: each page asks for ids below the last one sent), encoded (RFC 4180, a header
//! row) and sent before the next page is read. An export of any size holds one page in memory
//! and no database connection between pages. A database failure mid-way cuts the download off
//! (the client sees an incomplete body) and is logged.

use std::future::Future;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::state::StoreResult;

/// Rows read per database round trip of an export.
pub const EXPORT_PAGE: u32 = 1000;

/// A row of an export: its id (the paging cursor) and its fields in header order.
pub trait CsvRow: Send + 'static {
    fn id(&self) -> i64;
    fn fields(&self) -> Vec<String>;
}

/// Unix ms as RFC 3339 UTC with milliseconds.
pub fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

fn encode<R: CsvRow>(header: Option<&[&str]>, rows: &[R]) -> Result<Bytes, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::with_capacity(rows.len() * 128));
    if let Some(h) = header {
        w.write_record(h)?;
    }
    for r in rows {
        w.write_record(r.fields())?;
    }
    w.into_inner()
        .map(Bytes::from)
        .map_err(|e| e.into_error().into())
}

struct Cursor<F, E> {
    fetch: F,
    encode: E,
    before: Option<i64>,
    first: bool,
    done: bool,
}

/// The `text/csv` attachment `filename`, its rows from `fetch(before_id)` (a page of rows with
/// ids below `before_id`, newest first; `None` for the first page).
pub fn csv_response<R, F, Fut>(
    filename: &'static str,
    header: &'static [&'static str],
    fetch: F,
) -> Response
where
    R: CsvRow,
    F: FnMut(Option<i64>) -> Fut + Send + 'static,
    Fut: Future<Output = StoreResult<Vec<R>>> + Send + 'static,
{
    paged_response(
        filename,
        "text/csv; charset=utf-8",
        fetch,
        move |rows: &[R], first: bool| encode(first.then_some(header), rows).map_err(Into::into),
    )
}

/// The same rows as NDJSON (one JSON object per line, no header): `application/x-ndjson`.
pub fn ndjson_response<R, F, Fut>(filename: &'static str, fetch: F) -> Response
where
    R: CsvRow + serde::Serialize,
    F: FnMut(Option<i64>) -> Fut + Send + 'static,
    Fut: Future<Output = StoreResult<Vec<R>>> + Send + 'static,
{
    paged_response(filename, "application/x-ndjson", fetch, |rows: &[R], _| {
        let mut out = Vec::with_capacity(rows.len() * 256);
        for r in rows {
            serde_json::to_writer(&mut out, r)?;
            out.push(b'\n');
        }
        Ok(Bytes::from(out))
    })
}

type EncodeError = Box<dyn std::error::Error + Send + Sync>;

/// An attachment streamed page by page: `fetch` reads a page, `encode` turns it into bytes
/// (told whether it is the first).
fn paged_response<R, F, Fut, E>(
    filename: &'static str,
    content_type: &'static str,
    fetch: F,
    encode: E,
) -> Response
where
    R: CsvRow,
    F: FnMut(Option<i64>) -> Fut + Send + 'static,
    Fut: Future<Output = StoreResult<Vec<R>>> + Send + 'static,
    E: FnMut(&[R], bool) -> Result<Bytes, EncodeError> + Send + 'static,
{
    let start = Cursor {
        fetch,
        encode,
        before: None,
        first: true,
        done: false,
    };
    let pages = futures_util::stream::unfold(start, |mut c| async move {
        if c.done {
            return None;
        }
        let rows = match (c.fetch)(c.before).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "export failed");
                c.done = true;
                return Some((Err(std::io::Error::other("export failed")), c));
            }
        };
        c.done = rows.len() < EXPORT_PAGE as usize;
        c.before = rows.last().map(CsvRow::id);
        let page = (c.encode)(&rows, c.first).map_err(std::io::Error::other);
        c.first = false;
        Some((page, c))
    });
    (
        [
            (http::header::CONTENT_TYPE, content_type.to_owned()),
            (
                http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        axum::body::Body::from_stream(pages),
    )
        .into_response()
}

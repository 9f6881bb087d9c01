//! The first server-sent event of a streamed response, read ahead before the response head is
//! relayed: quota policies judge a `200` stream by it (an error event inside a 200). What was
//! read is relayed unchanged afterwards (`body::Prefixed`), so nothing is lost or reordered.

use bytes::Bytes;
use http_body::Body;

/// Largest amount read ahead to find a stream's first event.
pub const MAX_BOOTSTRAP: usize = 64 << 10;

/// Reads `body` until the first complete server-sent event (or its end, or [`MAX_BOOTSTRAP`]).
/// Returns what was read and the first event's `data` (lines joined with `\n`), if complete.
pub async fn read_first_event<B>(body: &mut B) -> Result<(Bytes, Option<String>), B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    use http_body_util::BodyExt;
    let mut buf = bytes::BytesMut::new();
    while buf.len() < MAX_BOOTSTRAP {
        let Some(frame) = body.frame().await.transpose()? else {
            break;
        };
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
        }
        if let Some(end) = find_event_end(&buf) {
            let event = first_event_data(&buf[..end]);
            return Ok((buf.freeze(), Some(event)));
        }
    }
    Ok((buf.freeze(), None))
}

/// Splits `buf` into lines as the SSE format does: a line ends at CRLF, LF or a lone CR. Yields
/// each line and the index just past its terminator; a last line without a terminator is not
/// yielded (more bytes may complete it).
fn sse_lines(buf: &[u8]) -> impl Iterator<Item = (&[u8], usize)> {
    let mut start = 0;
    std::iter::from_fn(move || {
        let rel = buf[start..]
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')?;
        let end = start + rel;
        let next = if buf[end] == b'\r' && buf.get(end + 1) == Some(&b'\n') {
            end + 2
        } else {
            end + 1
        };
        let line = &buf[start..end];
        start = next;
        Some((line, next))
    })
}

/// The end (just past its blank line) of the first complete event, ignoring blank lines before
/// any field.
fn find_event_end(buf: &[u8]) -> Option<usize> {
    let mut fields = false;
    for (line, next) in sse_lines(buf) {
        if !line.is_empty() {
            fields = true;
        } else if fields {
            return Some(next);
        }
    }
    None
}

fn first_event_data(event: &[u8]) -> String {
    let mut data: Vec<&[u8]> = Vec::new();
    for (line, _) in sse_lines(event) {
        if let Some(d) = line.strip_prefix(b"data:") {
            data.push(d.strip_prefix(b" ").unwrap_or(d));
        }
    }
    String::from_utf8_lossy(&data.join(&b'\n')).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::body::Prefixed;
    use http_body::Frame;
    use http_body_util::{BodyExt, StreamBody};

    #[tokio::test]
    async fn the_first_event_is_found_and_nothing_is_lost() {
        let chunks = ["data: {\"a\"", ":1}\n\nda", "ta: 2\n\n"];
        let frames = futures_util::stream::iter(
            chunks.map(|c| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(c)))),
        );
        let mut body = StreamBody::new(frames);
        let (read, event) = read_first_event(&mut body).await.unwrap();
        assert_eq!(event.as_deref(), Some("{\"a\":1}"));
        let all = Prefixed::new(read, body)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(all, chunks.concat());
    }

    fn chunked(
        chunks: Vec<Vec<u8>>,
    ) -> impl Body<Data = Bytes, Error = std::convert::Infallible> + Unpin {
        StreamBody::new(futures_util::stream::iter(chunks.into_iter().map(|c| {
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(c)))
        })))
    }

    #[tokio::test]
    async fn events_end_at_any_line_ending_the_sse_format_allows() {
        for (stream, first) in [
            ("data: a\n\ndata: b\n\n", "a"),
            ("data: a\r\n\r\ndata: b\r\n\r\n", "a"),
            ("data: a\r\rdata: b\r\r", "a"),
            ("data: a\rdata: c\r\n\ndata: b\n\n", "a\nc"),
            ("\n\r\nevent: x\ndata:a\n\n", "a"),
        ] {
            let mut body = chunked(vec![stream.as_bytes().to_vec()]);
            let (_, event) = read_first_event(&mut body).await.unwrap();
            assert_eq!(event.as_deref(), Some(first), "{stream:?}");
        }
        let mut body = chunked(vec![b"data: a\n".to_vec()]);
        assert_eq!(read_first_event(&mut body).await.unwrap().1, None);
    }

    proptest::proptest! {
        /// However the stream is cut into frames and whichever line endings it uses, the first
        /// event is found and every byte is relayed unchanged.
        #[test]
        fn the_first_event_survives_any_framing(
            events in proptest::collection::vec(
                proptest::collection::vec("[a-z0-9{}\":, ]{0,12}", 1..3), 1..4),
            ending in 0usize..3,
            cuts in proptest::collection::vec(1usize..40, 0..10),
        ) {
            let eol = ["\n", "\r\n", "\r"][ending];
            let mut text = String::new();
            for lines in &events {
                for l in lines {
                    text.push_str(&format!("data: {l}{eol}"));
                }
                text.push_str(eol);
            }
            let bytes = text.as_bytes().to_vec();
            let mut chunks = Vec::new();
            let mut at = 0;
            for c in cuts {
                if at >= bytes.len() { break; }
                let end = (at + c).min(bytes.len());
                chunks.push(bytes[at..end].to_vec());
                at = end;
            }
            if at < bytes.len() { chunks.push(bytes[at..].to_vec()); }
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let (read, event, all) = rt.block_on(async {
                let mut body = chunked(chunks);
                let (read, event) = read_first_event(&mut body).await.unwrap();
                let all = Prefixed::new(read.clone(), body).collect().await.unwrap().to_bytes();
                (read, event, all)
            });
            proptest::prop_assert_eq!(event, Some(events[0].join("\n")));
            proptest::prop_assert_eq!(all.as_ref(), bytes.as_slice());
            proptest::prop_assert!(read.len() <= bytes.len());
        }
    }
}

//! The client socket as the connection sees it: reports write stalls and HTTP/1 reads to the
//! [`ConnWatch`], and gives hyper's own HTTP/1 error answers the OpenAI error shape.
//!
//! hyper answers a request head it cannot parse (400), one that is too large (431) or whose URI
//! is too long (414) itself, with an empty body, before any service runs. Such an answer is
//! recognised on its way out — an HTTP/1 response head with status 4xx/5xx, `content-length: 0`
//! and no `x-request-id` (every answer of the gateway's own carries one) — and replaced by the
//! same status with a JSON body, the headers the plane puts on every answer
//! ([`Handler::socket_error_headers`]: the data plane's security headers) and `connection: close`
//! (hyper closes the connection after it anyway). Only HTTP/1 connections are inspected; HTTP/2
//! errors are frames, not responses.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Handler;
use super::watch::ConnWatch;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    Unknown,
    Http1,
    Http2,
}

pub struct ClientIo<T, H> {
    inner: T,
    watch: Arc<ConnWatch>,
    /// Asked for the headers of a replacement answer (rarely: only when one is written).
    handler: H,
    tls: bool,
    proto: Proto,
    /// A replacement answer being written: the bytes, how many are written, and how many bytes
    /// of hyper's answer it stands for.
    replacing: Option<(Vec<u8>, usize, usize)>,
}

impl<T, H> ClientIo<T, H> {
    /// `h2` is true when ALPN already chose HTTP/2.
    pub fn new(inner: T, watch: Arc<ConnWatch>, handler: H, tls: bool, h2: bool) -> Self {
        Self {
            inner,
            watch,
            handler,
            tls,
            proto: if h2 { Proto::Http2 } else { Proto::Unknown },
            replacing: None,
        }
    }
}

impl<T: AsyncRead + Unpin, H: Handler> AsyncRead for ClientIo<T, H> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        if read.is_empty() {
            return Poll::Ready(Ok(()));
        }
        if self.proto == Proto::Unknown {
            let n = read.len().min(H2_PREFACE.len());
            self.proto = if read[..n] == H2_PREFACE[..n] {
                Proto::Http2
            } else {
                Proto::Http1
            };
        }
        if self.proto == Proto::Http1 {
            self.watch.http1_read();
        }
        Poll::Ready(Ok(()))
    }
}

/// hyper's automatic answer to a bad request head, if `head` is one: its status.
fn automatic_error_status(head: &[u8]) -> Option<u16> {
    if head.len() < 12 || !(head.starts_with(b"HTTP/1.1 ") || head.starts_with(b"HTTP/1.0 ")) {
        return None;
    }
    if !matches!(head[9], b'4' | b'5') {
        return None;
    }
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    let text = std::str::from_utf8(&head[..end]).ok()?;
    let mut lines = text.split("\r\n");
    let status: u16 = lines.next()?.get(9..12)?.parse().ok()?;
    let mut empty = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        if name.eq_ignore_ascii_case("x-request-id") {
            return None;
        }
        if name.eq_ignore_ascii_case("content-length") {
            empty = value.trim() == "0";
        }
    }
    empty.then_some(status)
}

/// The JSON answer that replaces hyper's empty one; `extra` is header lines (`name: value\r\n`).
fn replacement(status: u16, extra: &[u8]) -> Vec<u8> {
    let (message, code) = match status {
        431 => (
            "request header fields too large",
            "request_header_fields_too_large",
        ),
        414 => ("request URI too long", "uri_too_long"),
        408 => ("request head not received in time", "request_timeout"),
        505 => ("HTTP version not supported", "http_version_not_supported"),
        _ => ("malformed HTTP request", "bad_request"),
    };
    let body = crate::error::error_body(message, "invalid_request_error", code);
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(extra);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    out
}

impl<T: AsyncWrite + Unpin, H: Handler> ClientIo<T, H> {
    /// Writes the pending replacement; ready with the length of hyper's answer once all is out.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        while let Some((bytes, written, _)) = self.replacing.as_mut() {
            if *written == bytes.len() {
                let (_, _, stands_for) = self.replacing.take().expect("checked");
                return Poll::Ready(Ok(stands_for));
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    *written += n;
                    self.watch.write_progressed();
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.watch.write_blocked();
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(0))
    }

    fn note(&self, r: &Poll<io::Result<usize>>) {
        match r {
            Poll::Pending => self.watch.write_blocked(),
            Poll::Ready(Ok(n)) if *n > 0 => self.watch.write_progressed(),
            _ => {}
        }
    }

    /// Starts replacing `head` if it is hyper's automatic error answer.
    fn intercept(&mut self, head: &[u8]) -> bool {
        if self.proto != Proto::Http1 || self.replacing.is_some() {
            return false;
        }
        match automatic_error_status(head) {
            Some(status) => {
                let extra = self.handler.socket_error_headers(self.tls);
                self.replacing = Some((replacement(status, &extra), 0, head.len()));
                true
            }
            None => false,
        }
    }
}

impl<T: AsyncWrite + Unpin, H: Handler> AsyncWrite for ClientIo<T, H> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.replacing.is_some() || this.intercept(buf) {
            return this.poll_replacement(cx);
        }
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.note(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // Only a 4xx/5xx head can be hyper's automatic answer: every other response goes out
        // without a look (and without a copy).
        if this.replacing.is_none()
            && this.proto == Proto::Http1
            && bufs.first().is_some_and(|b| {
                b.len() > 9 && b.starts_with(b"HTTP/1.") && matches!(b[9], b'4' | b'5')
            })
        {
            if bufs[0].windows(4).any(|w| w == b"\r\n\r\n") {
                this.intercept(&bufs[0]);
            } else {
                this.intercept(&bufs.iter().map(|b| &**b).collect::<Vec<&[u8]>>().concat());
            }
        }
        if this.replacing.is_some() {
            return this.poll_replacement(cx);
        }
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.note(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_empty_error_heads_are_recognised() {
        let auto =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        assert_eq!(automatic_error_status(auto), Some(431));
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-request-id: abc\r\n\r\n";
        assert_eq!(automatic_error_status(ours), None);
        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n";
        assert_eq!(automatic_error_status(with_body), None);
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(automatic_error_status(ok), None);
        let text = String::from_utf8(replacement(414, b"x-frame-options: DENY\r\n")).unwrap();
        assert!(text.starts_with("HTTP/1.1 414 URI Too Long\r\n"));
        assert!(
            text.contains("\r\nx-frame-options: DENY\r\n\r\n{"),
            "{text}"
        );
        assert!(text.contains(r#""code":"uri_too_long""#), "{text}");
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        assert!(text.contains(&format!("content-length: {}\r\n", body.len())));
    }
}

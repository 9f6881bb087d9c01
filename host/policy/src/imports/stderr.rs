//! The guest's stderr: the last [`STDERR_KEPT`] bytes it wrote, so a trap's error can say what
//! the plugin printed before it died (a Rust panic message, a Python traceback, a JavaScript
//! exception). Writes always succeed and never block; older bytes are dropped.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Bytes of stderr kept per instance.
pub const STDERR_KEPT: usize = 16 << 10;
/// Characters of it attached to an error: the end, where a panic message or a traceback's last
/// line is.
const STDERR_SHOWN: usize = 1024;

/// A bounded tail of what was written; clones share it.
#[derive(Clone, Default)]
pub struct StderrTail(Arc<Mutex<Vec<u8>>>);

impl StderrTail {
    fn push(&self, bytes: &[u8]) {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        kept.extend_from_slice(bytes);
        if kept.len() > STDERR_KEPT {
            let excess = kept.len() - STDERR_KEPT;
            kept.drain(..excess);
        }
    }

    /// The end of what was written, as text (empty if nothing).
    pub fn text(&self) -> String {
        let kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let text = String::from_utf8_lossy(&kept);
        let text = text.trim();
        match text.char_indices().rev().nth(STDERR_SHOWN - 1) {
            Some((i, _)) => format!("…{}", &text[i..]),
            None => text.to_owned(),
        }
    }
}

impl IsTerminal for StderrTail {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for StderrTail {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl OutputStream for StderrTail {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(STDERR_KEPT)
    }
}

#[async_trait::async_trait]
impl Pollable for StderrTail {
    async fn ready(&mut self) {}
}

impl AsyncWrite for StderrTail {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_bytes_and_shows_the_end() {
        let t = StderrTail::default();
        assert_eq!(t.text(), "");
        t.push(b"first line\n");
        t.push(&vec![b'x'; STDERR_KEPT]);
        t.push(b"\npanicked at the end\n");
        assert_eq!(t.0.lock().unwrap().len(), STDERR_KEPT);
        let text = t.text();
        assert!(
            text.starts_with('…') && text.ends_with("panicked at the end"),
            "{text}"
        );
        assert_eq!(text.chars().count(), STDERR_SHOWN + 1);
        assert!(!text.contains("first line"));
    }
}

//! Captured guest stdout and stderr: the first N bytes are kept, the rest counted and dropped.
//!
//! wasmtime-wasi's `MemoryOutputPipe` fails the guest's write once its capacity is reached,
//! which makes an ordinary `println!` panic. A task that prints too much should keep running
//! with its output truncated (as Nomad and Mesos cap task logs), so this stream accepts every
//! write, keeps a bounded prefix and remembers that it dropped bytes.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// A cloneable handle to one captured stream; all clones share the buffer.
#[derive(Clone)]
pub(crate) struct CappedOutput {
    inner: Arc<Mutex<Captured>>,
}

#[derive(Default)]
struct Captured {
    kept: Vec<u8>,
    cap: usize,
    total: u64,
}

/// The largest single write permit handed to the guest; writes are accepted whole anyway.
const WRITE_PERMIT: usize = 1 << 20;

impl CappedOutput {
    pub(crate) fn new(cap: u64) -> Self {
        let cap = usize::try_from(cap).unwrap_or(usize::MAX);
        Self {
            inner: Arc::new(Mutex::new(Captured {
                kept: Vec::new(),
                cap,
                total: 0,
            })),
        }
    }

    fn accept(&self, data: &[u8]) {
        let mut captured = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        captured.total += data.len() as u64;
        let room = captured.cap.saturating_sub(captured.kept.len());
        let keep = room.min(data.len());
        captured.kept.extend_from_slice(&data[..keep]);
    }

    /// The kept bytes and whether anything was dropped.
    pub(crate) fn take(&self) -> (Vec<u8>, bool) {
        let mut captured = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let truncated = captured.total > captured.kept.len() as u64;
        (std::mem::take(&mut captured.kept), truncated)
    }
}

impl IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for CappedOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.accept(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for CappedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.accept(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_prefix_and_flags_truncation() {
        let out = CappedOutput::new(5);
        let mut stream = out.p2_stream();
        stream.write(Bytes::from_static(b"abc")).unwrap();
        stream.write(Bytes::from_static(b"defgh")).unwrap();
        assert_eq!(out.take(), (b"abcde".to_vec(), true));
    }

    #[test]
    fn exactly_at_the_cap_is_not_truncated() {
        let out = CappedOutput::new(3);
        out.p2_stream().write(Bytes::from_static(b"abc")).unwrap();
        assert_eq!(out.take(), (b"abc".to_vec(), false));
    }
}

//! A guest's standard output or error, kept in memory up to a capacity (as
//! wasmtime's `MemoryOutputPipe`), and shown as it is written to a tap:
//! what turns lines into log records joined to the span current when they
//! were written.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi_io::poll::Pollable;
use wasmtime_wasi_io::streams::{OutputStream, StreamError};

use crate::sync::lock;

/// One of a guest's two output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GuestStream {
    Stdout,
    Stderr,
}

/// Sees every byte a guest writes to its standard output and error, as it
/// is written. One tap serves both streams, so tapping a store costs no
/// allocation of its own.
pub(crate) trait OutputTap: Send + Sync {
    fn written(&self, stream: GuestStream, bytes: &[u8]);
}

/// An in-memory output stream of bounded capacity, with an optional tap.
#[derive(Clone)]
pub(crate) struct OutputPipe {
    capacity: usize,
    buffer: Arc<Mutex<BytesMut>>,
    stream: GuestStream,
    tap: Option<Arc<dyn OutputTap>>,
}

impl OutputPipe {
    pub(crate) fn new(
        capacity: usize,
        stream: GuestStream,
        tap: Option<Arc<dyn OutputTap>>,
    ) -> Self {
        Self {
            capacity,
            buffer: Arc::new(Mutex::new(BytesMut::new())),
            stream,
            tap,
        }
    }

    /// Everything written so far.
    pub(crate) fn contents(&self) -> Bytes {
        lock(&self.buffer).clone().freeze()
    }

    /// Keeps as much of `bytes` as fits; how much that was.
    fn keep(&self, bytes: &[u8]) -> usize {
        let mut buffer = lock(&self.buffer);
        let kept = bytes.len().min(self.capacity - buffer.len());
        buffer.extend_from_slice(&bytes[..kept]);
        drop(buffer);
        if let Some(tap) = &self.tap
            && kept > 0
        {
            tap.written(self.stream, &bytes[..kept]);
        }
        kept
    }
}

#[wasmtime_wasi_io::async_trait]
impl OutputStream for OutputPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        if bytes.len() > self.capacity - lock(&self.buffer).len() {
            return Err(StreamError::Trap(wasmtime::format_err!(
                "the task wrote more than its {} bytes of output",
                self.capacity
            )));
        }
        self.keep(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        let used = lock(&self.buffer).len();
        if used < self.capacity {
            Ok(self.capacity - used)
        } else {
            Err(StreamError::Closed)
        }
    }
}

#[wasmtime_wasi_io::async_trait]
impl Pollable for OutputPipe {
    async fn ready(&mut self) {}
}

impl AsyncWrite for OutputPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(self.keep(buf)))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for OutputPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

//! The wall-time budget of a guest, and how a guest stopped by the host
//! carries the reason out of wasmtime.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use super::Sandboxed;
use crate::outcome::TaskErrorKind;

/// A guest stopped by the host: a limit it reached, or an interruption.
/// Carried inside the wasmtime error so the task's failure can name it.
#[derive(Debug)]
pub(crate) struct Stopped {
    pub(crate) kind: TaskErrorKind,
    pub(crate) message: String,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Stopped {}

impl Stopped {
    pub(crate) fn error(kind: TaskErrorKind, message: String) -> wasmtime::Error {
        wasmtime::Error::new(Self { kind, message })
    }
}

/// When a guest must stop: its wall-time budget, and an abort flag its
/// worker sets when shutting down. Checked at every epoch tick (10 ms) while
/// the guest computes, and while it waits in a blocking host call.
#[derive(Debug, Clone)]
pub(crate) struct Deadline {
    at: Instant,
    budget: Duration,
    flag: &'static str,
    abort: Option<Arc<AtomicBool>>,
}

impl Deadline {
    /// `budget` from now; `flag` is the option that raises it.
    pub(crate) fn new(
        budget: Duration,
        flag: &'static str,
        abort: Option<Arc<AtomicBool>>,
    ) -> Self {
        Self {
            at: Instant::now() + budget,
            budget,
            flag,
            abort,
        }
    }

    /// An error if the guest must stop now.
    pub(crate) fn check(&self, doing: &str) -> wasmtime::Result<()> {
        if self
            .abort
            .as_ref()
            .is_some_and(|a| a.load(Ordering::Relaxed))
        {
            return Err(Stopped::error(
                TaskErrorKind::Interrupted,
                format!("interrupted{doing}: the worker is shutting down"),
            ));
        }
        if Instant::now() >= self.at {
            return Err(Stopped::error(
                TaskErrorKind::Timeout,
                format!(
                    "timed out after {:?}{doing} (raise the limit with {})",
                    self.budget, self.flag
                ),
            ));
        }
        Ok(())
    }

    /// Runs a blocking host operation, giving up when the deadline passes or
    /// the worker aborts.
    pub(crate) fn wait<F: std::future::Future>(
        &self,
        doing: &str,
        operation: F,
    ) -> wasmtime::Result<F::Output> {
        self.check(doing)?;
        wasmtime_wasi::runtime::in_tokio(async {
            let mut operation = std::pin::pin!(operation);
            // Most operations are done at once (a write to captured stdout):
            // they need no timer.
            let first = std::future::poll_fn(|cx| Poll::Ready(operation.as_mut().poll(cx))).await;
            if let Poll::Ready(done) = first {
                return Ok(done);
            }
            let mut ticks = tokio::time::interval(crate::runtime::EPOCH_TICK);
            loop {
                tokio::select! {
                    done = &mut operation => return Ok(done),
                    _ = ticks.tick() => self.check(doing)?,
                }
            }
        })
    }
}

/// Arms a store's deadline: the guest traps once it passes, checked at
/// every epoch tick.
pub(crate) fn arm_deadline<T: Sandboxed>(store: &mut wasmtime::Store<T>) {
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut store| {
        store.data().deadline().check("")?;
        if let Some(mut profiler) = store.data_mut().profiler().take() {
            profiler.sample(&store, crate::runtime::EPOCH_TICK);
            *store.data_mut().profiler() = Some(profiler);
        }
        Ok(wasmtime::UpdateDeadline::Continue(1))
    });
}

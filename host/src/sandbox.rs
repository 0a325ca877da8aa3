//! What a guest's store holds and may reach: deny-by-default WASI, captured
//! output, a memory limiter, and the span bridge.

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bridge::{self, Bridge, SpanBridge};
use crate::nested::{self, Tasks, TasksState};
use crate::provider::{self, Provider, ProviderState};

/// The data of every store wtrace creates.
pub(crate) struct StoreState {
    wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) bridge: SpanBridge,
    pub(crate) provider: Option<ProviderState>,
    pub(crate) tasks: TasksState,
    pub(crate) memory: MemoryLimiter,
}

impl StoreState {
    pub(crate) fn new(
        wasi: WasiCtx,
        bridge: SpanBridge,
        tasks: TasksState,
        memory_limit: u64,
    ) -> Self {
        Self {
            wasi,
            table: ResourceTable::new(),
            bridge,
            provider: None,
            tasks,
            memory: MemoryLimiter::new(memory_limit),
        }
    }

    fn bridge(&mut self) -> Bridge<'_> {
        Bridge {
            table: &mut self.table,
            state: &mut self.bridge,
        }
    }

    fn tasks(&mut self) -> Tasks<'_> {
        Tasks {
            table: &mut self.table,
            bridge: &self.bridge,
            state: &mut self.tasks,
        }
    }

    fn provider(&mut self) -> Provider<'_> {
        Provider {
            state: self
                .provider
                .as_mut()
                .expect("the provider interface is linked only into hook stores"),
        }
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The linker for tasks: WASI, `wtrace:tracing/tracer` and `tasks`.
pub(crate) fn task_linker(engine: &Engine) -> wasmtime::Result<Linker<StoreState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    bridge::add_to_linker(&mut linker, StoreState::bridge)?;
    nested::add_to_linker(&mut linker, StoreState::tasks)?;
    Ok(linker)
}

/// The linker for tracing startup hooks: WASI, `tracer` and `provider`.
pub(crate) fn hook_linker(engine: &Engine) -> wasmtime::Result<Linker<StoreState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    bridge::add_to_linker(&mut linker, StoreState::bridge)?;
    provider::add_to_linker(&mut linker, StoreState::provider)?;
    Ok(linker)
}

/// A guest's captured standard output and error.
#[derive(Clone)]
pub(crate) struct CapturedOutput {
    pub(crate) stdout: MemoryOutputPipe,
    pub(crate) stderr: MemoryOutputPipe,
}

impl CapturedOutput {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            stdout: MemoryOutputPipe::new(capacity),
            stderr: MemoryOutputPipe::new(capacity),
        }
    }
}

/// A WASI context that grants nothing but clocks, random and the captured
/// output, plus the given environment variables.
pub(crate) fn wasi_ctx<'a>(
    output: &CapturedOutput,
    env: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> WasiCtx {
    let mut builder = WasiCtxBuilder::new();
    builder
        .stdout(output.stdout.clone())
        .stderr(output.stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    for (key, value) in env {
        builder.env(key, value);
    }
    builder.build()
}

/// A guest stopped by the host: a limit it reached, or an interruption.
/// Carried inside the wasmtime error so the task's failure can name it.
#[derive(Debug)]
pub(crate) struct Stopped {
    pub(crate) kind: crate::task::TaskErrorKind,
    pub(crate) message: String,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Stopped {}

impl Stopped {
    pub(crate) fn error(kind: crate::task::TaskErrorKind, message: String) -> wasmtime::Error {
        wasmtime::Error::new(Self { kind, message })
    }
}

/// Arms a store's deadline: the guest traps once `budget` has passed, or as
/// soon as `abort` is set, checked every epoch tick (10 ms).
pub(crate) fn arm_deadline(
    store: &mut wasmtime::Store<StoreState>,
    budget: std::time::Duration,
    flag: &'static str,
    abort: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
) {
    use crate::task::TaskErrorKind;
    let deadline = std::time::Instant::now() + budget;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if abort
            .as_ref()
            .is_some_and(|a| a.load(std::sync::atomic::Ordering::Relaxed))
        {
            return Err(Stopped::error(
                TaskErrorKind::Interrupted,
                "interrupted: the worker is shutting down".into(),
            ));
        }
        if std::time::Instant::now() >= deadline {
            return Err(Stopped::error(
                TaskErrorKind::Timeout,
                format!("timed out after {budget:?} (raise the limit with {flag})"),
            ));
        }
        Ok(wasmtime::UpdateDeadline::Continue(1))
    });
}

/// Refuses memory growth past the limit with an error naming it, and
/// records the peak.
pub(crate) struct MemoryLimiter {
    limit: u64,
    pub(crate) peak: u64,
}

impl MemoryLimiter {
    fn new(limit: u64) -> Self {
        Self { limit, peak: 0 }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let desired = desired as u64;
        if desired > self.limit {
            return Err(Stopped::error(
                crate::task::TaskErrorKind::MemoryLimit,
                format!(
                    "memory limit exceeded: the guest asked for {} MiB of linear memory, the limit is {} MiB (raise it with --max-memory)",
                    desired >> 20,
                    self.limit >> 20
                ),
            ));
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

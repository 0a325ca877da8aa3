//! The data of every store wtrace creates, and the linkers that offer
//! guests the sandbox's WASI and wtrace's capabilities.

use std::sync::Arc;

use wasmtime::Engine;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::capabilities::http::HttpHooks;
use crate::capabilities::provider::{Provider, ProviderState};
use crate::capabilities::tasks::{Tasks, TasksState};
use crate::capabilities::tracer::{Bridge, SpanBridge};
use crate::capabilities::{self};
use crate::sandbox::{self, Deadline, MemoryLimiter, Sandboxed};
use crate::telemetry::metrics::TaskMetrics;

/// The data of every store wtrace creates.
pub(crate) struct StoreState {
    wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) bridge: SpanBridge,
    pub(crate) provider: Option<ProviderState>,
    pub(crate) tasks: TasksState,
    pub(crate) memory: MemoryLimiter,
    pub(crate) deadline: Deadline,
    http: WasiHttpCtx,
    pub(crate) http_hooks: HttpHooks,
    /// The instruments runs are recorded with, if measured.
    pub(crate) metrics: Option<Arc<TaskMetrics>>,
    /// When the current run began.
    pub(crate) run_started: std::time::Instant,
    /// The guest's CPU profiler, with `--profile`.
    pub(crate) profiler: Option<wasmtime::GuestProfiler>,
}

impl StoreState {
    pub(crate) fn new(
        wasi: WasiCtx,
        bridge: SpanBridge,
        tasks: TasksState,
        memory_limit: u64,
        deadline: Deadline,
    ) -> Self {
        Self {
            wasi,
            table: ResourceTable::new(),
            bridge,
            provider: None,
            tasks,
            memory: MemoryLimiter::new(memory_limit),
            deadline,
            http: WasiHttpCtx::new(),
            http_hooks: HttpHooks::new(Arc::default(), None),
            metrics: None,
            run_started: std::time::Instant::now(),
            profiler: None,
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
            deadline: &self.deadline,
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

impl WasiHttpView for StoreState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        // Outgoing requests are children of the guest's current span.
        self.http_hooks.parent = self.bridge.current().clone();
        WasiHttpCtxView {
            hooks: &mut self.http_hooks,
            table: &mut self.table,
            ctx: &mut self.http,
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

impl Sandboxed for StoreState {
    fn deadline(&self) -> &Deadline {
        &self.deadline
    }

    fn profiler(&mut self) -> &mut Option<wasmtime::GuestProfiler> {
        &mut self.profiler
    }
}

/// The linker for tasks: WASI, `wtrace:tracing/tracer`, `tasks` and
/// `logs`, `wasi:otel/tracing` and `logs`, and `wasi:http` (refused unless
/// granted).
pub(crate) fn task_linker(engine: &Engine) -> wasmtime::Result<Linker<StoreState>> {
    let mut linker = Linker::new(engine);
    sandbox::add_to_linker(&mut linker)?;
    capabilities::tracer::add_to_linker(&mut linker, StoreState::bridge)?;
    capabilities::http::add_to_linker(&mut linker)?;
    capabilities::tasks::add_to_linker(&mut linker, StoreState::tasks)?;
    capabilities::logs::add_to_linker(&mut linker, StoreState::bridge)?;
    capabilities::wasi_otel::add_to_linker(&mut linker, StoreState::bridge)?;
    Ok(linker)
}

/// The linker for tracing startup hooks: WASI, `tracer` and `provider`.
pub(crate) fn hook_linker(engine: &Engine) -> wasmtime::Result<Linker<StoreState>> {
    let mut linker = Linker::new(engine);
    sandbox::add_to_linker(&mut linker)?;
    capabilities::tracer::add_to_linker(&mut linker, StoreState::bridge)?;
    capabilities::provider::add_to_linker(&mut linker, StoreState::provider)?;
    Ok(linker)
}

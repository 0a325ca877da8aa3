//! What a guest's store holds and may reach: deny-by-default WASI, captured
//! output, a memory limiter, and the span bridge.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime::{Engine, ResourceLimiter};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::bridge::{self, Bridge, SpanBridge};
use crate::config::{Grants, net_allowed};
use crate::http_client::HttpHooks;
use crate::nested::{self, Tasks, TasksState};
use crate::provider::{self, Provider, ProviderState};
use crate::task::TaskErrorKind;

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
        self.http_hooks.parent = self.bridge.current(&self.table);
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

/// The linker for tasks: WASI, `wtrace:tracing/tracer` and `tasks`.
pub(crate) fn task_linker(engine: &Engine) -> wasmtime::Result<Linker<StoreState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    add_deadline_aware_poll(&mut linker)?;
    add_deadline_aware_streams(&mut linker)?;
    add_deadline_aware_filesystem(&mut linker)?;
    bridge::add_to_linker(&mut linker, StoreState::bridge)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)?;
    nested::add_to_linker(&mut linker, StoreState::tasks)?;
    crate::wasi_otel::add_to_linker(&mut linker, StoreState::bridge)?;
    Ok(linker)
}

/// The linker for tracing startup hooks: WASI, `tracer` and `provider`.
pub(crate) fn hook_linker(engine: &Engine) -> wasmtime::Result<Linker<StoreState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    add_deadline_aware_poll(&mut linker)?;
    add_deadline_aware_streams(&mut linker)?;
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
/// output, plus `env` and whatever `grants` adds (directories, sockets).
pub(crate) fn wasi_ctx<'a>(
    output: &CapturedOutput,
    env: impl IntoIterator<Item = (&'a str, &'a str)>,
    grants: Option<&Grants>,
) -> Result<WasiCtx, String> {
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
    if let Some(grants) = grants {
        for dir in &grants.dirs {
            let perms = if dir.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            builder
                .preopened_dir(&dir.host, &dir.guest, perms)
                .map_err(|e| {
                    format!(
                        "cannot open the granted directory {} (--allow-dir): {e}",
                        dir.host.display()
                    )
                })?;
        }
        if !grants.net.is_empty() {
            let patterns = Arc::new(grants.net.clone());
            builder
                .allow_tcp(true)
                .allow_udp(true)
                .allow_ip_name_lookup(true)
                .socket_addr_check(move |addr, _| {
                    // An ephemeral local bind comes with every connection.
                    let ephemeral = addr.ip().is_unspecified() && addr.port() == 0;
                    let allowed = ephemeral || net_allowed(&patterns, &addr);
                    Box::pin(async move { allowed })
                });
        }
    }
    Ok(builder.build())
}

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
            let mut ticks = tokio::time::interval(crate::engine::EPOCH_TICK);
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
pub(crate) fn arm_deadline(store: &mut wasmtime::Store<StoreState>) {
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|store| {
        store.data().deadline.check("")?;
        Ok(wasmtime::UpdateDeadline::Continue(1))
    });
}

/// Replaces WASI's blocking waits (`poll`, `pollable.block`: how a guest
/// sleeps or waits for I/O) with ones that honour the store's [`Deadline`]:
/// a guest asleep in the host is as bound by `--timeout` as one computing.
fn add_deadline_aware_poll(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    use wasmtime_wasi_io::bindings::wasi::io::poll::{Host as _, HostPollable as _};
    use wasmtime_wasi_io::poll::DynPollable;
    linker.allow_shadowing(true);
    let mut poll = linker.instance("wasi:io/poll@0.2.12")?;
    poll.func_wrap(
        "poll",
        |mut store: wasmtime::StoreContextMut<'_, StoreState>,
         (list,): (Vec<Resource<DynPollable>>,)| {
            let state = store.data_mut();
            let deadline = state.deadline.clone();
            let ready =
                deadline.wait(" while waiting in wasi:io/poll", state.table.poll(list))??;
            Ok((ready,))
        },
    )?;
    poll.func_wrap(
        "[method]pollable.block",
        |mut store: wasmtime::StoreContextMut<'_, StoreState>,
         (pollable,): (Resource<DynPollable>,)| {
            let state = store.data_mut();
            let deadline = state.deadline.clone();
            deadline.wait(
                " while blocked in wasi:io/poll",
                state.table.block(pollable),
            )??;
            Ok(())
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Replaces WASI's blocking stream calls (a read from a socket that never
/// sends, a write to one that never reads) with ones that honour the store's
/// [`Deadline`], as [`add_deadline_aware_poll`] does for waits: each runs
/// wasmtime-wasi's own implementation, given up when the deadline passes.
fn add_deadline_aware_streams(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    use wasmtime_wasi_io::bindings::wasi::io::streams::{
        self as wit, Host as _, HostInputStream, HostOutputStream,
    };
    use wasmtime_wasi_io::streams::{DynInputStream, DynOutputStream, StreamResult};

    type Store<'a> = wasmtime::StoreContextMut<'a, StoreState>;
    /// A stream call's result in its WIT form (a trap stays a trap).
    fn lower<T>(
        table: &mut ResourceTable,
        result: StreamResult<T>,
    ) -> wasmtime::Result<(Result<T, wit::StreamError>,)> {
        Ok((match result {
            Ok(value) => Ok(value),
            Err(e) => Err(table.convert_stream_error(e)?),
        },))
    }

    linker.allow_shadowing(true);
    let mut streams = linker.instance("wasi:io/streams@0.2.12")?;
    const READING: &str = " while blocked reading a wasi:io stream";
    const WRITING: &str = " while blocked writing a wasi:io stream";
    /// Shadows `$name` with `$call` on the store's table, within its deadline.
    macro_rules! within_deadline {
        ($name:literal, $doing:expr, $call:path, $($arg:ident: $ty:ty),*) => {
            streams.func_wrap(
                $name,
                |mut store: Store<'_>, ($($arg,)*): ($($ty,)*)| {
                    let state = store.data_mut();
                    let deadline = state.deadline.clone();
                    let result = deadline.wait($doing, $call(&mut state.table, $($arg),*))?;
                    lower(&mut state.table, result)
                },
            )?;
        };
    }
    within_deadline!(
        "[method]input-stream.blocking-read",
        READING,
        HostInputStream::blocking_read,
        stream: Resource<DynInputStream>,
        len: u64
    );
    within_deadline!(
        "[method]input-stream.blocking-skip",
        READING,
        HostInputStream::blocking_skip,
        stream: Resource<DynInputStream>,
        len: u64
    );
    within_deadline!(
        "[method]output-stream.blocking-write-and-flush",
        WRITING,
        HostOutputStream::blocking_write_and_flush,
        stream: Resource<DynOutputStream>,
        bytes: Vec<u8>
    );
    within_deadline!(
        "[method]output-stream.blocking-write-zeroes-and-flush",
        WRITING,
        HostOutputStream::blocking_write_zeroes_and_flush,
        stream: Resource<DynOutputStream>,
        len: u64
    );
    within_deadline!(
        "[method]output-stream.blocking-flush",
        WRITING,
        HostOutputStream::blocking_flush,
        stream: Resource<DynOutputStream>
    );
    within_deadline!(
        "[method]output-stream.blocking-splice",
        WRITING,
        HostOutputStream::blocking_splice,
        dest: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64
    );
    linker.allow_shadowing(false);
    Ok(())
}

/// Replaces the filesystem calls that can wait without end (opening a FIFO
/// no one writes to, reading from it) with ones that honour the store's
/// [`Deadline`]. Only tasks given a directory (`--allow-dir`) reach them.
fn add_deadline_aware_filesystem(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView as _};
    use wasmtime_wasi::p2::FsResult;
    use wasmtime_wasi::p2::bindings::filesystem::types::{
        DescriptorFlags, ErrorCode, Filesize, Host as _, HostDescriptor, OpenFlags, PathFlags,
    };

    type Store<'a> = wasmtime::StoreContextMut<'a, StoreState>;
    /// A filesystem call's result in its WIT form (a trap stays a trap).
    fn lower<T>(
        state: &mut StoreState,
        result: FsResult<T>,
    ) -> wasmtime::Result<(Result<T, ErrorCode>,)> {
        Ok((match result {
            Ok(value) => Ok(value),
            Err(e) => Err(state.filesystem().convert_error_code(e)?),
        },))
    }

    linker.allow_shadowing(true);
    let mut fs = linker.instance("wasi:filesystem/types@0.2.12")?;
    const DOING: &str = " while blocked in wasi:filesystem";
    fs.func_wrap(
        "[method]descriptor.open-at",
        |mut store: Store<'_>,
         (fd, path_flags, path, oflags, flags): (
            Resource<Descriptor>,
            PathFlags,
            String,
            OpenFlags,
            DescriptorFlags,
        )| {
            let state = store.data_mut();
            let deadline = state.deadline.clone();
            let result = deadline.wait(
                DOING,
                HostDescriptor::open_at(
                    &mut state.filesystem(),
                    fd,
                    path_flags,
                    path,
                    oflags,
                    flags,
                ),
            )?;
            lower(state, result)
        },
    )?;
    fs.func_wrap(
        "[method]descriptor.read",
        |mut store: Store<'_>, (fd, len, offset): (Resource<Descriptor>, Filesize, Filesize)| {
            let state = store.data_mut();
            let deadline = state.deadline.clone();
            let result = deadline.wait(
                DOING,
                HostDescriptor::read(&mut state.filesystem(), fd, len, offset),
            )?;
            lower(state, result)
        },
    )?;
    fs.func_wrap(
        "[method]descriptor.write",
        |mut store: Store<'_>, (fd, bytes, offset): (Resource<Descriptor>, Vec<u8>, Filesize)| {
            let state = store.data_mut();
            let deadline = state.deadline.clone();
            let result = deadline.wait(
                DOING,
                HostDescriptor::write(&mut state.filesystem(), fd, bytes, offset),
            )?;
            lower(state, result)
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
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
                TaskErrorKind::MemoryLimit,
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

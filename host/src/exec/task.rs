//! Running one task: a fresh instance of a component, one export called with
//! WAVE arguments, inside a `<function> execute` span.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanContext, SpanKind, Status, Tracer as _};
use wasmtime::Store;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, ComponentExportIndex, InstancePre, Linker, Type, Val};

use super::store::{StoreState, task_linker};
use crate::capabilities::http::HttpHooks;
use crate::capabilities::tasks::{NestedContext, Submitter, TasksState};
use crate::capabilities::tracer::{BridgeLimits, SpanBridge};
use crate::config::Grants;
use crate::error::{Error, Result, chain};
pub use crate::outcome::{TaskError, TaskErrorKind, TaskOutput};
use crate::runtime::check::{World, list_or_none, root_export_names};
use crate::runtime::wave;
use crate::runtime::{Digest, Runtime};
use crate::sandbox::{self, CapturedOutput, Deadline, GuestStream, OutputTap};
use crate::sync::lock;
use crate::telemetry::Telemetry;
use crate::telemetry::context::context_with_parent;
use crate::telemetry::logs::{Origin, Stream, TaskLog};
use crate::telemetry::metrics::TaskEnd;
use crate::telemetry::task_span;

/// Where a task comes from, recorded on its execute span. (Who runs it,
/// the process, is on the resource of every span it exports.)
#[derive(Debug, Clone)]
pub struct TaskContext<'a> {
    /// The task's id.
    pub task_id: &'a str,
    /// The submit span (from the task envelope's traceparent).
    pub parent: Option<SpanContext>,
    /// Which attempt this is (0 for the first).
    pub attempt: u32,
    /// Set to stop the task at its next epoch tick.
    pub abort: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Where the task's own submissions go; none outside a cluster.
    pub submitter: Option<Arc<dyn Submitter>>,
    /// How deep this task is nested (0 when a driver submitted it).
    pub depth: u32,
}

impl<'a> TaskContext<'a> {
    /// A first attempt with no parent span, no abort flag and no way to
    /// submit tasks of its own: a task run outside a cluster.
    pub fn new(task_id: &'a str) -> Self {
        Self {
            task_id,
            parent: None,
            attempt: 0,
            abort: None,
            submitter: None,
            depth: 0,
        }
    }
}

/// One export of a task component, with its types.
#[derive(Debug, Clone)]
struct Export {
    index: ComponentExportIndex,
    params: Vec<Type>,
    /// How its tasks' execute spans name it, made with the rest.
    naming: SpanNaming,
}

/// What an execute span calls its function: the span's name and the
/// `wtrace.function` value. An export keeps its own, so a task of a known
/// export looks its function up once, not once more for each of these.
#[derive(Debug, Clone)]
pub(crate) struct SpanNaming {
    name: std::borrow::Cow<'static, str>,
    function: opentelemetry::StringValue,
}

impl SpanNaming {
    /// `function`'s, looked up in the process's kept names and values.
    pub(crate) fn of(function: &str) -> Self {
        Self {
            name: task_span::name(function, task_span::Phase::Execute),
            function: crate::attrs::shared_string(function),
        }
    }
}

/// A compiled task component, ready to instantiate.
pub struct TaskComponent {
    name: std::sync::Arc<str>,
    digest: Digest,
    /// `name` and `digest` as span attribute values, made once.
    name_value: opentelemetry::Value,
    digest_value: opentelemetry::Value,
    component: Component,
    pre: InstancePre<StoreState>,
    exports: Mutex<HashMap<String, Arc<Export>>>,
}

impl std::fmt::Debug for TaskComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskComponent")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

/// Links tasks: one per runtime.
pub struct TaskLinker {
    runtime: Runtime,
    linker: Linker<StoreState>,
    grants: Grants,
    http_grants: Arc<Vec<String>>,
    env: Vec<(String, String)>,
}

impl std::fmt::Debug for TaskLinker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskLinker").finish_non_exhaustive()
    }
}

impl TaskLinker {
    /// A linker offering tasks WASI (deny by default), the span bridge and
    /// nested tasks.
    pub fn new(runtime: &Runtime) -> Result<Self> {
        Self::with_grants(runtime, Grants::default())
    }

    /// Like [`TaskLinker::new`], plus what `grants` allows. Granted
    /// environment variables take their values from this process.
    pub fn with_grants(runtime: &Runtime, grants: Grants) -> Result<Self> {
        let linker = task_linker(runtime.engine())
            .map_err(|e| Error::Config(format!("cannot link tasks: {}", chain(&e))))?;
        let env = grants
            .env
            .iter()
            .filter_map(|name| std::env::var(name).ok().map(|value| (name.clone(), value)))
            .collect();
        Ok(Self {
            runtime: runtime.clone(),
            linker,
            http_grants: Arc::new(grants.http.clone()),
            grants,
            env,
        })
    }

    /// The runtime tasks run in.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Compiles (or loads from cache) and pre-links a task component.
    /// `name` is its file name, shown in errors and on spans.
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<TaskComponent> {
        let (digest, component) = self.runtime.load(Path::new(name), bytes)?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            let missing = crate::runtime::check::missing_imports(
                self.runtime.engine(),
                &component,
                World::Task,
            );
            let cause = if missing.is_empty() {
                chain(&e)
            } else {
                missing.join(", ")
            };
            Error::Component {
                path: name.into(),
                cause: format!(
                    "it imports what wtrace does not provide to tasks: {cause} (tasks may import \
                     WASI 0.2 and wtrace:tracing/tracer and tasks; see `wtrace check`)"
                ),
            }
        })?;
        let name: std::sync::Arc<str> = name.into();
        Ok(TaskComponent {
            name_value: crate::attrs::text(name.clone()),
            name,
            digest_value: crate::attrs::text(digest.to_string()),
            digest,
            component,
            pre,
            exports: Mutex::new(HashMap::new()),
        })
    }
}

impl TaskComponent {
    /// The file name it was loaded from.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The sha256 of its bytes.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The compiled component.
    pub fn component(&self) -> &Component {
        &self.component
    }

    /// Its file name as a span attribute value.
    pub(crate) fn name_value(&self) -> opentelemetry::Value {
        self.name_value.clone()
    }

    /// Its digest as a span attribute value.
    pub(crate) fn digest_value(&self) -> opentelemetry::Value {
        self.digest_value.clone()
    }

    /// Finds an export: `name` at the root, or `instance#name` in an
    /// exported interface.
    pub(crate) fn lookup(&self, function: &str) -> Option<(ComponentItem, ComponentExportIndex)> {
        match function.split_once('#') {
            Some((instance, func)) => self
                .component
                .get_export_index(None, instance)
                .and_then(|i| self.component.get_export(Some(&i), func)),
            None => self.component.get_export(None, function),
        }
    }

    fn export(
        &self,
        runtime: &Runtime,
        function: &str,
    ) -> std::result::Result<Arc<Export>, TaskError> {
        if let Some(export) = lock(&self.exports).get(function) {
            return Ok(export.clone());
        }
        let found = self.lookup(function);
        let unknown = || {
            TaskError::new(
                TaskErrorKind::UnknownExport,
                function,
                format!(
                    "{} has no exported function `{function}`; its exports: {}",
                    self.name,
                    list_or_none(&root_export_names(runtime, &self.component))
                ),
            )
        };
        let (item, index) = found.ok_or_else(unknown)?;
        let ComponentItem::ComponentFunc(func) = &item else {
            return Err(TaskError::new(
                TaskErrorKind::UnknownExport,
                function,
                format!(
                    "export `{function}` of {} is {}, not a function",
                    self.name,
                    wave::describe_item(&item)
                ),
            ));
        };
        let export = Arc::new(Export {
            index,
            params: func.params().map(|(_, ty)| ty).collect(),
            naming: SpanNaming::of(function),
        });
        lock(&self.exports).insert(function.to_owned(), export.clone());
        Ok(export)
    }

    /// Checks, without running anything, that `invocation` names an exported
    /// function and that its arguments fit that function's parameters.
    pub fn check(
        &self,
        runtime: &Runtime,
        invocation: &wave::Invocation,
    ) -> std::result::Result<(), TaskError> {
        let export = self.export(runtime, &invocation.function)?;
        wave::parse_args(&invocation.text, &export.params)
            .map(drop)
            .map_err(|cause| self.bad_arguments(&invocation.function, &invocation.text, &cause))
    }

    fn bad_arguments(&self, function: &str, invocation: &str, cause: &str) -> TaskError {
        let signature = self.signature(function).unwrap_or_default();
        TaskError::new(
            TaskErrorKind::InvalidArguments,
            function,
            format!("invalid arguments {invocation:?}: {cause}; `{function}` is `{signature}`"),
        )
    }

    /// The WIT signature of `function`, for messages.
    pub fn signature(&self, function: &str) -> Option<String> {
        match self.lookup(function)? {
            (ComponentItem::ComponentFunc(func), _) => Some(wave::describe_func(&func)),
            _ => None,
        }
    }
}

/// Runs `invocation` (an [`wave::Invocation`]'s text) of `component` in a
/// fresh instance, traced as `<function> execute` when `telemetry` is set.
pub fn execute(
    linker: &TaskLinker,
    telemetry: Option<&Telemetry>,
    component: &TaskComponent,
    function: &str,
    invocation: &str,
    cx: &TaskContext<'_>,
) -> TaskOutput {
    let runtime = linker.runtime();
    let limits = runtime.limits();
    let export = sandbox::contain("preparing the task", || component.export(runtime, function))
        .unwrap_or_else(|panic| Err(host_panic(function, &panic)));
    let naming = telemetry.map(|_| match &export {
        Ok(export) => export.naming.clone(),
        Err(_) => SpanNaming::of(function),
    });
    let mut span = telemetry.zip(naming.as_ref()).map(|(t, naming)| {
        execute_span(
            t,
            naming,
            component.name_value.clone(),
            Some(component.digest_value.clone()),
            cx,
        )
    });
    let (output, log) = captured_output(
        telemetry,
        naming.map(|naming| naming.function),
        function,
        span.as_ref(),
        cx,
        limits,
    );
    let mut store = match new_store(
        linker,
        telemetry,
        component,
        span.as_ref(),
        cx,
        &output,
        log,
    ) {
        Ok(store) => store,
        Err(message) => {
            let error = TaskError::new(TaskErrorKind::Instantiate, function, message);
            if let Some(span) = &mut span {
                record_error(span, &error);
                span.end();
            }
            return TaskOutput::failed(error);
        }
    };
    begin_run(&mut store, function);
    if limits.profile_dir.is_some() {
        store.data_mut().profiler = wasmtime::GuestProfiler::new_component(
            runtime.engine(),
            function,
            crate::runtime::EPOCH_TICK,
            component.component.clone(),
            [],
        )
        .ok();
    }

    let mut instantiate_us = 0;
    let result = sandbox::contain("preparing the task", || {
        let export = export?;
        let params = wave::parse_args(invocation, &export.params)
            .map_err(|cause| component.bad_arguments(function, invocation, &cause))?;
        let started = Instant::now();
        let instance = instantiate(component, &mut store, function, limits)?;
        instantiate_us = started.elapsed().as_micros() as i64;
        let func = instance.get_func(&mut store, export.index).ok_or_else(|| {
            TaskError::new(TaskErrorKind::UnknownExport, function, "export vanished")
        })?;
        call(&mut store, func, &params, function, limits)
    })
    .unwrap_or_else(|panic| Err(host_panic(function, &panic)));

    record_instantiation(&store, function, instantiate_us);
    let profile = store
        .data_mut()
        .profiler
        .take()
        .zip(limits.profile_dir.as_deref())
        .and_then(|(profiler, dir)| write_profile(profiler, dir, cx.task_id));
    let result = finish_run(
        &mut store,
        span.as_mut(),
        function,
        result,
        cx,
        limits,
        |span| {
            span.set_attribute(KeyValue::new("wtrace.wasm.instantiate_us", instantiate_us));
            if let Some(path) = profile {
                span.set_attribute(KeyValue::new("wtrace.profile", path));
            }
        },
    );
    let nested = std::mem::take(&mut store.data_mut().tasks.output);
    drop(store);
    TaskOutput {
        result,
        stdout: output.stdout.contents().to_vec(),
        stderr: output.stderr.contents().to_vec(),
        nested,
    }
}

/// A store for running `component`: the sandbox's WASI writing into
/// `output`, the span bridge rooted at `span` (the run's execute span), the
/// task's own submissions, and the limits armed.
pub(crate) fn new_store(
    linker: &TaskLinker,
    telemetry: Option<&Telemetry>,
    component: &TaskComponent,
    span: Option<&opentelemetry_sdk::trace::Span>,
    cx: &TaskContext<'_>,
    output: &CapturedOutput,
    log: Option<Arc<TaskLog>>,
) -> std::result::Result<Store<StoreState>, String> {
    let limits = linker.runtime().limits();
    let env = linker.env.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let wasi = sandbox::wasi_ctx(output, env, Some(&linker.grants))?;
    let state = StoreState::new(
        wasi,
        bridge(telemetry, span, limits).with_log(log),
        tasks_state(component, cx, limits),
        limits.memory_bytes,
        Deadline::new(limits.timeout, "--timeout", cx.abort.clone()),
    );
    let mut store = Store::new(linker.runtime().engine(), state);
    store.data_mut().http_hooks = HttpHooks::new(
        linker.http_grants.clone(),
        telemetry
            .filter(|t| t.traces_http_client())
            .map(|t| t.tracer().clone()),
    );
    store.data_mut().metrics = telemetry.and_then(Telemetry::metrics).cloned();
    store.limiter(|s| &mut s.memory);
    sandbox::arm_deadline(&mut store);
    if let Some(fuel) = limits.fuel {
        let _ = store.set_fuel(fuel);
    }
    Ok(store)
}

/// Makes `store` ready for another run of the instance it holds (an
/// actor's next call): a fresh span bridge under `span`, a fresh deadline
/// and fuel, and no nested output left from the last run.
pub(crate) fn rearm_store(
    store: &mut Store<StoreState>,
    telemetry: Option<&Telemetry>,
    component: &TaskComponent,
    function: &str,
    span: Option<&opentelemetry_sdk::trace::Span>,
    cx: &TaskContext<'_>,
    limits: &crate::config::Limits,
) {
    let state = store.data_mut();
    let log = state.bridge.log().cloned();
    if let Some(log) = &log {
        log.rearm(Origin::task(function, cx.task_id), root_context(span));
    }
    state.bridge = bridge(telemetry, span, limits).with_log(log);
    begin_run(store, function);
    let state = store.data_mut();
    state.tasks = tasks_state(component, cx, limits);
    state.deadline = Deadline::new(limits.timeout, "--timeout", cx.abort.clone());
    if let Some(fuel) = limits.fuel {
        let _ = store.set_fuel(fuel);
    }
}

fn bridge(
    telemetry: Option<&Telemetry>,
    span: Option<&opentelemetry_sdk::trace::Span>,
    limits: &crate::config::Limits,
) -> SpanBridge {
    SpanBridge::new(
        telemetry.map(|t| t.tracer().clone()),
        root_context(span),
        BridgeLimits::from(limits),
    )
}

/// Writes a task's guest profile to `dir/<task id>.json`; its path, or
/// none (said on stderr) when it could not be written.
fn write_profile(profiler: wasmtime::GuestProfiler, dir: &Path, task_id: &str) -> Option<String> {
    let name: String = task_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = dir.join(format!("{name}.json"));
    let written = std::fs::create_dir_all(dir)
        .map_err(wasmtime::Error::from)
        .and_then(|()| std::fs::File::create(&path).map_err(wasmtime::Error::from))
        .and_then(|file| profiler.finish(std::io::BufWriter::new(file)));
    match written {
        Ok(()) => Some(path.display().to_string()),
        Err(error) => {
            eprintln!(
                "wtrace: cannot write the profile {}: {error}",
                path.display()
            );
            None
        }
    }
}

/// A run of `function` begins in `store`: counted, and timed from now.
pub(crate) fn begin_run(store: &mut Store<StoreState>, function: &str) {
    let state = store.data_mut();
    state.run_started = Instant::now();
    if let Some(metrics) = &state.metrics {
        metrics.started(function);
    }
}

/// How long `function`'s instance took to make, if it was made.
pub(crate) fn record_instantiation(store: &Store<StoreState>, function: &str, micros: i64) {
    if let Some(metrics) = &store.data().metrics
        && micros > 0
    {
        metrics.instantiated(function, std::time::Duration::from_micros(micros as u64));
    }
}

fn root_context(span: Option<&opentelemetry_sdk::trace::Span>) -> SpanContext {
    span.map(|s| s.span_context().clone())
        .unwrap_or_else(SpanContext::empty_context)
}

/// The guest's output, captured; when the hook chose where log records go,
/// also turned into records line by line (the log returned, for the span
/// bridge to keep told which span is current). The records name `function`
/// by `shared` when the caller has it shared already.
pub(crate) fn captured_output(
    telemetry: Option<&Telemetry>,
    shared: Option<opentelemetry::StringValue>,
    function: &str,
    span: Option<&opentelemetry_sdk::trace::Span>,
    cx: &TaskContext<'_>,
    limits: &crate::config::Limits,
) -> (CapturedOutput, Option<Arc<TaskLog>>) {
    let capacity = limits.output_bytes as usize;
    let Some(logger) = telemetry.and_then(Telemetry::logger) else {
        return (CapturedOutput::new(capacity), None);
    };
    let log = Arc::new(TaskLog::new(
        logger.clone(),
        limits.attribute_value_length as usize,
        match shared {
            Some(function) => Origin::of_task(function, cx.task_id),
            None => Origin::task(function, cx.task_id),
        },
        root_context(span),
    ));
    (
        CapturedOutput::tapped(capacity, Some(log.clone())),
        Some(log),
    )
}

/// What a guest writes becomes its log's records.
impl OutputTap for TaskLog {
    fn written(&self, stream: GuestStream, bytes: &[u8]) {
        let stream = match stream {
            GuestStream::Stdout => Stream::Stdout,
            GuestStream::Stderr => Stream::Stderr,
        };
        self.write(stream, bytes);
    }
}

fn tasks_state(
    component: &TaskComponent,
    cx: &TaskContext<'_>,
    limits: &crate::config::Limits,
) -> TasksState {
    let nested = cx.submitter.clone().map(|submitter| NestedContext {
        submitter,
        task_id: cx.task_id.to_owned(),
        component: component.digest,
        component_name: component.name.clone(),
        digest_value: component.digest_value.clone(),
        depth: cx.depth,
        actor: None,
    });
    TasksState::new(nested, limits)
}

/// A new instance of `component` in `store`.
pub(crate) fn instantiate(
    component: &TaskComponent,
    store: &mut Store<StoreState>,
    function: &str,
    limits: &crate::config::Limits,
) -> std::result::Result<wasmtime::component::Instance, TaskError> {
    let _instantiating = sandbox::host_call("instantiating the component");
    component
        .pre
        .instantiate(store)
        .map_err(|e| guest_error(function, TaskErrorKind::Instantiate, &e, limits))
}

/// Calls `func` with `params`: its results in WAVE (an `err` result is a
/// failure).
pub(crate) fn call(
    store: &mut Store<StoreState>,
    func: wasmtime::component::Func,
    params: &[Val],
    function: &str,
    limits: &crate::config::Limits,
) -> std::result::Result<String, TaskError> {
    let results = call_raw(store, func, params, function, limits)?;
    let _formatting = sandbox::host_call("formatting the result");
    if results.iter().any(wave::holds_resource) {
        return Err(TaskError::new(
            TaskErrorKind::Returned,
            function,
            "returned a resource, which cannot leave its instance; a task returns plain \
             values (to keep an instance alive between calls, make it an actor: `wtrace actor \
             create`)",
        ));
    }
    match results.as_slice() {
        [Val::Result(Err(err))] => Err(TaskError::new(
            TaskErrorKind::Returned,
            function,
            format!(
                "returned an error: {}",
                err.as_deref()
                    .map(wave::display_value)
                    .unwrap_or_else(|| "err".into())
            ),
        )),
        _ => {
            let text = wave::format_results(&results);
            if text.len() > limits.result_bytes as usize {
                return Err(TaskError::new(
                    TaskErrorKind::ResultTooLarge,
                    function,
                    format!(
                        "its result is {} bytes of WAVE; the limit is {} (raise it with --max-result-size)",
                        text.len(),
                        limits.result_bytes
                    ),
                ));
            }
            Ok(text)
        }
    }
}

/// Calls `func` with `params`, returning its results as values.
pub(crate) fn call_raw(
    store: &mut Store<StoreState>,
    func: wasmtime::component::Func,
    params: &[Val],
    function: &str,
    limits: &crate::config::Limits,
) -> std::result::Result<Vec<Val>, TaskError> {
    let mut results = vec![Val::Bool(false); func.ty(&*store).results().len()];
    let _calling = sandbox::host_call("calling the export");
    func.call(&mut *store, params, &mut results)
        .map_err(|e| guest_error(function, TaskErrorKind::Trap, &e, limits))?;
    Ok(results)
}

/// Ends what a run left behind: the spans the guest left open, then the
/// execute span with what only the host saw (`annotate` adds the caller's
/// own facts first), and the error if it failed. Returns the run's result, failed if ending panicked.
pub(crate) fn finish_run<T>(
    store: &mut Store<StoreState>,
    span: Option<&mut opentelemetry_sdk::trace::Span>,
    function: &str,
    result: std::result::Result<T, TaskError>,
    cx: &TaskContext<'_>,
    limits: &crate::config::Limits,
    annotate: impl FnOnce(&mut opentelemetry_sdk::trace::Span),
) -> std::result::Result<T, TaskError> {
    let failure = result.as_ref().err().map(|e| e.message.clone());
    let state = store.data_mut();
    if let Some(log) = state.bridge.log() {
        // Output that did not end with a newline is a line too.
        log.finish();
    }
    let finished = sandbox::contain("ending the spans the guest left open", || {
        state.bridge.finish(failure.as_deref())
    });
    let result = match finished {
        Ok(()) => result,
        Err(panic) => Err(host_panic(function, &panic)),
    };
    let state = store.data();
    if let Some(metrics) = &state.metrics {
        metrics.ended(TaskEnd {
            function,
            error_type: result.as_ref().err().map(|e| e.kind.exception_type()),
            duration: state.run_started.elapsed(),
            spans_started: state.bridge.started(),
            spans_dropped: state.bridge.dropped(),
        });
    }
    if let Some(span) = span {
        annotate(span);
        let state = store.data();
        span.set_attribute(KeyValue::new(
            "wtrace.wasm.memory_peak_bytes",
            state.memory.peak as i64,
        ));
        if state.bridge.started() > 0 {
            span.set_attribute(KeyValue::new(
                "wtrace.spans_started",
                i64::from(state.bridge.started()),
            ));
        }
        span.set_attribute(KeyValue::new(
            "wtrace.spans_dropped",
            i64::from(state.bridge.dropped()),
        ));
        if cx.depth > 0 {
            span.set_attribute(KeyValue::new("wtrace.depth", i64::from(cx.depth)));
        }
        if let Some(fuel) = limits.fuel {
            let left = store.get_fuel().unwrap_or(0);
            span.set_attribute(KeyValue::new(
                "wtrace.wasm.fuel_consumed",
                fuel.saturating_sub(left) as i64,
            ));
        }
        if let Err(error) = &result {
            record_error(span, error);
        }
        span.end();
    }
    result
}

/// Starts the `<function> execute` span of a task.
pub(crate) fn execute_span(
    telemetry: &Telemetry,
    naming: &SpanNaming,
    component: opentelemetry::Value,
    digest: Option<opentelemetry::Value>,
    cx: &TaskContext<'_>,
) -> opentelemetry_sdk::trace::Span {
    let tracer = telemetry.tracer();
    // A list with room for what `execute` adds when the task is done, so
    // it never grows: the one the last exported span left, when there is.
    let mut attributes = crate::attrs::attribute_list();
    attributes.extend([
        KeyValue::new("wtrace.function", naming.function.clone()),
        KeyValue::new("wtrace.component", component),
        KeyValue::new(crate::attrs::TASK_ID, cx.task_id.to_owned()),
    ]);
    if cx.attempt > 0 {
        attributes.push(KeyValue::new("wtrace.attempt", i64::from(cx.attempt)));
    }
    if let Some(digest) = digest {
        attributes.push(KeyValue::new("wtrace.component.digest", digest));
    }
    tracer
        .span_builder(naming.name.clone())
        .with_kind(SpanKind::Consumer)
        .with_attributes(attributes)
        .start_with_context(tracer, &context_with_parent(cx.parent.clone()))
}

/// Records the execute span of a task that could not even start (its
/// component failed to load), so the trace shows the failure.
pub fn record_failure(
    telemetry: Option<&Telemetry>,
    component: &str,
    error: &TaskError,
    cx: &TaskContext<'_>,
) {
    if let Some(telemetry) = telemetry {
        let mut span = execute_span(
            telemetry,
            &SpanNaming::of(&error.function),
            component.to_owned().into(),
            None,
            cx,
        );
        record_error(&mut span, error);
        span.end();
    }
}

/// Marks a span failed: status ERROR and an `exception` event.
pub fn record_error(span: &mut impl opentelemetry::trace::Span, error: &TaskError) {
    span.set_status(Status::error(error.message.clone()));
    let mut attributes = vec![
        KeyValue::new("exception.type", error.kind.exception_type()),
        KeyValue::new("exception.message", error.message.clone()),
    ];
    if let Some(backtrace) = &error.backtrace {
        attributes.push(KeyValue::new("exception.stacktrace", backtrace.clone()));
    }
    span.add_event("exception", attributes);
}

/// The failure of a task in which the host panicked.
fn host_panic(function: &str, panic: &sandbox::HostPanic) -> TaskError {
    TaskError::new(TaskErrorKind::HostPanic, function, panic.to_string())
}

/// Turns a wasmtime error from instantiating or calling a guest into a
/// [`TaskError`] that names the limit hit, if any.
fn guest_error(
    function: &str,
    default: TaskErrorKind,
    error: &wasmtime::Error,
    limits: &crate::config::Limits,
) -> TaskError {
    let backtrace = error
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .map(|bt| bt.to_string())
        .filter(|bt| !bt.trim().is_empty());
    let (kind, message) = if let Some(stopped) = error.downcast_ref::<sandbox::Stopped>() {
        (stopped.kind, stopped.message.clone())
    } else {
        match error.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::OutOfFuel) => (
                TaskErrorKind::OutOfFuel,
                format!(
                    "ran out of fuel after {} units (raise the limit with --fuel)",
                    limits.fuel.unwrap_or(0)
                ),
            ),
            Some(trap) => (TaskErrorKind::Trap, format!("trapped: {trap}")),
            None if default == TaskErrorKind::Instantiate => {
                (default, format!("cannot instantiate: {}", chain(error)))
            }
            None => (default, format!("trapped: {}", error.root_cause())),
        }
    };
    TaskError {
        kind,
        function: function.to_owned(),
        message,
        backtrace,
    }
}

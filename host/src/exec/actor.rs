//! Actors: an instance of a resource type a component exports, kept alive
//! in one store between calls, so its state persists from call to call.
//!
//! Creating one calls the class's constructor inside a `<class>.new execute`
//! span; each call runs a method inside a `<class>.<method> execute` span
//! that links to the creation's, so a backend can go from any call to the
//! actor's birth. Limits (time, fuel) apply per call; memory is the
//! instance's own and persists. A call that traps, times out or runs out of
//! fuel leaves the instance unusable: the actor is dead, and later calls
//! fail saying why.

use std::collections::HashMap;
use std::time::Instant;

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanContext};
use wasmtime::Store;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{ComponentExportIndex, ResourceAny, Type, Val};

use super::store::StoreState;
use super::task::{
    SpanNaming, TaskComponent, TaskContext, TaskError, TaskErrorKind, TaskLinker, TaskOutput, call,
    call_raw, execute_span, finish_run, instantiate, new_store, rearm_store,
};
use crate::runtime::check::actor_classes;
use crate::runtime::wave;
use crate::sandbox::{self, CapturedOutput};
use crate::telemetry::Telemetry;

/// A function of an actor class: where it is and what it takes (a method's
/// `self` left out).
#[derive(Debug, Clone)]
struct ClassFunc {
    index: ComponentExportIndex,
    params: Vec<Type>,
}

/// A class's constructor and methods, found in its component.
#[derive(Debug, Clone)]
struct ClassExports {
    name: String,
    constructor: ClassFunc,
    methods: HashMap<String, ClassFunc>,
}

impl ClassExports {
    fn find(
        linker: &TaskLinker,
        component: &TaskComponent,
        class: &str,
    ) -> Result<Self, TaskError> {
        let engine = linker.runtime().engine();
        let classes = actor_classes(engine, component.component());
        let function = format!("{class}.new");
        let found: Vec<_> = classes.iter().filter(|c| c.name == class).collect();
        let class = match found.as_slice() {
            [one] => *one,
            [] => {
                let names: Vec<String> = classes.iter().map(|c| c.name.clone()).collect();
                return Err(TaskError::new(
                    TaskErrorKind::UnknownExport,
                    &function,
                    format!(
                        "{} exports no actor class `{class}`; its actor classes: {} (see `wtrace check`)",
                        component.name(),
                        crate::runtime::check::list_or_none(&names)
                    ),
                ));
            }
            many => {
                let interfaces: Vec<&str> = many.iter().map(|c| c.interface.as_str()).collect();
                return Err(TaskError::new(
                    TaskErrorKind::UnknownExport,
                    &function,
                    format!(
                        "{} exports an actor class `{class}` in more than one interface ({}); \
                         wtrace cannot tell which to make",
                        component.name(),
                        interfaces.join(", ")
                    ),
                ));
            }
        };
        let func = |name: &str, skip: usize| -> Option<ClassFunc> {
            let (item, index) = component.lookup(&format!("{}#{name}", class.interface))?;
            let ComponentItem::ComponentFunc(func) = item else {
                return None;
            };
            Some(ClassFunc {
                index,
                params: func.params().skip(skip).map(|(_, ty)| ty).collect(),
            })
        };
        let vanished = || {
            TaskError::new(
                TaskErrorKind::UnknownExport,
                &format!("{}.new", class.name),
                "the class's constructor vanished",
            )
        };
        let constructor = func(&format!("[constructor]{}", class.name), 0).ok_or_else(vanished)?;
        let methods = class
            .methods
            .iter()
            .filter_map(|m| {
                let found = func(&format!("[method]{}.{}", class.name, m.name), 1)?;
                Some((m.name.clone(), found))
            })
            .collect();
        Ok(Self {
            name: class.name.clone(),
            constructor,
            methods,
        })
    }
}

/// Who an actor is, recorded on each of its spans.
#[derive(Debug, Clone, Copy)]
pub struct ActorIdentity<'a> {
    /// The actor's id (`wtrace.actor_id`).
    pub id: &'a str,
    /// How many times it was made again after a failure
    /// (`wtrace.actor_restarts`).
    pub restarts: u32,
}

/// A live actor: one instance in its own store.
pub struct Actor {
    id: String,
    restarts: u32,
    class: ClassExports,
    store: Store<StoreState>,
    instance: wasmtime::component::Instance,
    handle: ResourceAny,
    output: CapturedOutput,
    /// How much of the captured stdout and stderr earlier runs returned.
    seen: (usize, usize),
    /// The creation's execute span, which every call's span links to.
    creation: SpanContext,
    calls: u64,
    dead: Option<String>,
}

impl std::fmt::Debug for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Actor")
            .field("id", &self.id)
            .field("class", &self.class.name)
            .field("calls", &self.calls)
            .field("dead", &self.dead)
            .finish_non_exhaustive()
    }
}

impl Actor {
    /// Makes an actor of `component` by calling a class's constructor:
    /// `invocation` is the constructor call in WAVE, named by the class
    /// (`counter(5)`). Traced as `<class>.new execute`. Returns the actor,
    /// none when creation failed, and the output, which then says why.
    pub fn create(
        linker: &TaskLinker,
        telemetry: Option<&Telemetry>,
        component: &TaskComponent,
        invocation: &wave::Invocation,
        identity: ActorIdentity<'_>,
        cx: &TaskContext<'_>,
    ) -> (Option<Actor>, TaskOutput) {
        let runtime = linker.runtime();
        let limits = runtime.limits();
        let class_name = invocation.function.as_str();
        let function = format!("{class_name}.new");
        let mut span =
            telemetry.map(|t| actor_span(t, component, identity, class_name, "new", None, cx));
        let creation = span
            .as_ref()
            .map(|s| s.span_context().clone())
            .unwrap_or_else(SpanContext::empty_context);
        let fail = |mut span: Option<opentelemetry_sdk::trace::Span>, error: TaskError| {
            if let Some(span) = &mut span {
                super::task::record_error(span, &error);
                span.end();
            }
            TaskOutput::failed(error)
        };
        let class = match ClassExports::find(linker, component, class_name) {
            Ok(class) => class,
            Err(error) => return (None, fail(span, error)),
        };
        let (output, log) =
            super::task::captured_output(telemetry, None, &function, span.as_ref(), cx, limits);
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
                let error = TaskError::new(TaskErrorKind::Instantiate, &function, message);
                return (None, fail(span, error));
            }
        };
        store.data_mut().tasks.set_actor(identity.id);
        super::task::begin_run(&mut store, &function);
        let mut instantiate_us = 0;
        let result = sandbox::contain("creating the actor", || {
            let params =
                wave::parse_args(&invocation.text, &class.constructor.params).map_err(|cause| {
                    TaskError::new(
                        TaskErrorKind::InvalidArguments,
                        &function,
                        format!("invalid arguments {:?}: {cause}", invocation.text),
                    )
                })?;
            let started = Instant::now();
            let instance = instantiate(component, &mut store, &function, limits)?;
            instantiate_us = started.elapsed().as_micros() as i64;
            let func = instance
                .get_func(&mut store, class.constructor.index)
                .ok_or_else(|| {
                    TaskError::new(TaskErrorKind::UnknownExport, &function, "export vanished")
                })?;
            let results = call_raw(&mut store, func, &params, &function, limits)?;
            match results.as_slice() {
                [Val::Resource(handle)] => Ok((instance, *handle)),
                _ => Err(TaskError::new(
                    TaskErrorKind::Trap,
                    &function,
                    "the constructor returned no resource",
                )),
            }
        })
        .unwrap_or_else(|panic| Err(host_panic(&function, &panic)));
        super::task::record_instantiation(&store, &function, instantiate_us);
        let result = finish_run(
            &mut store,
            span.as_mut(),
            &function,
            result,
            cx,
            limits,
            |span| {
                span.set_attribute(KeyValue::new("wtrace.wasm.instantiate_us", instantiate_us));
            },
        );
        let (instance, handle) = match result {
            Ok(made) => made,
            Err(error) => {
                let mut out = TaskOutput::failed(error);
                out.stdout = output.stdout.contents().to_vec();
                out.stderr = output.stderr.contents().to_vec();
                return (None, out);
            }
        };
        let mut actor = Actor {
            id: identity.id.to_owned(),
            restarts: identity.restarts,
            class,
            store,
            instance,
            handle,
            output,
            seen: (0, 0),
            creation,
            calls: 0,
            dead: None,
        };
        let out = actor.take_output(Ok(String::new()));
        (Some(actor), out)
    }

    /// Calls a method: `invocation` names it and gives its arguments in
    /// WAVE, without `self` (`incr(2)`). Traced as `<class>.<method>
    /// execute`, linked to the creation's span.
    pub fn call(
        &mut self,
        linker: &TaskLinker,
        telemetry: Option<&Telemetry>,
        component: &TaskComponent,
        invocation: &wave::Invocation,
        cx: &TaskContext<'_>,
    ) -> TaskOutput {
        let limits = linker.runtime().limits();
        let method = invocation.function.as_str();
        let function = format!("{}.{method}", self.class.name);
        let mut span = self.method_span(telemetry, component, method, cx);
        let result = match (&self.dead, self.class.methods.get(method)) {
            (Some(why), _) => Err(TaskError::new(
                TaskErrorKind::ActorDead,
                &function,
                format!("actor {} is dead: {why}", self.id),
            )),
            (None, None) => {
                let mut names: Vec<&String> = self.class.methods.keys().collect();
                names.sort();
                let names: Vec<String> = names.into_iter().cloned().collect();
                Err(TaskError::new(
                    TaskErrorKind::UnknownExport,
                    &function,
                    format!(
                        "actor class `{}` has no method `{method}`; its methods: {}",
                        self.class.name,
                        crate::runtime::check::list_or_none(&names)
                    ),
                ))
            }
            (None, Some(export)) => {
                let export = export.clone();
                rearm_store(
                    &mut self.store,
                    telemetry,
                    component,
                    &function,
                    span.as_ref(),
                    cx,
                    limits,
                );
                self.store.data_mut().tasks.set_actor(&self.id);
                self.run_method(&export, invocation, &function, limits)
            }
        };
        if let Err(error) = &result
            && self.dead.is_none()
            && kills(error.kind)
        {
            self.dead = Some(format!("call {} failed: {}", self.calls + 1, error.message));
        }
        let ran = ran(&result);
        let result = finish_run(
            &mut self.store,
            span.as_mut(),
            &function,
            result,
            cx,
            limits,
            |_| {},
        );
        if ran {
            self.calls += 1;
        }
        self.take_output(result)
    }

    fn run_method(
        &mut self,
        export: &ClassFunc,
        invocation: &wave::Invocation,
        function: &str,
        limits: &crate::config::Limits,
    ) -> std::result::Result<String, TaskError> {
        let (instance, handle) = (self.instance, self.handle);
        let store = &mut self.store;
        sandbox::contain("calling the actor", || {
            let mut params = vec![Val::Resource(handle)];
            params.extend(
                wave::parse_args(&invocation.text, &export.params).map_err(|cause| {
                    TaskError::new(
                        TaskErrorKind::InvalidArguments,
                        function,
                        format!("invalid arguments {:?}: {cause}", invocation.text),
                    )
                })?,
            );
            let func = instance
                .get_func(&mut *store, export.index)
                .ok_or_else(|| {
                    TaskError::new(TaskErrorKind::UnknownExport, function, "export vanished")
                })?;
            call(store, func, &params, function, limits)
        })
        .unwrap_or_else(|panic| Err(host_panic(function, &panic)))
    }

    /// The `<class>.<method> execute` span of a call, linked to the
    /// creation's.
    fn method_span(
        &self,
        telemetry: Option<&Telemetry>,
        component: &TaskComponent,
        method: &str,
        cx: &TaskContext<'_>,
    ) -> Option<opentelemetry_sdk::trace::Span> {
        let identity = ActorIdentity {
            id: &self.id,
            restarts: self.restarts,
        };
        let creation = Some(self.creation.clone()).filter(SpanContext::is_valid);
        telemetry.map(|t| {
            actor_span(
                t,
                component,
                identity,
                &self.class.name,
                method,
                creation,
                cx,
            )
        })
    }

    /// The actor's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its class's name.
    pub fn class(&self) -> &str {
        &self.class.name
    }

    /// Method calls it ran (not counting ones refused before running).
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// Why it is dead, if it is.
    pub fn dead(&self) -> Option<&str> {
        self.dead.as_deref()
    }

    /// Ends the actor inside a `<class>.kill execute` span: the guest's
    /// destructor runs (when the instance is still usable), then the
    /// instance is gone.
    pub fn kill(
        mut self,
        linker: &TaskLinker,
        telemetry: Option<&Telemetry>,
        component: &TaskComponent,
        cx: &TaskContext<'_>,
    ) -> TaskOutput {
        let limits = linker.runtime().limits();
        let function = format!("{}.kill", self.class.name);
        let mut span = self.method_span(telemetry, component, "kill", cx);
        let result = if self.dead.is_some() {
            Ok(String::new())
        } else {
            rearm_store(
                &mut self.store,
                telemetry,
                component,
                &function,
                span.as_ref(),
                cx,
                limits,
            );
            let handle = self.handle;
            let store = &mut self.store;
            sandbox::contain("dropping the actor", || {
                let _dropping = sandbox::host_call("the actor's destructor");
                handle
                    .resource_drop(&mut *store)
                    .map(|()| String::new())
                    .map_err(|e| {
                        TaskError::new(TaskErrorKind::Trap, &function, format!("trapped: {e}"))
                    })
            })
            .unwrap_or_else(|panic| Err(host_panic(&function, &panic)))
        };
        let result = finish_run(
            &mut self.store,
            span.as_mut(),
            &function,
            result,
            cx,
            limits,
            |_| {},
        );
        self.take_output(result)
    }

    /// What the guest wrote since the last run returned, with `result`.
    fn take_output(&mut self, result: std::result::Result<String, TaskError>) -> TaskOutput {
        let stdout = self.output.stdout.contents();
        let stderr = self.output.stderr.contents();
        let out = TaskOutput {
            result,
            stdout: stdout[self.seen.0.min(stdout.len())..].to_vec(),
            stderr: stderr[self.seen.1.min(stderr.len())..].to_vec(),
            nested: std::mem::take(&mut self.store.data_mut().tasks.output),
        };
        self.seen = (stdout.len(), stderr.len());
        out
    }
}

/// Whether a call's outcome means the method ran (rather than being
/// refused before it could: a dead actor, no such method, bad arguments).
pub fn ran(result: &std::result::Result<String, TaskError>) -> bool {
    !matches!(
        result.as_ref().map_err(|e| e.kind),
        Err(TaskErrorKind::ActorDead
            | TaskErrorKind::UnknownExport
            | TaskErrorKind::InvalidArguments)
    )
}

fn host_panic(function: &str, panic: &sandbox::HostPanic) -> TaskError {
    TaskError::new(TaskErrorKind::HostPanic, function, panic.to_string())
}

/// Whether a failed call leaves the instance unusable: it stopped part way.
pub fn kills(kind: TaskErrorKind) -> bool {
    matches!(
        kind,
        TaskErrorKind::Trap
            | TaskErrorKind::Timeout
            | TaskErrorKind::OutOfFuel
            | TaskErrorKind::MemoryLimit
            | TaskErrorKind::Interrupted
            | TaskErrorKind::HostPanic
    )
}

/// The `<class>.<method> execute` span of an actor's creation (`new`) or
/// call, linked to the creation's span when there is one.
fn actor_span(
    telemetry: &Telemetry,
    component: &TaskComponent,
    identity: ActorIdentity<'_>,
    class: &str,
    method: &str,
    creation: Option<SpanContext>,
    cx: &TaskContext<'_>,
) -> opentelemetry_sdk::trace::Span {
    let mut span = execute_span(
        telemetry,
        &SpanNaming::of(&format!("{class}.{method}")),
        component.name_value(),
        Some(component.digest_value()),
        cx,
    );
    let actor = crate::telemetry::task_span::ActorOfSpan {
        id: identity.id,
        class,
        method,
    };
    let mut attributes = actor.attributes().to_vec();
    if identity.restarts > 0 {
        attributes.push(KeyValue::new(
            "wtrace.actor_restarts",
            i64::from(identity.restarts),
        ));
    }
    span.set_attributes(attributes);
    if let Some(creation) = creation {
        span.add_link(creation, Vec::new());
    }
    span
}

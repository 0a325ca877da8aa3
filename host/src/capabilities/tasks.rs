//! The host side of `wtrace:tracing/tasks`: tasks that submit tasks.
//!
//! A nested submission gets its own `<function> submit` span, a child of the
//! calling guest's current span, and travels to the head like a driver's.
//! While a guest waits in `task-ref.get`, its worker is told (through
//! [`Submitter::waiting`]) so that it can run other tasks meanwhile.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};

use opentelemetry::trace::Span as _;
use serde::{Deserialize, Serialize};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use super::bindings::tasks;
use crate::capabilities::tracer::SpanBridge;
use crate::outcome::{OutputChunk, TaskErrorKind, TaskOutput};
use crate::runtime::Digest;
use crate::runtime::EPOCH_TICK;
use crate::runtime::wave::Invocation;
use crate::sandbox::{Deadline, Stopped, host_call};
use crate::telemetry::context::{WireContext, context_with_parent};
use crate::telemetry::task_span::{self, ActorOfSpan, SubmitSpan};

/// What a submission does to an actor. Its `function` is `<class>.new`,
/// `<class>.<method>` or `<class>.kill`; its invocation is the constructor
/// call (`counter(5)`) or the method call (`incr(2)`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActorOp {
    /// Make actor `id` (named `name`, if given) on any worker.
    Create {
        /// Its id, unique in the cluster.
        id: String,
        /// A name usable in place of the id.
        name: Option<String>,
        /// How many times the cluster makes it again, by its constructor,
        /// after a call left it dead or its worker died.
        max_restarts: u32,
        /// Which making this is: 0, then 1, 2… for each restart.
        restarts: u32,
    },
    /// Call a method of the actor `id` names (its id or its name), after
    /// every call sent to it before.
    Call {
        /// The actor's id or name.
        id: String,
    },
    /// End the actor, after the calls sent to it before.
    Kill {
        /// The actor's id or name.
        id: String,
    },
    /// Look up the actor `id` names (its id or its name): answered at once,
    /// without running anything, with a [`FoundActor`] in JSON.
    Find {
        /// The actor's id or name.
        id: String,
    },
}

impl ActorOp {
    /// The actor's id or name.
    pub fn id(&self) -> &str {
        match self {
            Self::Create { id, .. } | Self::Call { id } | Self::Kill { id } | Self::Find { id } => {
                id
            }
        }
    }
}

/// An actor as [`ActorOp::Find`] answers: what a reference to it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoundActor {
    /// Its id.
    pub id: String,
    /// Its class.
    pub class: String,
    /// Its component.
    pub component: Digest,
    /// Its component's file name.
    pub component_name: String,
}

/// A task submitted from inside a task.
#[derive(Debug, Clone)]
pub struct NestedTask {
    /// Its id: the parent's id, a dot, a counter.
    pub task_id: String,
    /// The component to run.
    pub component: Digest,
    /// The export to call.
    pub function: String,
    /// The whole invocation in WAVE.
    pub invocation: String,
    /// Its submit span.
    pub trace: Option<WireContext>,
    /// How deep it is nested (1 for a task submitted by a top-level task).
    pub depth: u32,
    /// For an actor's creation, call, end or lookup.
    pub actor: Option<ActorOp>,
}

/// A nested task's result as it comes back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NestedResult {
    /// The pid of the worker that ran it.
    pub pid: u32,
    /// Its output.
    pub output: TaskOutput,
}

/// Where nested tasks go. A worker implements it over its connection to
/// the head.
///
/// Both methods are called from executor threads, possibly concurrently;
/// neither may block for long.
pub trait Submitter: Send + Sync + std::fmt::Debug {
    /// Queues `task`; its result will arrive on the returned channel.
    fn submit(&self, task: NestedTask) -> Result<Submitted, String>;

    /// The task that submitted `id` no longer wants its result (it dropped
    /// its reference, gave up waiting, or ended): forget what waits for it.
    fn forget(&self, _id: u64) {}

    /// The file name of a component this worker holds, for submit spans.
    fn component_name(&self, _digest: &Digest) -> Option<String> {
        None
    }

    /// The calling task starts (`true`) or stops waiting for results. A
    /// waiting task holds no CPU, so the worker may run another meanwhile.
    fn waiting(&self, waiting: bool);
}

/// Who a task is, for the nested tasks it submits.
#[derive(Clone)]
pub struct NestedContext {
    /// Where submissions go.
    pub submitter: Arc<dyn Submitter>,
    /// The submitting task's id.
    pub task_id: String,
    /// The submitting task's component.
    pub component: Digest,
    /// Its component's file name, shared with the component's spans.
    pub component_name: std::sync::Arc<str>,
    /// Its component's `wtrace.component.digest` value, made once per
    /// component.
    pub digest_value: opentelemetry::Value,
    /// Its nesting depth (0 for a task a driver submitted).
    pub depth: u32,
    /// The actor whose creation or method this is, if it is one: waiting
    /// for a call to that actor would wait for itself.
    pub actor: Option<String>,
}

impl std::fmt::Debug for NestedContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NestedContext")
            .field("task_id", &self.task_id)
            .field("depth", &self.depth)
            .finish_non_exhaustive()
    }
}

/// A nested task the [`Submitter`] took: its id there, and where its result
/// will arrive.
#[derive(Debug)]
pub struct Submitted {
    /// The submitter's id for it, for [`Submitter::forget`].
    pub id: u64,
    /// Its result, when it comes.
    pub result: Receiver<NestedResult>,
}

/// A submitted nested task, held in the store's resource table. Dropped (by
/// the guest, or with the task's store) before its result came, it tells
/// the submitter to forget it, so nothing waits for it in vain.
pub struct PendingTask {
    function: String,
    /// For a call to an actor: its id.
    actor: Option<String>,
    id: u64,
    submitter: Arc<dyn Submitter>,
    rx: Option<Receiver<NestedResult>>,
    answer: Option<Result<String, String>>,
}

impl std::fmt::Debug for PendingTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingTask")
            .field("function", &self.function)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// An actor a task holds a reference to, in the store's resource table.
#[derive(Debug, Clone)]
pub struct ActorRef {
    id: String,
    class: String,
    component: Digest,
    component_name: String,
}

impl Drop for PendingTask {
    fn drop(&mut self) {
        if self.answer.is_none() {
            self.submitter.forget(self.id);
        }
    }
}

/// The state of `tasks` for one task's store.
pub(crate) struct TasksState {
    context: Option<NestedContext>,
    max_tasks: u32,
    max_depth: u32,
    submitted: u32,
    /// Output of the nested tasks whose results were fetched, at most
    /// `max_output` bytes of it (it travels with the task's own result).
    pub(crate) output: Vec<OutputChunk>,
    output_bytes: usize,
    max_output: usize,
}

impl TasksState {
    pub(crate) fn new(context: Option<NestedContext>, limits: &crate::config::Limits) -> Self {
        Self {
            context,
            max_tasks: limits.nested_tasks,
            max_depth: limits.nesting_depth,
            submitted: 0,
            output: Vec::new(),
            output_bytes: 0,
            max_output: limits.output_bytes as usize,
        }
    }

    /// Marks the task as a method (or the constructor) of actor `id`.
    pub(crate) fn set_actor(&mut self, id: &str) {
        if let Some(context) = &mut self.context {
            context.actor = Some(id.to_owned());
        }
    }

    /// Keeps a nested task's output, as much as fits the task's output
    /// budget; past it, the rest is dropped and the last chunk says so.
    fn keep_output(&mut self, mut chunk: OutputChunk) {
        let left = self.max_output.saturating_sub(self.output_bytes);
        if left == 0 {
            return;
        }
        let size = chunk.stdout.len() + chunk.stderr.len();
        if size > left {
            chunk.stdout.truncate(left);
            chunk.stderr.truncate(left - chunk.stdout.len());
            chunk.stderr.extend_from_slice(
                format!(
                    "\nwtrace: the output of nested tasks past {} bytes was dropped\n",
                    self.max_output
                )
                .as_bytes(),
            );
            self.output_bytes = self.max_output;
        } else {
            self.output_bytes += size;
        }
        self.output.push(chunk);
    }
}

/// The tasks interface as seen by host calls.
#[allow(missing_debug_implementations)]
pub(crate) struct Tasks<'a> {
    pub(crate) table: &'a mut ResourceTable,
    pub(crate) bridge: &'a SpanBridge,
    pub(crate) state: &'a mut TasksState,
    pub(crate) deadline: &'a Deadline,
}

/// A nested submission as the host calls describe it, before it gets its
/// task id and span.
struct Request {
    component: Option<Digest>,
    /// Its component's file name, when the caller knows it.
    component_name: Option<String>,
    /// `<export>`, or `<class>.<method>` for an actor.
    function: String,
    /// The whole invocation in WAVE.
    invocation: String,
    actor: Option<(ActorOp, ActorSpan)>,
}

/// What an actor submission's span says of the actor.
struct ActorSpan {
    class: String,
    method: String,
}

impl Tasks<'_> {
    fn context(&self) -> Result<NestedContext, String> {
        self.state.context.clone().ok_or_else(|| {
            "nested tasks and actors need a cluster: this task was not run by a wtrace worker"
                .into()
        })
    }

    /// Checks the limits, makes the submit span and hands `request` to the
    /// submitter. A limit reached is a trap (the task fails); what the
    /// cluster refuses is an error for the guest.
    fn send(&mut self, request: Request) -> wasmtime::Result<Result<Submitted, String>> {
        let context = match self.context() {
            Ok(context) => context,
            Err(why) => return Ok(Err(why)),
        };
        // The depth came from the head; a wrapped sum would skip the limit.
        let depth = context.depth.saturating_add(1);
        if depth > self.state.max_depth {
            return Err(Stopped::error(
                TaskErrorKind::NestingLimit,
                format!(
                    "nesting depth limit reached: tasks may nest {} deep (raise it with --max-nesting-depth)",
                    self.state.max_depth
                ),
            ));
        }
        if self.state.submitted >= self.state.max_tasks {
            return Err(Stopped::error(
                TaskErrorKind::NestingLimit,
                format!(
                    "nested task limit reached: a task may submit {} tasks (raise it with --max-nested-tasks)",
                    self.state.max_tasks
                ),
            ));
        }
        self.state.submitted += 1;
        let task_id = format!("{}.{}", context.task_id, self.state.submitted);
        let component = request.component.unwrap_or(context.component);

        let parent = self.bridge.current().clone();
        let (span_context, span) = match self.bridge.tracer() {
            Some(tracer) => {
                // Named as the execute span will name it; a component this
                // worker does not hold is named by its digest.
                let (name, digest) = if component == context.component {
                    let name = crate::attrs::text(context.component_name.clone());
                    (name, context.digest_value.clone())
                } else {
                    let name = request
                        .component_name
                        .or_else(|| context.submitter.component_name(&component))
                        .unwrap_or_else(|| component.to_string());
                    (
                        crate::attrs::text(name),
                        crate::attrs::text(component.to_string()),
                    )
                };
                let span = task_span::start_submit(
                    tracer,
                    SubmitSpan {
                        function: &request.function,
                        component: name,
                        digest,
                        task_id: &task_id,
                        depth: Some(depth),
                        actor: request.actor.as_ref().map(|(op, span)| ActorOfSpan {
                            id: op.id(),
                            class: &span.class,
                            method: &span.method,
                        }),
                    },
                    &context_with_parent(Some(parent)),
                );
                (span.span_context().clone(), Some(span))
            }
            None => (parent, None),
        };
        let submitted = context.submitter.submit(NestedTask {
            task_id,
            component,
            function: request.function,
            invocation: request.invocation,
            trace: WireContext::of(&span_context),
            depth,
            actor: request.actor.map(|(op, _)| op),
        });
        if let Some(mut span) = span {
            if let Err(error) = &submitted {
                span.set_status(opentelemetry::trace::Status::error(error.clone()));
            }
            span.end();
        }
        Ok(submitted)
    }

    fn submit_to(
        &mut self,
        component: Option<Digest>,
        function: String,
        args: String,
    ) -> wasmtime::Result<Result<Resource<PendingTask>, String>> {
        let invocation: Invocation = match format!("{function}({args})").parse() {
            Ok(invocation) => invocation,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let request = Request {
            component,
            component_name: None,
            function: invocation.function,
            invocation: invocation.text,
            actor: None,
        };
        let function = request.function.clone();
        self.pending(request, function, None)
    }

    /// Sends `request` and holds the task in the table, for `get`.
    fn pending(
        &mut self,
        request: Request,
        function: String,
        actor: Option<String>,
    ) -> wasmtime::Result<Result<Resource<PendingTask>, String>> {
        let submitter = match self.context() {
            Ok(context) => context.submitter,
            Err(why) => return Ok(Err(why)),
        };
        match self.send(request)? {
            Ok(Submitted { id, result }) => Ok(Ok(self.table.push(PendingTask {
                function,
                actor,
                id,
                submitter,
                rx: Some(result),
                answer: None,
            })?)),
            Err(error) => Ok(Err(error)),
        }
    }

    /// Sends `request` and waits for its answer.
    fn send_and_wait(&mut self, request: Request) -> wasmtime::Result<Result<String, String>> {
        let function = request.function.clone();
        let Submitted { id, result } = match self.send(request)? {
            Ok(submitted) => submitted,
            Err(error) => return Ok(Err(error)),
        };
        let answer = self.answer(function, &result);
        if let Ok(context) = self.context() {
            context.submitter.forget(id);
        }
        answer
    }

    /// Waits for a nested task's result, keeping its output; the worker
    /// may run other tasks meanwhile.
    fn answer(
        &mut self,
        function: String,
        rx: &Receiver<NestedResult>,
    ) -> wasmtime::Result<Result<String, String>> {
        let submitter = self.state.context.as_ref().map(|c| c.submitter.clone());
        if let Some(submitter) = &submitter {
            submitter.waiting(true);
        }
        let waited = self.wait(rx);
        if let Some(submitter) = &submitter {
            submitter.waiting(false);
        }
        Ok(match waited? {
            Some(NestedResult { pid, output }) => {
                self.state.keep_output(OutputChunk {
                    function,
                    pid,
                    stdout: output.stdout,
                    stderr: output.stderr,
                });
                for chunk in output.nested {
                    self.state.keep_output(chunk);
                }
                output.result.map_err(|e| e.to_string())
            }
            None => Err("lost the cluster before the nested task finished".to_owned()),
        })
    }

    fn wait(&mut self, rx: &Receiver<NestedResult>) -> wasmtime::Result<Option<NestedResult>> {
        loop {
            self.deadline.check(" while waiting for a nested task")?;
            match rx.recv_timeout(EPOCH_TICK) {
                Ok(result) => return Ok(Some(result)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
            }
        }
    }

    /// Whether this task is a method of actor `id` (or makes it): waiting
    /// for a call to it would wait for this very call to end.
    fn is_self(&self, id: &str) -> bool {
        self.state
            .context
            .as_ref()
            .is_some_and(|c| c.actor.as_deref() == Some(id))
    }

    fn create_actor_in(
        &mut self,
        component: Option<Digest>,
        class: String,
        args: String,
        options: tasks::ActorOptions,
    ) -> wasmtime::Result<Result<Resource<ActorRef>, String>> {
        let invocation: Invocation = match format!("{class}({args})").parse() {
            Ok(invocation) => invocation,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let class = invocation.function.clone();
        let id = format!("{class}-{}", crate::ids::random_hex(8));
        let op = ActorOp::Create {
            id: id.clone(),
            name: options.name,
            max_restarts: options.max_restarts,
            restarts: 0,
        };
        let context = match self.context() {
            Ok(context) => context,
            Err(why) => return Ok(Err(why)),
        };
        let component = component.unwrap_or(context.component);
        let request = Request {
            component: Some(component),
            component_name: None,
            function: format!("{class}.new"),
            invocation: invocation.text,
            actor: Some((
                op,
                ActorSpan {
                    class: class.clone(),
                    method: "new".into(),
                },
            )),
        };
        if let Err(error) = self.send_and_wait(request)? {
            return Ok(Err(error));
        }
        let component_name = if component == context.component {
            context.component_name.to_string()
        } else {
            context
                .submitter
                .component_name(&component)
                .unwrap_or_else(|| component.to_string())
        };
        Ok(Ok(self.table.push(ActorRef {
            id,
            class,
            component,
            component_name,
        })?))
    }
}

/// `sha256:<hex>` (or the hex alone) as a digest, or why not.
fn parse_digest(component: &str) -> Result<Digest, String> {
    Digest::parse(component).ok_or_else(|| {
        format!("{component:?} is not a component digest; expected sha256:<64 hex digits>")
    })
}

impl tasks::Host for Tasks<'_> {
    fn submit(
        &mut self,
        function: String,
        args: String,
    ) -> wasmtime::Result<Result<Resource<PendingTask>, String>> {
        let _call = host_call("wtrace:tracing/tasks#submit");
        self.submit_to(None, function, args)
    }

    fn submit_to(
        &mut self,
        component: String,
        function: String,
        args: String,
    ) -> wasmtime::Result<Result<Resource<PendingTask>, String>> {
        let _call = host_call("wtrace:tracing/tasks#submit-to");
        match parse_digest(&component) {
            Ok(digest) => Tasks::submit_to(self, Some(digest), function, args),
            Err(why) => Ok(Err(why)),
        }
    }

    fn create_actor(
        &mut self,
        class: String,
        args: String,
        options: tasks::ActorOptions,
    ) -> wasmtime::Result<Result<Resource<ActorRef>, String>> {
        let _call = host_call("wtrace:tracing/tasks#create-actor");
        self.create_actor_in(None, class, args, options)
    }

    fn create_actor_in(
        &mut self,
        component: String,
        class: String,
        args: String,
        options: tasks::ActorOptions,
    ) -> wasmtime::Result<Result<Resource<ActorRef>, String>> {
        let _call = host_call("wtrace:tracing/tasks#create-actor-in");
        match parse_digest(&component) {
            Ok(digest) => Tasks::create_actor_in(self, Some(digest), class, args, options),
            Err(why) => Ok(Err(why)),
        }
    }

    fn actor(
        &mut self,
        id_or_name: String,
    ) -> wasmtime::Result<Result<Resource<ActorRef>, String>> {
        let _call = host_call("wtrace:tracing/tasks#actor");
        let context = match self.context() {
            Ok(context) => context,
            Err(why) => return Ok(Err(why)),
        };
        let find = NestedTask {
            task_id: context.task_id.clone(),
            component: context.component,
            function: "actor".into(),
            invocation: String::new(),
            trace: None,
            depth: context.depth,
            actor: Some(ActorOp::Find { id: id_or_name }),
        };
        let Submitted { id, result } = match context.submitter.submit(find) {
            Ok(submitted) => submitted,
            Err(why) => return Ok(Err(why)),
        };
        let answer = self.wait(&result);
        context.submitter.forget(id);
        let found = match answer? {
            Some(NestedResult { output, .. }) => output.result.map_err(|e| e.message),
            None => Err("lost the cluster before it answered".to_owned()),
        };
        let found: FoundActor = match found.and_then(|json| {
            serde_json::from_str(&json)
                .map_err(|e| format!("the cluster's answer is unreadable: {e}"))
        }) {
            Ok(found) => found,
            Err(why) => return Ok(Err(why)),
        };
        Ok(Ok(self.table.push(ActorRef {
            id: found.id,
            class: found.class,
            component: found.component,
            component_name: found.component_name,
        })?))
    }
}

impl tasks::HostActorRef for Tasks<'_> {
    fn id(&mut self, actor: Resource<ActorRef>) -> wasmtime::Result<String> {
        let _call = host_call("wtrace:tracing/tasks#[method]actor-ref.id");
        Ok(self.table.get(&actor)?.id.clone())
    }

    fn class(&mut self, actor: Resource<ActorRef>) -> wasmtime::Result<String> {
        let _call = host_call("wtrace:tracing/tasks#[method]actor-ref.class");
        Ok(self.table.get(&actor)?.class.clone())
    }

    fn call(
        &mut self,
        actor: Resource<ActorRef>,
        method: String,
        args: String,
    ) -> wasmtime::Result<Result<Resource<PendingTask>, String>> {
        let _call = host_call("wtrace:tracing/tasks#[method]actor-ref.call");
        let actor = self.table.get(&actor)?.clone();
        let invocation: Invocation = match format!("{method}({args})").parse() {
            Ok(invocation) => invocation,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let function = format!("{}.{}", actor.class, invocation.function);
        let request = Request {
            component: Some(actor.component),
            component_name: Some(actor.component_name),
            function: function.clone(),
            invocation: invocation.text,
            actor: Some((
                ActorOp::Call {
                    id: actor.id.clone(),
                },
                ActorSpan {
                    class: actor.class,
                    method: invocation.function,
                },
            )),
        };
        self.pending(request, function, Some(actor.id))
    }

    fn kill(&mut self, actor: Resource<ActorRef>) -> wasmtime::Result<Result<(), String>> {
        let _call = host_call("wtrace:tracing/tasks#[method]actor-ref.kill");
        let actor = self.table.get(&actor)?.clone();
        if self.is_self(&actor.id) {
            return Ok(Err(format!(
                "actor {} cannot kill itself and wait: its calls run one at a time, so the kill \
                 would wait for this call to end",
                actor.id
            )));
        }
        let request = Request {
            component: Some(actor.component),
            component_name: Some(actor.component_name),
            function: format!("{}.kill", actor.class),
            invocation: "kill()".into(),
            actor: Some((
                ActorOp::Kill {
                    id: actor.id.clone(),
                },
                ActorSpan {
                    class: actor.class,
                    method: "kill".into(),
                },
            )),
        };
        Ok(self.send_and_wait(request)?.map(drop))
    }

    fn drop(&mut self, actor: Resource<ActorRef>) -> wasmtime::Result<()> {
        let _call = host_call("wtrace:tracing/tasks#[resource-drop]actor-ref");
        self.table.delete(actor)?;
        Ok(())
    }
}

impl tasks::HostTaskRef for Tasks<'_> {
    fn get(&mut self, task: Resource<PendingTask>) -> wasmtime::Result<Result<String, String>> {
        let _call = host_call("wtrace:tracing/tasks#[method]task-ref.get");
        if let Some(answer) = &self.table.get(&task)?.answer {
            return Ok(answer.clone());
        }
        let pending = self.table.get_mut(&task)?;
        if let Some(actor) = pending.actor.clone()
            && self.is_self(&actor)
        {
            return Ok(Err(format!(
                "this call to actor {actor} would wait forever: the actor's calls run one at a \
                 time, and its method running now is the one waiting"
            )));
        }
        let pending = self.table.get_mut(&task)?;
        let Some(rx) = pending.rx.take() else {
            // Only a wait cut short (by the deadline) leaves neither.
            return Ok(Err("the wait for this task was interrupted".into()));
        };
        let function = pending.function.clone();
        let answer = self.answer(function, &rx)?;
        self.table.get_mut(&task)?.answer = Some(answer.clone());
        Ok(answer)
    }

    fn drop(&mut self, task: Resource<PendingTask>) -> wasmtime::Result<()> {
        let _call = host_call("wtrace:tracing/tasks#[resource-drop]task-ref");
        self.table.delete(task)?;
        Ok(())
    }
}

struct TasksData;

impl HasData for TasksData {
    type Data<'a> = Tasks<'a>;
}

/// Adds `wtrace:tracing/tasks` to `linker`.
pub(crate) fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> Tasks<'_>,
) -> wasmtime::Result<()> {
    tasks::add_to_linker::<T, TasksData>(linker, view)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::mpsc::Sender;

    use opentelemetry::trace::SpanContext;

    use super::*;
    use crate::capabilities::bindings::tasks::{Host as _, HostTaskRef as _};
    use crate::capabilities::tracer::BridgeLimits;
    use crate::config::Limits;

    /// Keeps every nested task it is given, answering those `answer` says
    /// with `stdout` bytes of output; remembers what it was told to forget.
    #[derive(Debug, Default)]
    struct Keeping {
        next: std::sync::atomic::AtomicU64,
        waiting: Mutex<Vec<Sender<NestedResult>>>,
        forgotten: Mutex<Vec<u64>>,
        answer_with: Option<usize>,
    }

    impl Submitter for Keeping {
        fn submit(&self, _task: NestedTask) -> Result<Submitted, String> {
            let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (tx, rx) = std::sync::mpsc::channel();
            if let Some(bytes) = self.answer_with {
                tx.send(NestedResult {
                    pid: 7,
                    output: TaskOutput {
                        result: Ok("1".into()),
                        stdout: vec![b'o'; bytes],
                        stderr: Vec::new(),
                        nested: Vec::new(),
                    },
                })
                .unwrap();
            }
            self.waiting.lock().unwrap().push(tx);
            Ok(Submitted { id, result: rx })
        }

        fn waiting(&self, _waiting: bool) {}

        fn forget(&self, id: u64) {
            self.forgotten.lock().unwrap().push(id);
        }
    }

    fn run(submitter: Arc<Keeping>, f: impl FnOnce(&mut Tasks<'_>)) {
        let mut table = ResourceTable::new();
        let bridge = SpanBridge::new(
            None,
            SpanContext::empty_context(),
            BridgeLimits::from(&Limits::default()),
        );
        let context = NestedContext {
            submitter,
            task_id: "t-1".into(),
            component: Digest::of(b"ab"),
            component_name: "t.wasm".into(),
            digest_value: crate::attrs::text(Digest::of(b"ab").to_string()),
            depth: 0,
            actor: None,
        };
        let mut state = TasksState::new(Some(context), &Limits::default());
        let deadline = Deadline::new(std::time::Duration::from_secs(5), "--timeout", None);
        let mut tasks = Tasks {
            table: &mut table,
            bridge: &bridge,
            state: &mut state,
            deadline: &deadline,
        };
        f(&mut tasks);
    }

    #[test]
    fn references_dropped_before_their_result_are_forgotten() {
        let submitter = Arc::new(Keeping::default());
        run(submitter.clone(), |tasks| {
            let dropped = tasks.submit("f".into(), String::new()).unwrap().unwrap();
            let _kept = tasks.submit("f".into(), String::new()).unwrap().unwrap();
            tasks::HostTaskRef::drop(tasks, dropped).unwrap();
        });
        // The one the guest dropped, then the one the task's end dropped.
        assert_eq!(*submitter.forgotten.lock().unwrap(), [0, 1]);
    }

    #[test]
    fn nested_output_past_the_tasks_budget_is_dropped_and_said() {
        let limit = Limits::default().output_bytes as usize;
        let submitter = Arc::new(Keeping {
            answer_with: Some(limit / 3 + 1000),
            ..Keeping::default()
        });
        run(submitter.clone(), |tasks| {
            for _ in 0..5 {
                let task = tasks.submit("f".into(), String::new()).unwrap().unwrap();
                assert_eq!(tasks.get(task).unwrap(), Ok("1".into()));
            }
            let kept: usize = tasks
                .state
                .output
                .iter()
                .map(|c| c.stdout.len() + c.stderr.len())
                .sum();
            assert!(kept <= limit + 200, "{kept} bytes kept of a {limit} budget");
            assert_eq!(tasks.state.output.len(), 3, "the rest dropped whole");
            let last = tasks.state.output.last().unwrap();
            assert!(String::from_utf8_lossy(&last.stderr).contains("was dropped"));
        });
        // Answered references are not forgotten: nothing waited for them.
        assert!(submitter.forgotten.lock().unwrap().is_empty());
    }
}

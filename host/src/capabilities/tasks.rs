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
use crate::telemetry::task_span::{self, SubmitSpan};

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
    /// Its component's file name.
    pub component_name: String,
    /// Its nesting depth (0 for a task a driver submitted).
    pub depth: u32,
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

impl Tasks<'_> {
    fn submit_to(
        &mut self,
        component: Option<Digest>,
        function: String,
        args: String,
    ) -> wasmtime::Result<Result<Resource<PendingTask>, String>> {
        let Some(context) = self.state.context.clone() else {
            return Ok(Err(
                "nested tasks need a cluster: this task was not run by a wtrace worker".into(),
            ));
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
        let invocation: Invocation = match format!("{function}({args})").parse() {
            Ok(invocation) => invocation,
            Err(e) => return Ok(Err(e.to_string())),
        };
        self.state.submitted += 1;
        let task_id = format!("{}.{}", context.task_id, self.state.submitted);
        let component = component.unwrap_or_else(|| context.component.clone());

        let parent = self.bridge.current(self.table);
        let (span_context, span) = match self.bridge.tracer() {
            Some(tracer) => {
                // Named as the execute span will name it; a component this
                // worker does not hold is named by its digest.
                let name = if component == context.component {
                    context.component_name.clone()
                } else {
                    context
                        .submitter
                        .component_name(&component)
                        .unwrap_or_else(|| component.to_string())
                };
                let span = task_span::start_submit(
                    tracer,
                    SubmitSpan {
                        function: &invocation.function,
                        component: crate::attrs::text(name),
                        digest: crate::attrs::text(component.to_string()),
                        task_id: &task_id,
                        depth: Some(depth),
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
            function: invocation.function.clone(),
            invocation: invocation.text,
            trace: WireContext::of(&span_context),
            depth,
        });
        if let Some(mut span) = span {
            if let Err(error) = &submitted {
                span.set_status(opentelemetry::trace::Status::error(error.clone()));
            }
            span.end();
        }
        match submitted {
            Ok(Submitted { id, result }) => Ok(Ok(self.table.push(PendingTask {
                function: invocation.function,
                id,
                submitter: context.submitter.clone(),
                rx: Some(result),
                answer: None,
            })?)),
            Err(error) => Ok(Err(error)),
        }
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
        let hex = component.strip_prefix("sha256:").unwrap_or(&component);
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Err(format!(
                "{component:?} is not a component digest; expected sha256:<64 hex digits>"
            )));
        }
        Tasks::submit_to(self, Some(Digest(hex.to_ascii_lowercase())), function, args)
    }
}

impl tasks::HostTaskRef for Tasks<'_> {
    fn get(&mut self, task: Resource<PendingTask>) -> wasmtime::Result<Result<String, String>> {
        let _call = host_call("wtrace:tracing/tasks#[method]task-ref.get");
        if let Some(answer) = &self.table.get(&task)?.answer {
            return Ok(answer.clone());
        }
        let pending = self.table.get_mut(&task)?;
        let Some(rx) = pending.rx.take() else {
            // Only a wait cut short (by the deadline) leaves neither.
            return Ok(Err("the wait for this task was interrupted".into()));
        };
        let function = pending.function.clone();
        let submitter = self.state.context.as_ref().map(|c| c.submitter.clone());
        if let Some(submitter) = &submitter {
            submitter.waiting(true);
        }
        let waited = self.wait(&rx);
        if let Some(submitter) = &submitter {
            submitter.waiting(false);
        }
        let answer = match waited? {
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
        };
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
            component: Digest("ab".repeat(32)),
            component_name: "t.wasm".into(),
            depth: 0,
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

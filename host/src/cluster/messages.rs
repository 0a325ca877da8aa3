//! What drivers, workers and the cluster say to each other, whatever the
//! transport: submissions, leases, results, status. The TCP transport frames
//! these in postcard; the in-process link hands them over as they are.
//!
//! Every message is bounded by construction: batches are split by bytes
//! ([`BATCH_BYTES`]) as well as by count.

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::capabilities::tasks::ActorOp;
use crate::config::{ExportPolicy, Grants, Limits};
use crate::outcome::TaskOutput;
use crate::runtime::Digest;
use crate::telemetry::context::WireContext;

/// Bytes of payload a batched message (leases, results, submissions) holds
/// before the batch is split: many small tasks share a message, large ones
/// go alone.
pub const BATCH_BYTES: usize = 8 << 20;

/// Longest function name or task id a submission may carry.
pub const MAX_NAME_BYTES: usize = 1024;

/// Components a worker holds at once; past it, the cluster tells it to
/// forget the least recently leased, and sends its bytes again when needed.
pub const WORKER_COMPONENTS: usize = 32;

/// Largest component a cluster stores.
pub const MAX_COMPONENT_BYTES: usize = 192 << 20;

/// Splits `items` into batches of at most `max_count` items and, unless an
/// item is larger on its own, at most `max_bytes` bytes by `size`.
pub fn batches<T>(
    items: Vec<T>,
    max_count: usize,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> Vec<Vec<T>> {
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0usize;
    for item in items {
        let item_bytes = size(&item);
        if !current.is_empty()
            && (current.len() >= max_count || bytes.saturating_add(item_bytes) > max_bytes)
        {
            batches.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes = bytes.saturating_add(item_bytes);
        current.push(item);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// A cluster's tracing startup hook: what names it, and its digest. Its
/// bytes are a blob of their own, fetched by digest
/// ([`FromWorker::Fetch`], [`FromDriver::Fetch`]), never sent with the
/// configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookRef {
    /// How the user named it.
    pub display: String,
    /// Its file name.
    pub name: String,
    /// The export to call.
    pub export: String,
    /// sha256 of the bytes.
    pub digest: Digest,
}

impl HookRef {
    /// What names `hook`.
    pub fn of(hook: &crate::exec::hook::HookComponent) -> Self {
        Self {
            display: hook.display.clone(),
            name: hook.name.display().to_string(),
            export: hook.export.clone(),
            digest: hook.digest,
        }
    }

    /// The hook, given its bytes as fetched: refused unless they are the
    /// ones its digest names.
    pub fn with_bytes(&self, bytes: Vec<u8>) -> crate::Result<crate::exec::hook::HookComponent> {
        let digest = Digest::of(&bytes);
        if digest != self.digest {
            return Err(crate::Error::Hook {
                hook: self.display.clone(),
                cause: format!(
                    "the cluster sent bytes of digest {digest} for the hook of digest {}",
                    self.digest
                ),
            });
        }
        Ok(crate::exec::hook::HookComponent {
            display: self.display.clone(),
            name: self.name.clone().into(),
            export: self.export.clone(),
            digest,
            bytes: bytes.into(),
        })
    }
}

/// What every process of a cluster shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// The job (session) id.
    pub job_id: String,
    /// The tracing startup hook, if any.
    pub hook: Option<HookRef>,
    /// Per-task limits.
    pub limits: Limits,
    /// Where hooks may export spans.
    pub policy: ExportPolicy,
    /// What tasks may reach beyond the default sandbox.
    pub grants: Grants,
    /// How often a task is retried when its worker dies.
    pub max_retries: u32,
    /// Bytes of components the head stores (`--component-store`).
    pub component_store: u64,
    /// How many actors may live at once.
    #[serde(default)]
    pub actors: ActorLimits,
}

/// How many actors may live at once (`--max-actors`,
/// `--max-actors-per-worker`): each holds a store, and its memory, until
/// it is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorLimits {
    /// In the whole cluster.
    pub per_cluster: u32,
    /// On one worker.
    pub per_worker: u32,
}

impl Default for ActorLimits {
    fn default() -> Self {
        Self {
            per_cluster: 1000,
            per_worker: 100,
        }
    }
}

/// A component a task runs, sent with its bytes the first time a worker needs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentRef {
    /// sha256 of the bytes.
    pub digest: Digest,
    /// Its file name, for spans and messages.
    pub name: String,
    /// The bytes, when the receiver may not have them yet.
    #[serde(with = "serde_bytes")]
    pub bytes: Option<Vec<u8>>,
}

/// A task handed to a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lease {
    /// The head's id for the task.
    pub lease_id: u64,
    /// The task's id as its submitter named it (`wtrace.task_id`).
    pub task_id: String,
    /// 0 for the first attempt, then 1, 2… after worker deaths.
    pub attempt: u32,
    /// The component.
    pub component: ComponentRef,
    /// The export to call.
    pub function: String,
    /// The whole invocation in WAVE.
    pub invocation: String,
    /// The submit span (never among the arguments).
    pub trace: Option<WireContext>,
    /// How deep the task is nested (0 when a driver submitted it).
    pub depth: u32,
    /// Its last worker died before saying whether it had started it: the
    /// worker says so ([`FromWorker::Started`]) before running it.
    pub confirm_start: bool,
    /// For an actor's creation, call or end: which, and the actor's id.
    pub actor: Option<ActorOp>,
}

/// An actor as `wtrace actor list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorStatus {
    /// Its id.
    pub id: String,
    /// Its name, if it was given one.
    pub name: Option<String>,
    /// Its class (the resource type).
    pub class: String,
    /// Its component's file name.
    pub component: String,
    /// Its component's digest.
    pub digest: Digest,
    /// The worker holding it, and that worker's node and pid.
    pub worker: Option<(String, String, u32)>,
    /// Method calls it finished.
    pub calls: u64,
    /// Times it was made again after dying.
    pub restarts: u32,
    /// `creating`, `alive`, or `dead: <why>`.
    pub state: String,
}

/// A finished task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Done {
    /// The id the receiver knows the task by: the lease id for the head, the
    /// tag for a driver.
    pub id: u64,
    /// The pid of the worker that ran it.
    pub pid: u32,
    /// How long the worker spent on it, in µs.
    pub busy_us: u32,
    /// Its result and output.
    pub output: TaskOutput,
}

/// About how many bytes a message takes on the wire: what the head's
/// per-connection send budget counts.
pub trait WireSize {
    /// The size in bytes, roughly.
    fn wire_size(&self) -> usize;
}

impl WireSize for ToWorker {
    fn wire_size(&self) -> usize {
        match self {
            Self::Run(leases) => leases.iter().map(Lease::wire_size).sum(),
            Self::Results(results) => results.iter().map(Done::wire_size).sum(),
            Self::Forget(digests) => digests.len() * 72,
            Self::Shutdown => 1,
            Self::Blob(_, bytes) => bytes.as_ref().map_or(0, Vec::len) + 72,
        }
    }
}

impl WireSize for ToDriver {
    fn wire_size(&self) -> usize {
        match self {
            Self::Results(results) => results.iter().map(Done::wire_size).sum(),
            Self::Status(status) => 512 + status.workers.len() * 128,
            Self::Stopped => 1,
            Self::Blob(_, bytes) => bytes.as_ref().map_or(0, Vec::len) + 72,
            Self::Detached(answer) => answer.as_ref().map_or_else(String::len, String::len) + 8,
        }
    }
}

impl Done {
    /// About how many bytes it takes on the wire: what batches are split by.
    pub fn wire_size(&self) -> usize {
        self.output.wire_size() + 32
    }
}

impl Lease {
    /// About how many bytes it takes on the wire.
    pub fn wire_size(&self) -> usize {
        self.invocation.len()
            + self.function.len()
            + self.task_id.len()
            + self.component.bytes.as_ref().map_or(0, Vec::len)
            + self.component.name.len()
            + 256
    }
}

impl Submission {
    /// About how many bytes it takes on the wire.
    pub fn wire_size(&self) -> usize {
        self.invocation.len()
            + self.function.len()
            + self.task_id.len()
            + self.trace.as_ref().map_or(0, WireContext::state_len)
            + 192
    }
}

/// Cluster → worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToWorker {
    /// Tasks to run, in order.
    Run(Vec<Lease>),
    /// Results of tasks the worker's tasks submitted, by the worker's tags.
    Results(Vec<Done>),
    /// Components the head will send again (with their bytes) if a later
    /// lease needs them: the worker drops them, so it holds a bounded set.
    Forget(Vec<Digest>),
    /// Finish the current task, flush spans, exit.
    Shutdown,
    /// The answer to [`FromWorker::Fetch`]: the blob, if the cluster has it.
    Blob(Digest, #[serde(with = "serde_bytes")] Option<Vec<u8>>),
}

/// Worker → cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromWorker {
    /// The hook ran; tasks may come.
    Ready,
    /// The hook failed; the worker exits.
    HookFailed(String),
    /// Tasks finished.
    Done(Vec<Done>),
    /// Tasks submitted by running tasks.
    Submit(Vec<Submission>),
    /// Leases the worker asks for, on top of those it holds or asked for
    /// before: its free slots. A task waiting for nested tasks frees its
    /// slot, so its children can run.
    Credit(u32),
    /// Ask for a blob (the hook) by digest; answered by [`ToWorker::Blob`].
    Fetch(Digest),
    /// How many leases the worker has started so far (it starts them in the
    /// order they were leased): only started tasks count an attempt when
    /// their worker dies.
    Started(u64),
}

/// A task a driver submits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submission {
    /// The driver's own id for it; results come back with it.
    pub tag: u64,
    /// The task's id (`wtrace.task_id`), unique across the cluster.
    pub task_id: String,
    /// The component, uploaded before.
    pub component: Digest,
    /// The export to call.
    pub function: String,
    /// The whole invocation in WAVE.
    pub invocation: String,
    /// The submit span.
    pub trace: Option<WireContext>,
    /// From a worker: the lease id of the running task that submits it. The
    /// head counts depth and tree budgets from it, not from anything a peer
    /// claims.
    pub parent: Option<u64>,
    /// For an actor's creation, call or end.
    pub actor: Option<ActorOp>,
}

/// Driver → cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromDriver {
    /// A component, stored by digest.
    Upload {
        /// Its file name.
        name: String,
        /// The bytes.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Tasks to queue.
    Submit(Vec<Submission>),
    /// Ask for [`ClusterStatus`].
    Status,
    /// Stop the cluster: workers flush and exit, then the head.
    Shutdown,
    /// Ask for a blob (the hook) by digest; answered by [`ToDriver::Blob`].
    Fetch(Digest),
    /// Keep the results of these tasks, submitted before, for a driver that
    /// reattaches later; answered by [`ToDriver::Detached`].
    Detach(DetachedJob),
}

/// The tasks of a driver that detached: what a later driver needs to fetch
/// their results in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetachedJob {
    /// The detached driver's id, the prefix of its task ids.
    pub driver_id: String,
    /// Its tasks in submission order, as runs of consecutive tags calling
    /// one function.
    pub runs: Vec<TaskRun>,
}

/// Consecutive tags, from `first`, of `count` tasks calling `function`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRun {
    /// The first tag.
    pub first: u64,
    /// How many tags.
    pub count: u64,
    /// The export they call.
    pub function: String,
}

impl DetachedJob {
    /// The job of `tasks`, given as (tag, function) in submission order.
    pub fn of<'a>(driver_id: &str, tasks: impl IntoIterator<Item = (u64, &'a str)>) -> Self {
        let mut runs: Vec<TaskRun> = Vec::new();
        for (tag, function) in tasks {
            match runs.last_mut() {
                Some(run) if run.first + run.count == tag && run.function == function => {
                    run.count += 1;
                }
                _ => runs.push(TaskRun {
                    first: tag,
                    count: 1,
                    function: function.to_owned(),
                }),
            }
        }
        Self {
            driver_id: driver_id.to_owned(),
            runs,
        }
    }

    /// Every task as (tag, function), in submission order.
    pub fn tasks(&self) -> impl Iterator<Item = (u64, &str)> {
        self.runs.iter().flat_map(|run| {
            (run.first..run.first + run.count).map(|tag| (tag, run.function.as_str()))
        })
    }
}

/// Cluster → driver.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToDriver {
    /// Finished tasks, by the driver's tags.
    Results(Vec<Done>),
    /// The answer to `Status`.
    Status(Box<ClusterStatus>),
    /// The cluster stopped.
    Stopped,
    /// The answer to [`FromDriver::Fetch`]: the blob, if the cluster has it.
    Blob(Digest, #[serde(with = "serde_bytes")] Option<Vec<u8>>),
    /// The answer to [`FromDriver::Detach`]: the job's id, or why it could
    /// not be kept.
    Detached(std::result::Result<String, String>),
}

/// A worker as `wtrace status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Its id.
    pub worker_id: String,
    /// Its node.
    pub node_id: String,
    /// Its process id.
    pub pid: u32,
    /// Whether its hook ran.
    pub ready: bool,
    /// Tasks it has started and not finished.
    pub running: usize,
    /// Tasks leased to it, started or waiting their turn there.
    pub leased: usize,
    /// Tasks it finished.
    pub done: u64,
}

/// The state of a cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The job id.
    pub job_id: String,
    /// The hook as named and its digest.
    pub hook: Option<(String, Digest)>,
    /// Connected workers.
    pub workers: Vec<WorkerStatus>,
    /// Tasks waiting for a worker.
    pub queued: usize,
    /// Tasks on workers.
    pub running: usize,
    /// Tasks finished.
    pub done: u64,
    /// Components stored.
    pub components: usize,
    /// Their bytes, of the `--component-store` quota.
    pub component_bytes: u64,
    /// Seconds since the head started.
    pub uptime: Duration,
    /// Workers whose hook failed: (worker id, pid, message).
    pub failed_hooks: Vec<(String, u32, String)>,
    /// Actors, live and dead.
    pub actors: Vec<ActorStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detached_job_keeps_its_tasks_in_order_as_runs() {
        let tasks = [(1, "a"), (2, "a"), (3, "b"), (5, "b"), (6, "a")];
        let job = DetachedJob::of("d1", tasks);
        assert_eq!(job.runs.len(), 4, "{job:?}");
        assert_eq!(job.tasks().collect::<Vec<_>>(), tasks);
    }

    #[test]
    fn batches_split_by_count_and_by_bytes_and_keep_order() {
        let sizes = vec![3, 3, 3, 10, 1, 1, 1, 1, 1];
        let split = batches(sizes, 3, 8, |n| *n);
        assert_eq!(
            split,
            vec![vec![3, 3], vec![3], vec![10], vec![1, 1, 1], vec![1, 1]]
        );
        assert!(batches(Vec::<usize>::new(), 3, 8, |n| *n).is_empty());
    }
}

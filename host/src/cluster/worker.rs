//! A worker process: joins the cluster, runs its tracing startup hook, then
//! runs leased tasks one at a time on an executor thread, each in a fresh
//! instance inside its `execute` span. It asks for work by credit: as many
//! leases as it has free slots.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rustc_hash::FxHashMap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::messages::{self, ActorOp, BATCH_BYTES, Done, FromWorker, Lease, Submission, ToWorker};
use super::transport::{self, Credentials, Endpoint, WorkerLink};
use crate::capabilities::provider::WorkerInfo;
use crate::capabilities::tasks::{NestedResult, NestedTask, Submitted, Submitter};
use crate::error::{Error, Result};
use crate::exec::actor::{Actor, ActorIdentity};
use crate::exec::hook::HookLinker;
use crate::exec::task::{
    self, TaskComponent, TaskContext, TaskError, TaskErrorKind, TaskLinker, TaskOutput,
};
use crate::runtime::{Digest, Runtime};
use crate::sync::{lock, wait, wait_timeout};
use crate::telemetry::Telemetry;
use crate::telemetry::context::WireContext;

/// How a worker process finds its cluster and names itself.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Where the cluster is.
    pub endpoint: Endpoint,
    /// How it proves it may join.
    pub credentials: Credentials,
    /// This worker's id.
    pub worker_id: String,
    /// This node's id.
    pub node_id: String,
    /// Where compiled components are cached.
    pub cache_dir: Option<PathBuf>,
}

/// Runs a worker until the head tells it to stop or goes away, then flushes
/// its spans. Blocks; call from a process's main thread.
pub fn run(options: WorkerOptions) -> Result<Stopped> {
    // Ctrl-C in a terminal reaches the whole process group; the driver
    // decides when workers stop, so that every span gets flushed.
    ignore_sigint();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("wtrace-worker-io")
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the worker's runtime", e))?;
    let handle = rt.handle().clone();
    let result = rt.block_on(serve(options, handle));
    rt.shutdown_timeout(Duration::from_secs(5));
    result
}

#[allow(unsafe_code)]
fn ignore_sigint() {
    // SAFETY: setting a signal's disposition to SIG_IGN has no handler to race with.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
}

async fn serve(options: WorkerOptions, handle: tokio::runtime::Handle) -> Result<Stopped> {
    let lost = || Error::Cluster("lost the cluster".into());
    let info = WorkerInfo {
        worker_id: options.worker_id.clone(),
        node_id: options.node_id.clone(),
        job_id: String::new(),
    };
    let told = Arc::new(StartsTold::default());
    let written = {
        let told = told.clone();
        move |message: &FromWorker| {
            if let FromWorker::Started(count) = message {
                *lock(&told.count) = *count;
                told.changed.notify_all();
            }
        }
    };
    let WorkerLink {
        config,
        tx: link,
        rx: mut inbox,
        lost: mut link_lost,
        sent: link_sent,
    } = transport::connect_worker(&options.endpoint, &options.credentials, info, written).await?;

    // The hook is asked for first: a worker held at its handshake gets the
    // answer once it is admitted, and makes its engine meanwhile.
    if let Some(spec) = &config.hook {
        link.send(FromWorker::Fetch(spec.digest))
            .map_err(|_| lost())?;
    }
    let runtime = Runtime::new(config.limits.clone(), options.cache_dir.clone())?;
    // The linkers are built on another thread while this one waits to be
    // admitted (and then runs the hook): they need only the engine.
    let (hook_linker, task_linker) = {
        let (runtime, grants) = (runtime.clone(), config.grants.clone());
        let wants_hook = config.hook.is_some();
        let (hook_tx, hook_rx) = tokio::sync::oneshot::channel();
        let task = tokio::task::spawn_blocking(move || {
            if wants_hook {
                let _ = hook_tx.send(HookLinker::new(&runtime));
            }
            TaskLinker::with_grants(&runtime, grants)
        });
        (hook_rx, task)
    };
    let info = WorkerInfo {
        worker_id: options.worker_id.clone(),
        node_id: options.node_id.clone(),
        job_id: config.job_id.clone(),
    };
    let telemetry = match &config.hook {
        None => None,
        Some(spec) => {
            let ran = async {
                let Some(bytes) = receive_blob(&mut inbox, &spec.digest).await? else {
                    return Ok(None);
                };
                let hook = spec.with_bytes(bytes)?;
                let linker = hook_linker
                    .await
                    .map_err(|_| Error::Cluster("the hook linker's thread failed".into()))??;
                // Hooks use synchronous WASI, which must not run on an async thread.
                let (rt, info, policy) = (runtime.clone(), info.clone(), config.policy.clone());
                let handle = handle.clone();
                tokio::task::spawn_blocking(move || {
                    hook.run_linked(&linker, &rt, info, &policy, Some(handle))
                })
                .await
                .map_err(|e| Error::Cluster(format!("the hook's thread failed: {e}")))?
                .map(Some)
            }
            .await;
            match ran {
                Ok(Some(telemetry)) => Some(telemetry),
                // Told to stop before it ran anything (a worker started for
                // nested tasks that were done by then): nothing to say.
                Ok(None) => return Ok(Stopped::Told),
                Err(error) => {
                    let _ = link.send(FromWorker::HookFailed(error.to_string()));
                    drop(link);
                    let _ = tokio::time::timeout(Duration::from_secs(5), link_sent).await;
                    return Err(error);
                }
            }
        }
    };
    let linker = task_linker
        .await
        .map_err(|e| Error::Cluster(format!("the task linker's thread failed: {e}")))??;
    link.send(FromWorker::Ready).map_err(|_| lost())?;

    let (out, mut out_rx) = mpsc::unbounded_channel::<FromWorker>();
    let pool = Arc::new(Pool {
        linker,
        telemetry: telemetry.clone(),
        components: Mutex::new(FxHashMap::default()),
        state: Mutex::new(PoolState::default()),
        wake: Condvar::new(),
        abort: Arc::new(AtomicBool::new(false)),
        out,
        pending: Mutex::new(FxHashMap::default()),
        next_tag: AtomicU64::new(1),
        done: Mutex::new(Vec::new()),
        done_count: AtomicUsize::new(0),
        done_ready: tokio::sync::Notify::new(),
        leases_came: tokio::sync::Notify::new(),
        drained: AtomicBool::new(false),
        started: AtomicU64::new(0),
        told,
        confirm_wanted: AtomicBool::new(false),
        credit: Mutex::new(Credit::default()),
        actors: Mutex::new(HashMap::new()),
    });
    // Set when this worker can no longer send to the head: it stops, and its
    // node starts another in its place.
    let closed = CancellationToken::new();
    let sender = {
        let pool = pool.clone();
        let closed = closed.clone();
        tokio::spawn(async move {
            let sent = send_loop(&pool, &link, &mut out_rx).await;
            if sent.is_err() {
                closed.cancel();
            }
            // Dropping the link's last sender lets it send what is queued, then close.
            drop(link);
            sent
        })
    };

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::io("cannot handle SIGTERM", e))?;
    let stopped = loop {
        tokio::select! {
            message = inbox.recv() => match message {
                Some(ToWorker::Run(leases)) => Pool::push(&pool, leases),
                Some(ToWorker::Results(results)) => pool.deliver(results),
                Some(ToWorker::Forget(digests)) => pool.forget(digests),
                Some(ToWorker::Blob(..)) => {}
                // Shutdown, or the cluster is gone: stop the running tasks.
                Some(ToWorker::Shutdown) => break Stopped::Told,
                None => match link_lost.try_recv() {
                    Ok(reason) => break Stopped::Lost(reason),
                    Err(_) => break Stopped::Told,
                },
            },
            _ = terminate.recv() => break Stopped::Told,
            () = closed.cancelled() => break Stopped::Lost("could not send to the cluster".into()),
        }
    };
    // Nothing more is taken: the cluster sees this worker leave once its
    // last results are out, and redelivers what it had leased.
    drop(inbox);
    let closing = pool.clone();
    let _ = tokio::task::spawn_blocking(move || closing.close(Duration::from_secs(10))).await;
    // Every task has stopped: the sender sends what is left and stops.
    pool.drained.store(true, Ordering::Release);
    pool.done_ready.notify_one();
    drop(pool);
    let stopped = match tokio::time::timeout(Duration::from_secs(5), sender).await {
        Ok(Ok(Err(_))) => Stopped::Lost("could not send to the cluster".into()),
        _ => stopped,
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), link_sent).await;
    if let Some(telemetry) = telemetry {
        // Exporters may block (OTLP over HTTP); keep the runtime free.
        let lost = tokio::task::spawn_blocking(move || {
            telemetry.shutdown_at_exit(&format!("wtrace worker (pid {})", std::process::id()))
        })
        .await
        .unwrap_or(false);
        if lost && stopped == Stopped::Told {
            return Ok(Stopped::LostTelemetry);
        }
    }
    Ok(stopped)
}

/// The blob of `digest`, asked for before anything else was; `None` if the
/// cluster is stopping.
async fn receive_blob(
    inbox: &mut mpsc::UnboundedReceiver<ToWorker>,
    digest: &Digest,
) -> Result<Option<Vec<u8>>> {
    let lost = || Error::Cluster(format!("lost the cluster while fetching blob {digest}"));
    loop {
        match inbox.recv().await.ok_or_else(lost)? {
            ToWorker::Blob(got, bytes) if got == *digest => {
                return bytes.map(Some).ok_or_else(|| {
                    Error::Cluster(format!("the cluster does not have blob {digest}"))
                });
            }
            ToWorker::Shutdown => return Ok(None),
            _ => {}
        }
    }
}

/// The link is closed: nothing more can be sent.
#[derive(Debug)]
struct LinkClosed;

/// Sends what the executors produce: messages as they come, results in
/// batches (quick tasks' results wait [`RESULT_DELAY`] at most for company)
/// with the credit the finished tasks free, until the pool is drained.
async fn send_loop(
    pool: &Pool,
    link: &mpsc::UnboundedSender<FromWorker>,
    out_rx: &mut mpsc::UnboundedReceiver<FromWorker>,
) -> std::result::Result<(), LinkClosed> {
    let send = |message: FromWorker| link.send(message).map_err(|_| LinkClosed);
    // The first credit: the pool is empty.
    if let Some(more) = pool.credit_wanted() {
        send(FromWorker::Credit(more))?;
    }
    let mut open = true;
    let mut told = 0;
    // When waiting results must leave, and when the head must hear of
    // starts even if no result came to carry them.
    let mut results_by: Option<tokio::time::Instant> = None;
    let mut tell_by: Option<tokio::time::Instant> = None;
    let later = |at: Option<tokio::time::Instant>| at.unwrap_or_else(tokio::time::Instant::now);
    loop {
        if results_by.is_none() && pool.done_count.load(Ordering::Acquire) > 0 {
            results_by = Some(tokio::time::Instant::now() + RESULT_DELAY);
        }
        // Leases that may start, or did, untold: the pool wakes this loop
        // when leases come, so no start goes untold for long.
        if tell_by.is_none()
            && (pool.started.load(Ordering::Acquire) != told
                || !lock(&pool.state).leases.is_empty())
        {
            tell_by = Some(tokio::time::Instant::now() + STARTED_DELAY);
        }
        let mut tell = false;
        tokio::select! {
            message = out_rx.recv(), if open => match message {
                Some(message) => {
                    send(message)?;
                    tell = true;
                }
                None => open = false,
            },
            _ = pool.done_ready.notified() => {}
            _ = pool.leases_came.notified() => continue,
            _ = tokio::time::sleep_until(later(results_by)), if results_by.is_some() => {}
            _ = tokio::time::sleep_until(later(tell_by)), if tell_by.is_some() => {
                tell = true;
                tell_by = None;
            }
        }
        results_by = None;
        let done = pool.take_done();
        // Starts go with results or other messages; alone only once a task
        // ran STARTED_DELAY without finishing, or a lease asks to confirm.
        tell |= !done.is_empty() || pool.confirm_wanted.swap(false, Ordering::AcqRel);
        let started = pool.started.load(Ordering::Acquire);
        let tell = tell && started != told;
        if tell {
            send(FromWorker::Started(started))?;
        }
        // A result leaves only once its task's spans are in the span files:
        // a worker killed the next moment takes none of them along.
        if !done.is_empty()
            && let Some(telemetry) = &pool.telemetry
            && let Err(error) = telemetry.sync_files()
        {
            eprintln!("wtrace worker (pid {}): {error}", std::process::id());
        }
        // Slots the finished tasks freed, asked for before their results
        // leave: the cluster leases more without waiting for them.
        if let Some(more) = pool.credit_wanted() {
            send(FromWorker::Credit(more))?;
        }
        for batch in messages::batches(done, RESULT_BATCH, BATCH_BYTES, Done::wire_size) {
            send(FromWorker::Done(batch))?;
        }
        while let Ok(message) = out_rx.try_recv() {
            send(message)?;
        }
        if tell {
            tell_by = None;
            told = started;
        }
        let drained = pool.done_count.load(Ordering::Acquire) == 0;
        if (!open || pool.drained.load(Ordering::Acquire)) && drained {
            return Ok(());
        }
    }
}

/// Why a worker stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// The head told it to, or went away, or SIGTERM came.
    Told,
    /// Its connection to the head failed: its node should start another.
    Lost(String),
    /// Told to stop, but its exporters lost spans (it said which).
    LostTelemetry,
}

/// The worker's executor threads and what they share.
///
/// One thread runs tasks, in lease order. When a task waits for a nested
/// task, it holds no CPU: if leases are queued and no other thread can run
/// them, a thread is added, so a task waiting on a task queued behind it
/// never deadlocks the worker. Extra threads exit once their task is done.
struct Pool {
    linker: TaskLinker,
    telemetry: Option<Telemetry>,
    /// The components this worker holds, as the head told it: the head
    /// says which to forget, so this map mirrors its bounded view.
    components: Mutex<FxHashMap<Digest, Arc<Loaded>>>,
    state: Mutex<PoolState>,
    wake: Condvar,
    abort: Arc<AtomicBool>,
    out: mpsc::UnboundedSender<FromWorker>,
    pending: Mutex<FxHashMap<u64, std::sync::mpsc::Sender<NestedResult>>>,
    next_tag: AtomicU64,
    /// Results not yet sent, so that quick tasks' results go out together.
    done: Mutex<Vec<Done>>,
    done_count: AtomicUsize,
    done_ready: tokio::sync::Notify,
    /// Wakes the sender when leases come, to time the telling of starts.
    leases_came: tokio::sync::Notify,
    /// Set once every executor thread has stopped.
    drained: AtomicBool,
    /// Leases taken off the queue to run, in lease order.
    started: AtomicU64,
    /// What the cluster has been told of `started`.
    told: Arc<StartsTold>,
    /// Set by a task whose lease asks to confirm its start before it runs.
    confirm_wanted: AtomicBool,
    credit: Mutex<Credit>,
    /// The actors this worker holds, by id. The head sends an actor one
    /// call at a time, so an actor is taken out while its call runs and
    /// never waited for.
    actors: Mutex<HashMap<String, Actor>>,
}

/// How many starts the transport has sent on to the cluster.
#[derive(Debug, Default)]
struct StartsTold {
    count: Mutex<u64>,
    changed: Condvar,
}

/// Leases a worker holds, at most: one running, the rest queued here so the
/// next starts without a round trip. How many it asks for adapts to how long
/// its tasks take: about [`QUEUED_WORK_US`] of work, so quick tasks come in
/// large batches while slow ones are not hoarded by one worker while
/// another idles.
const MAX_HELD: usize = 128;

/// The work, in µs, a worker asks for ahead.
const QUEUED_WORK_US: u64 = 3_000;

/// What a worker holds and has asked for: its credit is what it may take
/// on top.
#[derive(Debug)]
struct Credit {
    /// Leases received and not finished.
    held: usize,
    /// Leases asked for and not yet received.
    asked: usize,
    /// Moving average of how long its tasks take, in µs.
    busy_us: u64,
}

impl Default for Credit {
    fn default() -> Self {
        Self {
            held: 0,
            asked: 0,
            busy_us: QUEUED_WORK_US,
        }
    }
}

impl Credit {
    /// Slots free now, counted as asked for; `waiting` of the held tasks
    /// wait for nested tasks, and hold no slot.
    fn take_free(&mut self, waiting: usize) -> Option<u32> {
        let target = (QUEUED_WORK_US / self.busy_us.max(1)).clamp(2, MAX_HELD as u64) as usize;
        let have = self.held.saturating_sub(waiting) + self.asked;
        let more = target.checked_sub(have).filter(|more| *more > 0)?;
        self.asked += more;
        Some(more as u32)
    }
}

/// Results sent in one message at most.
const RESULT_BATCH: usize = 64;

/// How long a result may wait for others to share its message.
const RESULT_DELAY: Duration = Duration::from_millis(1);

/// How long a start may wait to go with its task's result: a task that runs
/// longer is told to the head (and shown running) after this.
const STARTED_DELAY: Duration = Duration::from_millis(10);

/// How long a worker waits with nothing to run before it hands freed memory
/// back to the OS.
const IDLE_TRIM_AFTER: Duration = Duration::from_secs(1);

/// Returns memory that finished tasks freed to the OS, from glibc's heap.
/// The `wtrace` binary allocates with mimalloc, which returns freed memory
/// by itself, so there this covers only what C code allocated; a program
/// that runs workers with the system allocator needs it more: glibc keeps
/// freed memory in per-thread arenas, which grew for millions of tasks
/// before they settled. Trimming whenever the worker goes idle keeps its
/// resident memory at what it uses.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    // SAFETY: `malloc_trim` only releases free memory; it is safe to call
    // at any time from any thread.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct PoolState {
    /// Leases to run, each with its component as it stood when the lease
    /// came (a later `Forget` does not take it from a queued lease).
    leases: VecDeque<(Lease, Option<Arc<Loaded>>)>,
    /// Executor threads alive.
    threads: usize,
    /// Threads whose task is waiting for a nested task.
    waiting: usize,
    closed: bool,
}

impl PoolState {
    /// Threads able to run a task now.
    fn runnable(&self) -> usize {
        self.threads - self.waiting
    }
}

/// A component this worker was sent: its bytes until it is compiled (once,
/// by the first task that needs it).
#[derive(Debug)]
struct Loaded {
    name: String,
    bytes: Mutex<Option<Vec<u8>>>,
    compiled: std::sync::OnceLock<std::result::Result<Arc<TaskComponent>, String>>,
}

impl Loaded {
    fn new(name: &str, bytes: Vec<u8>) -> Self {
        Self {
            name: name.to_owned(),
            bytes: Mutex::new(Some(bytes)),
            compiled: std::sync::OnceLock::new(),
        }
    }
}

/// How a task's submissions reach the head: named by the lease of the task
/// that submits them.
#[derive(Debug)]
struct PoolSubmitter {
    pool: Arc<Pool>,
    parent: u64,
}

/// How long a task whose start must be confirmed waits for the head to be
/// told; past it (the head is gone, say) the task runs anyway.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);

impl Pool {
    fn push(pool: &Arc<Self>, leases: Vec<Lease>) {
        let resolved: Vec<(Lease, Option<Arc<Loaded>>)> = {
            let mut components = lock(&pool.components);
            leases
                .into_iter()
                .map(|mut lease| {
                    let digest = lease.component.digest;
                    let loaded = match lease.component.bytes.take() {
                        Some(bytes) => {
                            let loaded = Arc::new(Loaded::new(&lease.component.name, bytes));
                            components.insert(digest, loaded.clone());
                            Some(loaded)
                        }
                        None => components.get(&digest).cloned(),
                    };
                    (lease, loaded)
                })
                .collect()
        };
        {
            // Calls and kills go to an actor's worker unasked.
            let asked = resolved
                .iter()
                .filter(|(lease, _)| {
                    !matches!(
                        lease.actor,
                        Some(ActorOp::Call { .. } | ActorOp::Kill { .. })
                    )
                })
                .count();
            let mut credit = lock(&pool.credit);
            credit.asked = credit.asked.saturating_sub(asked);
            credit.held += resolved.len();
        }
        let mut state = lock(&pool.state);
        state.leases.extend(resolved);
        if state.runnable() == 0 {
            Self::spawn_thread(pool, &mut state);
        }
        pool.wake.notify_one();
        drop(state);
        // The sender keeps track of when to tell the head of their starts.
        pool.leases_came.notify_one();
    }

    fn spawn_thread(pool: &Arc<Self>, state: &mut PoolState) {
        let pool = pool.clone();
        let spawned = std::thread::Builder::new()
            .name("wtrace-executor".into())
            .spawn(move || pool.run_thread());
        if spawned.is_ok() {
            state.threads += 1;
        }
    }

    fn run_thread(self: Arc<Self>) {
        let mut worked_since_trim = false;
        loop {
            let lease = {
                let mut state = lock(&self.state);
                loop {
                    if state.closed {
                        state.threads -= 1;
                        self.wake.notify_all();
                        return;
                    }
                    if let Some(lease) = state.leases.pop_front() {
                        // Counted under the lock, so starts stay in lease order.
                        let started = self.started.fetch_add(1, Ordering::SeqCst) + 1;
                        break (lease, started);
                    }
                    if !worked_since_trim {
                        state = wait(&self.wake, state);
                        continue;
                    }
                    let (next, timed_out) = wait_timeout(&self.wake, state, IDLE_TRIM_AFTER);
                    state = next;
                    if timed_out && state.leases.is_empty() {
                        drop(state);
                        release_free_memory();
                        worked_since_trim = false;
                        state = lock(&self.state);
                    }
                }
            };
            let ((lease, loaded), count) = lease;
            worked_since_trim = true;
            self.tell_started(count, lease.confirm_start);
            let submitter: Arc<dyn Submitter> = Arc::new(PoolSubmitter {
                pool: self.clone(),
                parent: lease.lease_id,
            });
            let started = std::time::Instant::now();
            // `execute` contains a panic of its own host calls; this one also
            // covers loading the component, so a panic anywhere fails the
            // task alone and this thread's accounting stays right.
            let output = crate::sandbox::contain("loading and running a task", || {
                self.run_one(&lease, loaded.as_deref(), &submitter)
            })
            .unwrap_or_else(|panic| {
                TaskOutput::failed(TaskError::new(
                    TaskErrorKind::HostPanic,
                    &lease.function,
                    panic.to_string(),
                ))
            });
            let busy_us = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
            self.finished(Done {
                id: lease.lease_id,
                pid: crate::ids::pid(),
                busy_us,
                output,
            });
            let mut state = lock(&self.state);
            if state.runnable() > 1 || state.closed {
                // Another thread can carry on (a waiting task resumed).
                state.threads -= 1;
                self.wake.notify_all();
                return;
            }
        }
    }

    /// Lets the head know `count` leases have started: at once when the
    /// lease asks to confirm its start (its last worker died not saying),
    /// waiting until it was written; else the sender tells it with the next
    /// message, or after [`STARTED_DELAY`].
    fn tell_started(&self, count: u64, confirm: bool) {
        if confirm {
            self.confirm_wanted.store(true, Ordering::Release);
            self.done_ready.notify_one();
            let mut sent = lock(&self.told.count);
            let deadline = std::time::Instant::now() + CONFIRM_TIMEOUT;
            while *sent < count && !lock(&self.state).closed {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                sent = wait_timeout(&self.told.changed, sent, left).0;
            }
        }
    }

    /// Queues a result; wakes the sender when this worker has nothing else
    /// to run now, or enough results to fill a message.
    fn finished(&self, done: Done) {
        {
            let mut credit = lock(&self.credit);
            credit.held = credit.held.saturating_sub(1);
            credit.busy_us = (credit.busy_us * 7 + u64::from(done.busy_us)) / 8;
        }
        let count = {
            let mut buffer = lock(&self.done);
            buffer.push(done);
            buffer.len()
        };
        self.done_count.store(count, Ordering::Release);
        if count >= RESULT_BATCH || lock(&self.state).leases.is_empty() {
            self.done_ready.notify_one();
        }
    }

    /// The credit to ask for now, if any slot is free and not asked for.
    fn credit_wanted(&self) -> Option<u32> {
        let state = lock(&self.state);
        if state.closed {
            return None;
        }
        lock(&self.credit).take_free(state.waiting)
    }

    fn take_done(&self) -> Vec<Done> {
        let mut buffer = lock(&self.done);
        self.done_count.store(0, Ordering::Release);
        std::mem::take(&mut *buffer)
    }

    fn run_one(
        &self,
        lease: &Lease,
        loaded: Option<&Loaded>,
        submitter: &Arc<dyn Submitter>,
    ) -> TaskOutput {
        let component = self.component(lease, loaded);
        let parent = lease.trace.as_ref().and_then(WireContext::span_context);
        let cx = TaskContext {
            task_id: &lease.task_id,
            parent,
            attempt: lease.attempt,
            abort: Some(self.abort.clone()),
            submitter: Some(submitter.clone()),
            depth: lease.depth,
        };
        if let (Some(op), Ok(component)) = (&lease.actor, &component) {
            return self.run_actor_op(op, lease, component, &cx);
        }
        match component {
            Ok(component) => task::execute(
                &self.linker,
                self.telemetry.as_ref(),
                &component,
                &lease.function,
                &lease.invocation,
                &cx,
            ),
            Err(error) => {
                let error = TaskError::new(
                    TaskErrorKind::Instantiate,
                    &lease.function,
                    error.to_string(),
                );
                task::record_failure(self.telemetry.as_ref(), &lease.component.name, &error, &cx);
                TaskOutput::failed(error)
            }
        }
    }

    /// Creates, calls or ends an actor of this worker.
    fn run_actor_op(
        &self,
        op: &ActorOp,
        lease: &Lease,
        component: &TaskComponent,
        cx: &TaskContext<'_>,
    ) -> TaskOutput {
        let invocation: crate::runtime::wave::Invocation = match lease.invocation.parse() {
            Ok(invocation) => invocation,
            Err(error) => {
                return TaskOutput::failed(TaskError::new(
                    TaskErrorKind::InvalidArguments,
                    &lease.function,
                    error.to_string(),
                ));
            }
        };
        let gone = |id: &str| {
            TaskOutput::failed(TaskError::new(
                TaskErrorKind::ActorDead,
                &lease.function,
                format!("actor {id} is not on worker pid {}", crate::ids::pid()),
            ))
        };
        match op {
            ActorOp::Create { id, restarts, .. } => {
                let identity = ActorIdentity {
                    id,
                    restarts: *restarts,
                };
                let (actor, output) = Actor::create(
                    &self.linker,
                    self.telemetry.as_ref(),
                    component,
                    &invocation,
                    identity,
                    cx,
                );
                if let Some(actor) = actor {
                    lock(&self.actors).insert(id.clone(), actor);
                }
                output
            }
            ActorOp::Call { id } => {
                let Some(mut actor) = lock(&self.actors).remove(id) else {
                    return gone(id);
                };
                let output = actor.call(
                    &self.linker,
                    self.telemetry.as_ref(),
                    component,
                    &invocation,
                    cx,
                );
                // A dead actor is never called again: the head answers for
                // it, or makes it again, maybe elsewhere.
                if actor.dead().is_none() {
                    lock(&self.actors).insert(id.clone(), actor);
                }
                output
            }
            ActorOp::Kill { id } => {
                let Some(actor) = lock(&self.actors).remove(id) else {
                    return gone(id);
                };
                actor.kill(&self.linker, self.telemetry.as_ref(), component, cx)
            }
            // The cluster answers lookups itself; none is ever leased.
            ActorOp::Find { id } => gone(id),
        }
    }

    fn component(&self, lease: &Lease, loaded: Option<&Loaded>) -> Result<Arc<TaskComponent>> {
        let loaded = loaded.ok_or_else(|| {
            Error::Cluster(format!(
                "the head did not send component {} to this worker",
                lease.component.digest
            ))
        })?;
        loaded
            .compiled
            .get_or_init(|| {
                let bytes = lock(&loaded.bytes).take().unwrap_or_default();
                self.linker
                    .load(&loaded.name, &bytes)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(Error::Cluster)
    }

    /// The head no longer counts on this worker holding these components.
    fn forget(&self, digests: Vec<Digest>) {
        let mut components = lock(&self.components);
        for digest in digests {
            components.remove(&digest);
        }
    }

    fn deliver(&self, results: Vec<Done>) {
        let mut pending = lock(&self.pending);
        for done in results {
            if let Some(tx) = pending.remove(&done.id) {
                let _ = tx.send(NestedResult {
                    pid: done.pid,
                    output: done.output,
                });
            }
        }
    }

    /// Stops every task (at its next epoch tick or wait check) and waits up
    /// to `grace` for the threads to finish.
    fn close(&self, grace: Duration) {
        self.abort.store(true, Ordering::SeqCst);
        let mut state = lock(&self.state);
        state.closed = true;
        state.leases.clear();
        self.wake.notify_all();
        let deadline = std::time::Instant::now() + grace;
        while state.threads > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            state = wait_timeout(&self.wake, state, left).0;
        }
    }
}

impl Submitter for PoolSubmitter {
    fn component_name(&self, digest: &Digest) -> Option<String> {
        lock(&self.pool.components)
            .get(digest)
            .map(|loaded| loaded.name.clone())
    }

    fn submit(&self, task: NestedTask) -> std::result::Result<Submitted, String> {
        let pool = &self.pool;
        let tag = pool.next_tag.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = std::sync::mpsc::channel();
        lock(&pool.pending).insert(tag, tx);
        pool.out
            .send(FromWorker::Submit(vec![Submission {
                tag,
                task_id: task.task_id,
                component: task.component,
                function: task.function,
                invocation: task.invocation,
                trace: task.trace,
                parent: Some(self.parent),
                actor: task.actor,
            }]))
            .map_err(|_| "the worker is shutting down".to_owned())?;
        Ok(Submitted {
            id: tag,
            result: rx,
        })
    }

    fn forget(&self, id: u64) {
        lock(&self.pool.pending).remove(&id);
    }

    fn waiting(&self, waiting: bool) {
        let pool = &self.pool;
        let mut state = lock(&pool.state);
        if waiting {
            state.waiting += 1;
            if state.runnable() == 0 && !state.leases.is_empty() && !state.closed {
                Pool::spawn_thread(pool, &mut state);
            }
        } else {
            state.waiting -= 1;
        }
        drop(state);
        // A waiting task frees its slot for other work (its children,
        // maybe); one resuming takes it back.
        if let Some(more) = pool.credit_wanted() {
            let _ = pool.out.send(FromWorker::Credit(more));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_asks_for_its_free_slots_and_a_waiting_task_frees_its_own() {
        let mut credit = Credit::default();
        // Nothing is known of its tasks yet: two, one to run and one ready.
        assert_eq!(credit.take_free(0), Some(2));
        assert_eq!(credit.take_free(0), None, "asked for already");
        credit.asked -= 2;
        credit.held += 2;
        assert_eq!(credit.take_free(0), None, "both slots are taken");
        assert_eq!(
            credit.take_free(1),
            Some(1),
            "a waiting task frees its slot"
        );
        // Quick tasks: it asks for about QUEUED_WORK_US of them.
        credit.busy_us = 30;
        assert_eq!(credit.take_free(1), Some(98));
        credit.busy_us = 1;
        credit.asked = 0;
        credit.held = 0;
        assert_eq!(credit.take_free(0), Some(MAX_HELD as u32));
    }
}

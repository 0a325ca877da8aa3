//! The head: accepts workers and drivers, stores components by digest, queues
//! tasks, leases them to workers and routes results back.
//!
//! All state lives in one task that handles [`Event`]s in order; each
//! connection has a reader task feeding events and a writer task draining a
//! channel, batching whatever is ready into one flush.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::protocol::{
    BATCH_BYTES, ClusterConfig, ClusterStatus, ComponentRef, Done, FromDriver, FromWorker,
    HELLO_TIMEOUT, Hello, HelloReply, Lease, MAX_FRAME, MAX_HELLO_FRAME, Reader, Submission,
    ToDriver, ToWorker, WorkerStatus, Writer, batches, write_loop,
};
use crate::capabilities::provider::WorkerInfo;
use crate::error::{Error, Result};
use crate::outcome::{TaskError, TaskErrorKind, TaskOutput};
use crate::runtime::Digest;

/// Tasks leased to one worker at a time, at most: one running, the rest
/// queued there so the next starts without a round trip. How many are leased
/// adapts to how long the worker's tasks take: about [`QUEUED_WORK_US`] of
/// work, so quick tasks go out in large batches while slow ones are not
/// hoarded by one worker while another idles.
const WORKER_CAPACITY: usize = 128;

/// The work, in µs, a worker is leased ahead.
const QUEUED_WORK_US: u64 = 3_000;

type ConnId = u64;

/// What the head's state task reacts to.
enum Event {
    WorkerJoined {
        conn: ConnId,
        info: WorkerInfo,
        pid: u32,
        tx: mpsc::UnboundedSender<ToWorker>,
    },
    WorkerMessage(ConnId, FromWorker),
    WorkerLeft(ConnId),
    DriverJoined {
        conn: ConnId,
        tx: mpsc::UnboundedSender<ToDriver>,
    },
    DriverMessage(ConnId, FromDriver),
    DriverLeft(ConnId),
    Status(oneshot::Sender<ClusterStatus>),
    Readiness(oneshot::Sender<Readiness>),
    Shutdown,
}

/// How far workers got with their hooks.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    /// Workers whose hook ran.
    pub ready: usize,
    /// Hook failures: (worker id, pid, message).
    pub failed: Vec<(String, u32, String)>,
}

struct Worker {
    info: WorkerInfo,
    pid: u32,
    tx: mpsc::UnboundedSender<ToWorker>,
    ready: bool,
    leased: HashSet<u64>,
    /// Leased tasks waiting for nested tasks: they hold no CPU.
    waiting: usize,
    /// Moving average of how long its tasks take, in µs.
    busy_us: u64,
    has: HashSet<Digest>,
    done: u64,
}

/// Who submitted a task, and so gets its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Origin {
    Driver(ConnId),
    Worker(ConnId),
}

impl Worker {
    /// Leased tasks not waiting on nested tasks.
    fn active(&self) -> usize {
        self.leased.len() - self.waiting.min(self.leased.len())
    }

    /// How many tasks it may hold, given how long its tasks take.
    fn capacity(&self) -> usize {
        (QUEUED_WORK_US / self.busy_us.max(1)).clamp(2, WORKER_CAPACITY as u64) as usize
    }
}

struct Task {
    submission: Submission,
    origin: Origin,
    attempt: u32,
    worker: Option<ConnId>,
}

struct Component {
    name: String,
    bytes: Arc<Vec<u8>>,
}

struct State {
    config: Arc<ClusterConfig>,
    started: Instant,
    workers: BTreeMap<ConnId, Worker>,
    drivers: HashMap<ConnId, mpsc::UnboundedSender<ToDriver>>,
    components: HashMap<Digest, Component>,
    tasks: HashMap<u64, Task>,
    queue: VecDeque<u64>,
    next_task: u64,
    done: u64,
    failed_hooks: Vec<(String, u32, String)>,
    stopping: bool,
    /// Nested tasks submitted so far under each root task (by its id), so a
    /// fork bomb of tasks submitting tasks stops at `--max-nested-tasks`.
    trees: HashMap<String, u32>,
}

/// A running head.
#[derive(Debug, Clone)]
pub struct Head {
    addr: SocketAddr,
    token: String,
    events: mpsc::UnboundedSender<EventBox>,
    stopped: watch::Receiver<bool>,
}

/// Events wrapped so `Head` can be `Debug`.
struct EventBox(Event);

impl std::fmt::Debug for EventBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Event")
    }
}

impl Head {
    /// Starts a head on `bind` (port 0: any free port) in the current Tokio
    /// runtime. Connections must present `token`.
    pub async fn start(bind: SocketAddr, token: String, config: ClusterConfig) -> Result<Self> {
        raise_open_file_limit();
        let listener = TcpListener::bind(bind)
            .await
            .map_err(|e| Error::io(format!("cannot listen on {bind}"), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("cannot read the head's address", e))?;
        let (events, rx) = mpsc::unbounded_channel();
        let (stopped_tx, stopped) = watch::channel(false);
        let state = State {
            config: Arc::new(config),
            started: Instant::now(),
            workers: BTreeMap::new(),
            drivers: HashMap::new(),
            components: HashMap::new(),
            tasks: HashMap::new(),
            queue: VecDeque::new(),
            next_task: 1,
            done: 0,
            failed_hooks: Vec::new(),
            stopping: false,
            trees: HashMap::new(),
        };
        let config = state.config.clone();
        tokio::spawn(run_state(state, rx, stopped_tx));
        tokio::spawn(accept(listener, token.clone(), config, events.clone()));
        Ok(Self {
            addr,
            token,
            events,
            stopped,
        })
    }

    /// Where the head listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The secret connections must present.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// How many workers are ready, and which hooks failed.
    pub async fn readiness(&self) -> Readiness {
        let (tx, rx) = oneshot::channel();
        let _ = self.events.send(EventBox(Event::Readiness(tx)));
        rx.await.unwrap_or_default()
    }

    /// The cluster's state.
    pub async fn status(&self) -> Option<ClusterStatus> {
        let (tx, rx) = oneshot::channel();
        let _ = self.events.send(EventBox(Event::Status(tx)));
        rx.await.ok()
    }

    /// Stops the cluster: every worker finishes its current task, flushes its
    /// spans and exits. See [`Head::stopped`].
    pub fn shutdown(&self) {
        let _ = self.events.send(EventBox(Event::Shutdown));
    }

    /// Resolves once the cluster has stopped (every worker gone after a
    /// shutdown request).
    pub async fn stopped(&self) {
        let mut stopped = self.stopped.clone();
        let _ = stopped.wait_for(|s| *s).await;
    }
}

/// Connections the head serves at once; more are closed as they come.
pub const MAX_CONNECTIONS: usize = 4096;

/// Connections that have not yet proven the token, at once. Each holds at
/// most a [`MAX_HELLO_FRAME`] buffer for [`HELLO_TIMEOUT`], so strangers can
/// make the head hold a few MiB at most; more are closed as they come.
pub const MAX_UNAUTHENTICATED: usize = 512;

async fn accept(
    listener: TcpListener,
    token: String,
    config: Arc<ClusterConfig>,
    events: mpsc::UnboundedSender<EventBox>,
) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let unauthenticated = Arc::new(Semaphore::new(MAX_UNAUTHENTICATED));
    let mut next_conn: ConnId = 1;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: let some close before the next.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        // Over a cap the connection is dropped at once, unread.
        let (Ok(connection), Ok(stranger)) = (
            connections.clone().try_acquire_owned(),
            unauthenticated.clone().try_acquire_owned(),
        ) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = next_conn;
        next_conn += 1;
        let (token, config, events) = (token.clone(), config.clone(), events.clone());
        tokio::spawn(async move {
            serve(stream, conn, &token, config, events, stranger).await;
            drop(connection);
        });
    }
}

/// Raises this process's soft limit on open files to its hard limit, so the
/// head can hold [`MAX_CONNECTIONS`] connections where the default soft
/// limit (often 1024) would refuse them.
#[allow(unsafe_code)]
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Constant-time comparison, so the token cannot be guessed byte by byte.
fn token_matches(given: &str, expected: &str) -> bool {
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Reads and checks the connection's [`Hello`] within [`HELLO_TIMEOUT`], in
/// frames of at most [`MAX_HELLO_FRAME`]; the error is the refusal, if the
/// peer is to be told one.
async fn handshake(
    reader: &mut Reader<tokio::net::tcp::OwnedReadHalf>,
    token: &str,
) -> std::result::Result<Hello, Option<String>> {
    let frame = match tokio::time::timeout(HELLO_TIMEOUT, reader.recv_frame()).await {
        Ok(Ok(Some(frame))) => frame,
        // Silent, gone, or announcing a frame no hello needs: no answer.
        _ => return Err(None),
    };
    let hello = Hello::decode(&frame).map_err(Some)?;
    let given = match &hello {
        Hello::Worker { token, .. } | Hello::Driver { token, .. } => token,
    };
    if !token_matches(given, token) {
        return Err(Some(
            "wrong cluster token: connect with the token from `wtrace start` (its session file, \
             --token-file or WTRACE_TOKEN)"
                .into(),
        ));
    }
    Ok(hello)
}

async fn serve(
    stream: TcpStream,
    conn: ConnId,
    token: &str,
    config: Arc<ClusterConfig>,
    events: mpsc::UnboundedSender<EventBox>,
    stranger: OwnedSemaphorePermit,
) {
    let (read, write) = stream.into_split();
    let mut reader = Reader::with_limit(read, MAX_HELLO_FRAME);
    let mut writer = Writer::new(write);
    let hello = match handshake(&mut reader, token).await {
        Ok(hello) => hello,
        Err(refusal) => {
            if let Some(refusal) = refusal {
                let _ =
                    tokio::time::timeout(HELLO_TIMEOUT, writer.send(&HelloReply::Refused(refusal)))
                        .await;
            }
            return;
        }
    };
    drop(stranger);
    reader.set_limit(MAX_FRAME);
    if writer
        .send(&HelloReply::Welcome(Box::new((*config).clone())))
        .await
        .is_err()
    {
        return;
    }
    let closed = CancellationToken::new();
    match hello {
        Hello::Worker { info, pid, .. } => {
            let (tx, rx) = mpsc::unbounded_channel();
            let _ = events.send(EventBox(Event::WorkerJoined {
                conn,
                info,
                pid,
                tx,
            }));
            let writing = tokio::spawn(write_loop(writer, rx, closed.clone()));
            read_until_closed(&mut reader, &closed, |message| {
                events
                    .send(EventBox(Event::WorkerMessage(conn, message)))
                    .is_ok()
            })
            .await;
            let _ = events.send(EventBox(Event::WorkerLeft(conn)));
            let _ = writing.await;
        }
        Hello::Driver { .. } => {
            let (tx, rx) = mpsc::unbounded_channel();
            let _ = events.send(EventBox(Event::DriverJoined { conn, tx }));
            let writing = tokio::spawn(write_loop(writer, rx, closed.clone()));
            read_until_closed(&mut reader, &closed, |message| {
                events
                    .send(EventBox(Event::DriverMessage(conn, message)))
                    .is_ok()
            })
            .await;
            let _ = events.send(EventBox(Event::DriverLeft(conn)));
            let _ = writing.await;
        }
    }
}

/// Hands each message to `deliver` until the peer leaves, sends something
/// unreadable, or the connection's writer fails; then closes the connection
/// both ways.
async fn read_until_closed<T: serde::de::DeserializeOwned>(
    reader: &mut Reader<tokio::net::tcp::OwnedReadHalf>,
    closed: &CancellationToken,
    mut deliver: impl FnMut(T) -> bool,
) {
    loop {
        tokio::select! {
            message = reader.recv::<T>() => match message {
                Ok(Some(message)) => {
                    if !deliver(message) {
                        break;
                    }
                }
                _ => break,
            },
            () = closed.cancelled() => break,
        }
    }
    closed.cancel();
}

async fn run_state(
    mut state: State,
    mut events: mpsc::UnboundedReceiver<EventBox>,
    stopped: watch::Sender<bool>,
) {
    while let Some(EventBox(event)) = events.recv().await {
        state.handle(event);
        if state.stopping && state.workers.is_empty() && !*stopped.borrow() {
            for driver in state.drivers.values() {
                let _ = driver.send(ToDriver::Stopped);
            }
            let _ = stopped.send(true);
        }
    }
}

impl State {
    fn handle(&mut self, event: Event) {
        match event {
            Event::WorkerJoined {
                conn,
                info,
                pid,
                tx,
            } => {
                if self.stopping {
                    let _ = tx.send(ToWorker::Shutdown);
                }
                self.workers.insert(
                    conn,
                    Worker {
                        info,
                        pid,
                        tx,
                        ready: false,
                        leased: HashSet::new(),
                        waiting: 0,
                        busy_us: QUEUED_WORK_US,
                        has: HashSet::new(),
                        done: 0,
                    },
                );
            }
            Event::WorkerMessage(conn, message) => self.worker_message(conn, message),
            Event::WorkerLeft(conn) => self.worker_left(conn),
            Event::DriverJoined { conn, tx } => {
                self.drivers.insert(conn, tx);
            }
            Event::DriverMessage(conn, message) => self.driver_message(conn, message),
            Event::DriverLeft(conn) => {
                self.drivers.remove(&conn);
                self.forget_queued(Origin::Driver(conn));
            }
            Event::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Event::Shutdown => self.shutdown(),
            Event::Readiness(reply) => {
                let _ = reply.send(Readiness {
                    ready: self.workers.values().filter(|w| w.ready).count(),
                    failed: self.failed_hooks.clone(),
                });
            }
        }
    }

    /// Drops the queued tasks of a submitter that is gone: no one would get
    /// their results. (Running ones finish; their results are dropped.)
    fn forget_queued(&mut self, origin: Origin) {
        let orphans: Vec<u64> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.origin == origin && t.worker.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in orphans {
            self.tasks.remove(&id);
        }
        self.queue.retain(|id| self.tasks.contains_key(id));
    }

    /// Sends results to whoever submitted the tasks, in messages of at most
    /// [`BATCH_BYTES`] unless one result is larger alone.
    fn reply(&self, results: HashMap<Origin, Vec<Done>>) {
        for (origin, results) in results {
            for batch in batches(results, usize::MAX, BATCH_BYTES, Done::wire_size) {
                match origin {
                    Origin::Driver(conn) => {
                        if let Some(tx) = self.drivers.get(&conn) {
                            let _ = tx.send(ToDriver::Results(batch));
                        }
                    }
                    Origin::Worker(conn) => {
                        if let Some(worker) = self.workers.get(&conn) {
                            let _ = worker.tx.send(ToWorker::Results(batch));
                        }
                    }
                }
            }
        }
    }

    fn worker_message(&mut self, conn: ConnId, message: FromWorker) {
        match message {
            FromWorker::Ready => {
                if let Some(worker) = self.workers.get_mut(&conn) {
                    worker.ready = true;
                }
                self.dispatch();
            }
            FromWorker::HookFailed(error) => {
                if let Some(worker) = self.workers.get(&conn) {
                    self.failed_hooks
                        .push((worker.info.worker_id.clone(), worker.pid, error));
                }
            }
            FromWorker::Submit(submissions) => self.submit(Origin::Worker(conn), submissions),
            FromWorker::Waiting(count) => {
                if let Some(worker) = self.workers.get_mut(&conn) {
                    worker.waiting = count as usize;
                }
                self.dispatch();
            }
            FromWorker::Done(batch) => {
                let mut replies: HashMap<Origin, Vec<Done>> = HashMap::new();
                for done in batch {
                    if let Some(worker) = self.workers.get_mut(&conn) {
                        worker.leased.remove(&done.id);
                        worker.done += 1;
                        worker.busy_us = (worker.busy_us * 7 + u64::from(done.busy_us)) / 8;
                    }
                    // A task requeued after a presumed death may finish twice;
                    // only the first result counts.
                    let Some(task) = self.tasks.remove(&done.id) else {
                        continue;
                    };
                    if task.submission.depth == 0 {
                        self.trees.remove(&task.submission.task_id);
                    }
                    self.done += 1;
                    replies.entry(task.origin).or_default().push(Done {
                        id: task.submission.tag,
                        pid: done.pid,
                        busy_us: done.busy_us,
                        output: done.output,
                    });
                }
                self.reply(replies);
                self.dispatch();
            }
        }
    }

    fn worker_left(&mut self, conn: ConnId) {
        let Some(worker) = self.workers.remove(&conn) else {
            return;
        };
        self.forget_queued(Origin::Worker(conn));
        let mut failed: HashMap<Origin, Vec<Done>> = HashMap::new();
        let mut leased: Vec<u64> = worker.leased.into_iter().collect();
        leased.sort_unstable();
        for id in leased.into_iter().rev() {
            let Some(task) = self.tasks.get_mut(&id) else {
                continue;
            };
            task.worker = None;
            task.attempt += 1;
            if task.attempt > self.config.max_retries {
                let task = self.tasks.remove(&id).expect("present");
                let error = TaskError::new(
                    TaskErrorKind::WorkerDied,
                    &task.submission.function,
                    format!(
                        "its worker died on every attempt ({} attempts; the last was {} pid {}); \
                         the task may be crashing its workers",
                        task.attempt, worker.info.worker_id, worker.pid
                    ),
                );
                failed.entry(task.origin).or_default().push(Done {
                    id: task.submission.tag,
                    pid: worker.pid,
                    busy_us: 0,
                    output: TaskOutput::failed(error),
                });
            } else {
                self.queue.push_front(id);
            }
        }
        self.reply(failed);
        self.dispatch();
    }

    fn driver_message(&mut self, conn: ConnId, message: FromDriver) {
        match message {
            FromDriver::Upload { name, bytes } => {
                let digest = Digest::of(&bytes);
                self.components.entry(digest).or_insert(Component {
                    name,
                    bytes: Arc::new(bytes),
                });
            }
            FromDriver::Submit(submissions) => self.submit(Origin::Driver(conn), submissions),
            FromDriver::Status => {
                if let Some(tx) = self.drivers.get(&conn) {
                    let _ = tx.send(ToDriver::Status(Box::new(self.status())));
                }
            }
            FromDriver::Shutdown => self.shutdown(),
        }
    }

    /// Queues tasks; those naming an unknown component fail at once.
    fn submit(&mut self, origin: Origin, submissions: Vec<Submission>) {
        let mut rejected = Vec::new();
        for submission in submissions {
            if let Some(error) = self.over_tree_budget(&submission) {
                rejected.push(Done {
                    id: submission.tag,
                    pid: 0,
                    busy_us: 0,
                    output: TaskOutput::failed(error),
                });
                continue;
            }
            if !self.components.contains_key(&submission.component) {
                let error = TaskError::new(
                    TaskErrorKind::Cluster,
                    &submission.function,
                    format!(
                        "component {} is not stored in this cluster; upload it first (wtrace submit does)",
                        submission.component
                    ),
                );
                rejected.push(Done {
                    id: submission.tag,
                    pid: 0,
                    busy_us: 0,
                    output: TaskOutput::failed(error),
                });
                continue;
            }
            let id = self.next_task;
            self.next_task += 1;
            self.tasks.insert(
                id,
                Task {
                    submission,
                    origin,
                    attempt: 0,
                    worker: None,
                },
            );
            self.queue.push_back(id);
        }
        if !rejected.is_empty() {
            self.reply(HashMap::from([(origin, rejected)]));
        }
        self.dispatch();
    }

    /// Counts a nested submission against its root task's tree; an error
    /// once the tree has submitted `--max-nested-tasks` tasks.
    fn over_tree_budget(&mut self, submission: &Submission) -> Option<TaskError> {
        if submission.depth == 0 {
            return None;
        }
        let root = submission.task_id.split('.').next().unwrap_or_default();
        let limit = self.config.limits.nested_tasks;
        let count = self.trees.entry(root.to_owned()).or_insert(0);
        *count += 1;
        (*count > limit).then(|| {
            TaskError::new(
                TaskErrorKind::NestingLimit,
                &submission.function,
                format!(
                    "task {root} and the tasks it started have submitted {limit} tasks, the limit \
                     (raise it with --max-nested-tasks)"
                ),
            )
        })
    }

    /// Tells every worker to finish its current task, flush and exit.
    fn shutdown(&mut self) {
        self.stopping = true;
        for worker in self.workers.values() {
            let _ = worker.tx.send(ToWorker::Shutdown);
        }
    }

    /// Leases queued tasks to the ready workers with the fewest leases.
    fn dispatch(&mut self) {
        if self.stopping {
            return;
        }
        let mut leased: HashMap<ConnId, Vec<Lease>> = HashMap::new();
        while let Some(&id) = self.queue.front() {
            let Some((&conn, _)) = self
                .workers
                .iter()
                .filter(|(_, w)| w.ready && w.active() < w.capacity())
                .min_by_key(|(_, w)| w.active())
            else {
                break;
            };
            self.queue.pop_front();
            let Some(task) = self.tasks.get_mut(&id) else {
                continue;
            };
            let worker = self.workers.get_mut(&conn).expect("chosen above");
            let digest = &task.submission.component;
            let component = &self.components[digest];
            let bytes = worker
                .has
                .insert(digest.clone())
                .then(|| component.bytes.as_ref().clone());
            worker.leased.insert(id);
            task.worker = Some(conn);
            leased.entry(conn).or_default().push(Lease {
                lease_id: id,
                task_id: task.submission.task_id.clone(),
                attempt: task.attempt,
                component: ComponentRef {
                    digest: digest.clone(),
                    name: component.name.clone(),
                    bytes,
                },
                function: task.submission.function.clone(),
                invocation: task.submission.invocation.clone(),
                traceparent: task.submission.traceparent.clone(),
                tracestate: task.submission.tracestate.clone(),
                depth: task.submission.depth,
            });
        }
        for (conn, leases) in leased {
            for batch in batches(leases, usize::MAX, BATCH_BYTES, Lease::wire_size) {
                let _ = self.workers[&conn].tx.send(ToWorker::Run(batch));
            }
        }
    }

    fn status(&self) -> ClusterStatus {
        ClusterStatus {
            job_id: self.config.job_id.clone(),
            hook: self
                .config
                .hook
                .as_ref()
                .map(|h| (h.display.clone(), h.digest.clone())),
            workers: self
                .workers
                .values()
                .map(|w| WorkerStatus {
                    worker_id: w.info.worker_id.clone(),
                    node_id: w.info.node_id.clone(),
                    pid: w.pid,
                    ready: w.ready,
                    running: w.leased.len(),
                    done: w.done,
                })
                .collect(),
            queued: self.queue.len(),
            running: self.workers.values().map(|w| w.leased.len()).sum(),
            done: self.done,
            components: self.components.len(),
            uptime: self.started.elapsed(),
            failed_hooks: self.failed_hooks.clone(),
        }
    }
}

//! The head: accepts workers and drivers, stores components by digest, queues
//! tasks, leases them to workers and routes results back.
//!
//! All state lives in one task that handles [`Event`]s in order; each
//! connection has a reader task feeding events and a writer task draining a
//! channel, batching whatever is ready into one flush.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use rustc_hash::FxHashMap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::DETACH_REFUSED;
use super::protocol::{
    HELLO_TIMEOUT, Hello, HelloReply, MAX_FRAME, MAX_HELLO_FRAME, Reader, Writer, write_loop,
};
use super::store::ComponentStore;
use crate::capabilities::provider::WorkerInfo;
use crate::capabilities::tasks::FoundActor;
use crate::cluster::messages::{
    ActorOp, ActorStatus, BATCH_BYTES, ClusterConfig, ClusterStatus, ComponentRef, Done,
    FromDriver, FromWorker, Lease, MAX_NAME_BYTES, Submission, ToDriver, ToWorker,
    WORKER_COMPONENTS, WireSize, WorkerStatus, batches,
};
use crate::cluster::transport::DriverLink;
use crate::error::{Error, Result};
use crate::outcome::{TaskError, TaskErrorKind, TaskOutput};
use crate::runtime::Digest;
use crate::runtime::wave::MAX_INVOCATION_BYTES;

type ConnId = u64;

/// What the head's state task reacts to.
enum Event {
    WorkerJoined {
        conn: ConnId,
        info: WorkerInfo,
        pid: u32,
        tx: Outbox<ToWorker>,
    },
    WorkerMessage(ConnId, FromWorker),
    WorkerLeft(ConnId),
    DriverJoined {
        conn: ConnId,
        tx: Outbox<ToDriver>,
        /// Where an in-process driver learns the configuration.
        config: Option<oneshot::Sender<ClusterConfig>>,
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
    tx: Outbox<ToWorker>,
    ready: bool,
    /// Leased tasks not yet done, each with its place in the order they
    /// were leased to this worker.
    leased: FxHashMap<u64, u64>,
    /// Leases sent to this worker so far.
    sent: u64,
    /// Leases the worker says it has started: a prefix of the lease order,
    /// since it runs them first come, first served.
    started: u64,
    /// Leases it asked for and was not sent yet.
    credit: usize,
    /// The components it holds, least recently leased first, at most
    /// [`WORKER_COMPONENTS`].
    has: VecDeque<Digest>,
    done: u64,
}

/// Bytes the head may hold for one connection, written or not: a peer that
/// stops reading is dropped past it rather than grow the head's memory.
pub const MAX_OUTGOING_BYTES: usize = 512 << 20;

/// A connection's sending side as the state task sees it: what it queued
/// and not yet written counts against [`MAX_OUTGOING_BYTES`]. A driver in
/// the head's own process has no budget: it is the head's owner.
struct Outbox<T> {
    tx: mpsc::UnboundedSender<T>,
    queued: Arc<AtomicUsize>,
    closed: Option<CancellationToken>,
}

impl<T: WireSize> Outbox<T> {
    fn new(closed: CancellationToken) -> (Self, mpsc::UnboundedReceiver<T>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let outbox = Self {
            tx,
            queued: Arc::default(),
            closed: Some(closed),
        };
        (outbox, rx)
    }

    /// An outbox with no send budget.
    fn unbounded() -> (Self, mpsc::UnboundedReceiver<T>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let outbox = Self {
            tx,
            queued: Arc::default(),
            closed: None,
        };
        (outbox, rx)
    }

    /// What the writer calls with each message it wrote.
    fn written(&self) -> impl Fn(&T) + use<T> {
        let queued = self.queued.clone();
        move |message: &T| {
            queued.fetch_sub(
                message.wire_size().min(queued.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
        }
    }

    /// Queues `message`; past the budget, drops the connection instead.
    fn send(&self, message: T) {
        if let Some(closed) = &self.closed {
            let size = message.wire_size();
            if self.queued.fetch_add(size, Ordering::Relaxed) + size > MAX_OUTGOING_BYTES {
                closed.cancel();
                return;
            }
        }
        let _ = self.tx.send(message);
    }
}

/// Tasks the head holds at once (queued or running); submissions past it
/// fail at once, so no driver can grow the head without end.
pub const MAX_TASKS: usize = 1 << 20;

/// Bytes of invocations the head holds at once.
pub const MAX_TASK_BYTES: usize = 4 << 30;

/// Hook failures `wtrace status` shows: the most recent.
const FAILED_HOOKS_KEPT: usize = 64;

/// Who submitted a task, and so gets its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Origin {
    Driver(ConnId),
    Worker(ConnId),
    /// The head itself (an actor made again): no one gets the result.
    Cluster,
}

impl Worker {
    /// Leased tasks it said it started.
    fn running(&self) -> usize {
        self.leased
            .values()
            .filter(|seq| **seq < self.started)
            .count()
    }
}

struct Task {
    submission: Submission,
    origin: Origin,
    /// Attempts that started on a worker that then died.
    attempt: u32,
    worker: Option<ConnId>,
    /// How deep it is nested, as the head counted: 0 from a driver.
    depth: u32,
    /// The id of the task at the root of its tree (its own, from a driver).
    root: u64,
    /// Its worker died and whether it had started is not known: its next
    /// lease asks the worker to confirm the start before running it.
    suspect: bool,
}

/// The tasks under one root task, so a fork bomb of tasks submitting tasks
/// stops at `--max-nested-tasks`, whatever task ids or depths a peer sends.
/// Made when the root submits its first task (a root alone needs none).
#[derive(Debug)]
struct Tree {
    /// Nested tasks submitted under the root so far (retries included).
    submitted: u32,
    /// Tasks of the tree not yet finished or failed (the root among them).
    live: u32,
}

/// An actor as the head knows it: where it lives, and the calls waiting
/// for it. Calls go to its worker one at a time, each after the last one's
/// result came back, so they run in the order they were submitted.
struct HeadActor {
    name: Option<String>,
    class: String,
    component: Digest,
    component_name: String,
    /// The task that creates it (the latest, after restarts).
    creation: u64,
    /// The creating submission, to make it again.
    constructor: Submission,
    restarts: u32,
    max_restarts: u32,
    worker: Option<ConnId>,
    calls: u64,
    state: ActorState,
    /// Calls and kills submitted and not yet sent, in submission order.
    waiting: VecDeque<u64>,
    /// A call is on its worker.
    busy: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ActorState {
    Creating,
    Alive,
    Dead(String),
}

/// Dead actors the head keeps, so calls to them say why; past it the
/// oldest are forgotten.
const DEAD_ACTORS_KEPT: usize = 1024;

/// What the head does with an actor submission.
enum ActorAdmission {
    /// Queue it: a creation goes to any worker, a call or kill waits for
    /// its actor.
    Proceed,
    /// Answer it now, with this.
    Answer(TaskOutput),
}

struct State {
    config: Arc<ClusterConfig>,
    /// The hook's bytes, by the digest the configuration names.
    hook: Option<Arc<Vec<u8>>>,
    started: Instant,
    workers: BTreeMap<ConnId, Worker>,
    drivers: HashMap<ConnId, Outbox<ToDriver>>,
    store: ComponentStore,
    /// By id: ids are the head's own, so a fast hash is safe here.
    tasks: FxHashMap<u64, Task>,
    queue: VecDeque<u64>,
    next_task: u64,
    done: u64,
    failed_hooks: Vec<(String, u32, String)>,
    /// Told when a worker gets ready, fails its hook or leaves, so a node
    /// waiting for its workers need not poll.
    readiness_changed: Arc<tokio::sync::Notify>,
    stopping: bool,
    /// Live trees, by the id of their root task.
    trees: FxHashMap<u64, Tree>,
    /// Bytes of the invocations of the tasks held.
    task_bytes: usize,
    /// [`MAX_TASKS`], but for tests.
    max_tasks: usize,
    /// Actors by id.
    actors: HashMap<String, HeadActor>,
    /// Actor ids by name.
    actor_names: HashMap<String, String>,
    /// Dead actors, oldest first, for [`DEAD_ACTORS_KEPT`].
    dead_actors: VecDeque<String>,
}

/// A running head.
#[derive(Debug, Clone)]
pub struct Head {
    addr: SocketAddr,
    token: String,
    next_conn: Arc<AtomicU64>,
    events: mpsc::UnboundedSender<EventBox>,
    stopped: watch::Receiver<bool>,
    readiness_changed: Arc<tokio::sync::Notify>,
    admission: Arc<watch::Sender<Admission>>,
    held: watch::Receiver<usize>,
}

/// Whether workers that connect get the configuration (and so run the
/// hook) yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// Held at the handshake: connected, nothing run, nothing written.
    Held,
    Open,
    /// Turned away: the connection closes unanswered.
    Closed,
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
    /// runtime. Connections must present `token`. `hook` is the bytes of the
    /// hook `config` names.
    pub async fn start(
        bind: SocketAddr,
        token: String,
        config: ClusterConfig,
        hook: Option<Vec<u8>>,
    ) -> Result<Self> {
        Self::start_with(bind, token, config, hook, Admission::Open).await
    }

    /// [`Head::start`], holding the workers that connect at their handshake
    /// until [`Head::admit_workers`]: they start while their driver still
    /// checks its component and runs its own hook, and run nothing (no
    /// hook, no span file) if it fails.
    pub async fn start_held(
        bind: SocketAddr,
        token: String,
        config: ClusterConfig,
        hook: Option<Vec<u8>>,
    ) -> Result<Self> {
        Self::start_with(bind, token, config, hook, Admission::Held).await
    }

    /// Lets held workers (and those still to connect) in.
    pub fn admit_workers(&self) {
        self.admission.send_replace(Admission::Open);
    }

    /// Turns held workers (and those still to connect) away.
    pub fn refuse_workers(&self) {
        self.admission.send_replace(Admission::Closed);
    }

    async fn start_with(
        bind: SocketAddr,
        token: String,
        config: ClusterConfig,
        hook: Option<Vec<u8>>,
        admission: Admission,
    ) -> Result<Self> {
        raise_open_file_limit();
        let listener = TcpListener::bind(bind)
            .await
            .map_err(|e| Error::io(format!("cannot listen on {bind}"), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("cannot read the head's address", e))?;
        let (events, rx) = mpsc::unbounded_channel();
        let (stopped_tx, stopped) = watch::channel(false);
        let (held_tx, held) = watch::channel(0);
        let mut state = State::new(config);
        state.hook = hook.map(Arc::new);
        let config = state.config.clone();
        let readiness_changed = state.readiness_changed.clone();
        let next_conn = Arc::new(AtomicU64::new(1));
        tokio::spawn(run_state(state, rx, stopped_tx, held_tx));
        let (admission, admitted) = watch::channel(admission);
        tokio::spawn(accept(
            listener,
            token.clone(),
            config,
            events.clone(),
            next_conn.clone(),
            admitted,
        ));
        Ok(Self {
            addr,
            token,
            next_conn,
            events,
            stopped,
            readiness_changed,
            admission: Arc::new(admission),
            held,
        })
    }

    /// A driver link to this head from its own process: messages are handed
    /// over as they are, with no socket and no serialization.
    pub(crate) async fn driver_link(&self) -> Result<DriverLink> {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (outbox, rx) = Outbox::unbounded();
        let (tx, mut requests) = mpsc::unbounded_channel();
        let (config_tx, config) = oneshot::channel();
        let events = self.events.clone();
        let _ = events.send(EventBox(Event::DriverJoined {
            conn,
            tx: outbox,
            config: Some(config_tx),
        }));
        let config = config
            .await
            .map_err(|_| Error::Cluster("the head has stopped".into()))?;
        tokio::spawn(async move {
            while let Some(message) = requests.recv().await {
                if events
                    .send(EventBox(Event::DriverMessage(conn, message)))
                    .is_err()
                {
                    return;
                }
            }
            let _ = events.send(EventBox(Event::DriverLeft(conn)));
        });
        let (_, lost) = oneshot::channel();
        Ok(DriverLink {
            config,
            tx,
            rx,
            lost,
            job: None,
            detached: None,
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

    /// Resolves when [`Head::readiness`] may have changed since the last
    /// time this resolved (at once if it changed meanwhile).
    pub async fn readiness_changed(&self) {
        self.readiness_changed.notified().await;
    }

    /// How many tasks the head holds (queued, leased or running), as it
    /// changes: what a node that starts workers on demand watches.
    pub fn tasks_held(&self) -> watch::Receiver<usize> {
        self.held.clone()
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
    next_conn: Arc<AtomicU64>,
    admitted: watch::Receiver<Admission>,
) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let unauthenticated = Arc::new(Semaphore::new(MAX_UNAUTHENTICATED));
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
        let conn = next_conn.fetch_add(1, Ordering::Relaxed);
        let (token, config, events) = (token.clone(), config.clone(), events.clone());
        let admitted = admitted.clone();
        tokio::spawn(async move {
            serve(stream, conn, &token, config, events, stranger, admitted).await;
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
    mut admitted: watch::Receiver<Admission>,
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
    // A held worker has the configuration (it makes its engine meanwhile)
    // but joins, and so gets its hook, only once admitted.
    if matches!(hello, Hello::Worker { .. }) {
        match admitted.wait_for(|a| *a != Admission::Held).await {
            Ok(admission) if *admission == Admission::Open => {}
            _ => return,
        }
    }
    let closed = CancellationToken::new();
    match hello {
        Hello::Worker { info, pid, .. } => {
            let (tx, rx) = Outbox::new(closed.clone());
            let written = tx.written();
            let _ = events.send(EventBox(Event::WorkerJoined {
                conn,
                info,
                pid,
                tx,
            }));
            let writing = tokio::spawn(write_loop(writer, rx, closed.clone(), written));
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
            let (tx, rx) = Outbox::new(closed.clone());
            let written = tx.written();
            let _ = events.send(EventBox(Event::DriverJoined {
                conn,
                tx,
                config: None,
            }));
            let writing = tokio::spawn(write_loop(writer, rx, closed.clone(), written));
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
    held: watch::Sender<usize>,
) {
    while let Some(EventBox(event)) = events.recv().await {
        state.handle(event);
        let now = state.tasks.len();
        held.send_if_modified(|was| std::mem::replace(was, now) != now);
        if state.stopping && state.workers.is_empty() && !*stopped.borrow() {
            for driver in state.drivers.values() {
                driver.send(ToDriver::Stopped);
            }
            let _ = stopped.send(true);
        }
    }
}

impl State {
    fn new(config: ClusterConfig) -> Self {
        Self {
            store: ComponentStore::new(config.component_store),
            config: Arc::new(config),
            hook: None,
            started: Instant::now(),
            workers: BTreeMap::new(),
            drivers: HashMap::new(),
            tasks: FxHashMap::default(),
            queue: VecDeque::new(),
            next_task: 1,
            done: 0,
            failed_hooks: Vec::new(),
            readiness_changed: Arc::default(),
            stopping: false,
            trees: FxHashMap::default(),
            task_bytes: 0,
            max_tasks: MAX_TASKS,
            actors: HashMap::new(),
            actor_names: HashMap::new(),
            dead_actors: VecDeque::new(),
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::WorkerJoined {
                conn,
                info,
                pid,
                tx,
            } => {
                if self.stopping {
                    tx.send(ToWorker::Shutdown);
                }
                self.workers.insert(
                    conn,
                    Worker {
                        info,
                        pid,
                        tx,
                        ready: false,
                        leased: FxHashMap::default(),
                        sent: 0,
                        started: 0,
                        credit: 0,
                        has: VecDeque::new(),
                        done: 0,
                    },
                );
            }
            Event::WorkerMessage(conn, message) => self.worker_message(conn, message),
            Event::WorkerLeft(conn) => self.worker_left(conn),
            Event::DriverJoined { conn, tx, config } => {
                if let Some(reply) = config {
                    let _ = reply.send((*self.config).clone());
                }
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

    /// Removes a finished or failed task, and its tree once none of the
    /// tree's tasks is left.
    fn retire(&mut self, id: u64) -> Option<Task> {
        let task = self.tasks.remove(&id)?;
        self.store.unpin(&task.submission.component);
        self.task_bytes -= task.submission.invocation.len().min(self.task_bytes);
        if let Some(tree) = self.trees.get_mut(&task.root) {
            tree.live = tree.live.saturating_sub(1);
            if tree.live == 0 {
                self.trees.remove(&task.root);
            }
        }
        Some(task)
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
            self.retire(id);
        }
        self.queue.retain(|id| self.tasks.contains_key(id));
        let tasks = &self.tasks;
        for actor in self.actors.values_mut() {
            actor.waiting.retain(|id| tasks.contains_key(id));
        }
        // An actor whose creation was dropped before it ran is never made.
        self.actors
            .retain(|_, a| a.state != ActorState::Creating || tasks.contains_key(&a.creation));
        let actors = &self.actors;
        self.actor_names.retain(|_, id| actors.contains_key(id));
    }

    /// Sends results to whoever submitted the tasks, in messages of at most
    /// [`BATCH_BYTES`] unless one result is larger alone.
    fn reply(&self, results: HashMap<Origin, Vec<Done>>) {
        for (origin, results) in results {
            for batch in batches(results, usize::MAX, BATCH_BYTES, Done::wire_size) {
                match origin {
                    Origin::Driver(conn) => {
                        if let Some(tx) = self.drivers.get(&conn) {
                            tx.send(ToDriver::Results(batch));
                        }
                    }
                    Origin::Worker(conn) => {
                        if let Some(worker) = self.workers.get(&conn) {
                            worker.tx.send(ToWorker::Results(batch));
                        }
                    }
                    Origin::Cluster => {}
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
                self.readiness_changed.notify_one();
                self.dispatch();
            }
            FromWorker::HookFailed(error) => {
                if let Some(worker) = self.workers.get(&conn) {
                    if self.failed_hooks.len() == FAILED_HOOKS_KEPT {
                        self.failed_hooks.remove(0);
                    }
                    let error = crate::capabilities::tracer::truncate(error, 4096);
                    self.failed_hooks
                        .push((worker.info.worker_id.clone(), worker.pid, error));
                }
                self.readiness_changed.notify_one();
            }
            FromWorker::Submit(submissions) => self.submit(Origin::Worker(conn), submissions),
            FromWorker::Started(count) => {
                if let Some(worker) = self.workers.get_mut(&conn) {
                    // A worker cannot have started more than it was sent.
                    worker.started = worker.started.max(count.min(worker.sent));
                }
            }
            FromWorker::Credit(more) => {
                if let Some(worker) = self.workers.get_mut(&conn) {
                    // Bounded by what the head holds at most.
                    worker.credit = worker.credit.saturating_add(more as usize).min(MAX_TASKS);
                }
                self.dispatch();
            }
            FromWorker::Fetch(digest) => {
                if let Some(worker) = self.workers.get(&conn) {
                    worker.tx.send(ToWorker::Blob(digest, self.blob(&digest)));
                }
            }
            FromWorker::Done(batch) => {
                let mut replies: HashMap<Origin, Vec<Done>> = HashMap::new();
                for done in batch {
                    // Only the worker a task is leased to may finish it.
                    let Some(worker) = self.workers.get_mut(&conn) else {
                        break;
                    };
                    if worker.leased.remove(&done.id).is_none() {
                        continue;
                    }
                    worker.done += 1;
                    let Some(task) = self.retire(done.id) else {
                        continue;
                    };
                    self.done += 1;
                    if let Some(op) = &task.submission.actor {
                        self.actor_done(op, &done.output, &mut replies);
                    }
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

    /// A worker is gone: the tasks it had started count an attempt (and fail
    /// past `--max-retries`); those it had not are queued again as they
    /// were, and those it may or may not have started become suspects.
    fn worker_left(&mut self, conn: ConnId) {
        let Some(worker) = self.workers.remove(&conn) else {
            return;
        };
        self.readiness_changed.notify_one();
        self.forget_queued(Origin::Worker(conn));
        let mut failed: HashMap<Origin, Vec<Done>> = HashMap::new();
        // Its actors die with it; what was sent to them or waits for them
        // fails, saying so.
        let why = format!(
            "its worker {} (pid {}) died",
            worker.info.worker_id, worker.pid
        );
        let lost: Vec<String> = self
            .actors
            .iter()
            .filter(|(_, a)| a.worker == Some(conn) && a.state == ActorState::Alive)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &lost {
            self.restart_or_kill(id, &why, &mut failed);
        }
        let mut leased: Vec<(u64, u64)> =
            worker.leased.iter().map(|(id, seq)| (*seq, *id)).collect();
        leased.sort_unstable();
        let mut again = Vec::new();
        for (seq, id) in leased {
            let Some(task) = self.tasks.get_mut(&id) else {
                continue;
            };
            task.worker = None;
            // A creation is run again elsewhere, as a task is.
            if let Some(op) = task
                .submission
                .actor
                .as_ref()
                .filter(|op| !matches!(op, ActorOp::Create { .. }))
            {
                let error = TaskError::new(
                    TaskErrorKind::WorkerDied,
                    &task.submission.function,
                    format!("actor {} is dead: {why}", op.id()),
                );
                let task = self.retire(id).expect("present");
                failed.entry(task.origin).or_default().push(Done {
                    id: task.submission.tag,
                    pid: worker.pid,
                    busy_us: 0,
                    output: TaskOutput::failed(error),
                });
                continue;
            }
            let started = seq < worker.started;
            if !started {
                // Leased and never confirmed started: run it again, asking
                // its next worker to say when it starts.
                task.suspect = true;
                again.push(id);
                continue;
            }
            task.attempt += 1;
            if task.attempt > self.config.max_retries {
                let task = self.retire(id).expect("present");
                if let Some(ActorOp::Create { id: actor, .. }) = &task.submission.actor {
                    let why = "every worker making it died";
                    self.kill_actor(actor, why, &mut failed);
                    self.forget_actor(actor);
                }
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
                task.suspect = false;
                again.push(id);
            }
        }
        // In lease order, ahead of what was queued.
        for id in again.into_iter().rev() {
            self.queue.push_front(id);
        }
        self.reply(failed);
        self.dispatch();
    }

    fn driver_message(&mut self, conn: ConnId, message: FromDriver) {
        match message {
            FromDriver::Upload { name, bytes } => {
                // A refusal is kept: submissions naming the component are told.
                let _ = self.store.store(name, bytes);
            }
            FromDriver::Submit(submissions) => self.submit(Origin::Driver(conn), submissions),
            FromDriver::Status => {
                if let Some(tx) = self.drivers.get(&conn) {
                    tx.send(ToDriver::Status(Box::new(self.status())));
                }
            }
            FromDriver::Shutdown => self.shutdown(),
            FromDriver::Fetch(digest) => {
                if let Some(tx) = self.drivers.get(&conn) {
                    tx.send(ToDriver::Blob(digest, self.blob(&digest)));
                }
            }
            FromDriver::Detach(_) => {
                if let Some(tx) = self.drivers.get(&conn) {
                    tx.send(ToDriver::Detached(Err(DETACH_REFUSED.into())));
                }
            }
        }
    }

    /// The hook's or a stored component's bytes.
    fn blob(&self, digest: &Digest) -> Option<Vec<u8>> {
        match (&self.config.hook, &self.hook) {
            (Some(spec), Some(bytes)) if spec.digest == *digest => Some(bytes.as_ref().clone()),
            _ => self
                .store
                .get(digest)
                .map(|component| component.bytes.as_ref().clone()),
        }
    }

    /// Queues tasks; those naming an unknown component, an unknown parent,
    /// or past a nesting limit fail at once.
    fn submit(&mut self, origin: Origin, submissions: Vec<Submission>) {
        let mut rejected = Vec::new();
        for mut submission in submissions {
            match self.admit_actor_op(&mut submission) {
                Ok(ActorAdmission::Proceed) => {}
                Ok(ActorAdmission::Answer(output)) => {
                    rejected.push(Done {
                        id: submission.tag,
                        pid: 0,
                        busy_us: 0,
                        output,
                    });
                    continue;
                }
                Err(error) => {
                    rejected.push(Done {
                        id: submission.tag,
                        pid: 0,
                        busy_us: 0,
                        output: TaskOutput::failed(error),
                    });
                    continue;
                }
            }
            let placed = self
                .check_submission(&submission)
                .and_then(|()| self.place(origin, &submission));
            let (depth, root) = match placed {
                Ok(placed) => placed,
                Err(error) => {
                    rejected.push(Done {
                        id: submission.tag,
                        pid: 0,
                        busy_us: 0,
                        output: TaskOutput::failed(error),
                    });
                    continue;
                }
            };
            let id = self.next_task;
            self.next_task += 1;
            let root = match root {
                Some(root) => {
                    if let Some(tree) = self.trees.get_mut(&root) {
                        tree.live += 1;
                    }
                    root
                }
                None => id,
            };
            self.store.pin(&submission.component);
            self.task_bytes += submission.invocation.len();
            let actor = submission.actor.clone();
            self.tasks.insert(
                id,
                Task {
                    submission,
                    origin,
                    attempt: 0,
                    worker: None,
                    depth,
                    root,
                    suspect: false,
                },
            );
            match actor {
                Some(ActorOp::Create {
                    id: actor,
                    name,
                    max_restarts,
                    ..
                }) => {
                    self.register_actor(id, actor, name, max_restarts);
                    self.queue.push_back(id);
                }
                Some(ActorOp::Call { id: actor } | ActorOp::Kill { id: actor }) => {
                    if let Some(entry) = self.actors.get_mut(&actor) {
                        entry.waiting.push_back(id);
                    }
                    self.pump_actor(&actor);
                }
                // A lookup is answered at admission, never queued.
                Some(ActorOp::Find { .. }) | None => self.queue.push_back(id),
            }
        }
        if !rejected.is_empty() {
            self.reply(HashMap::from([(origin, rejected)]));
        }
        self.dispatch();
    }

    /// What no submission may carry, whoever sent it.
    fn check_submission(&self, submission: &Submission) -> std::result::Result<(), TaskError> {
        let cluster = |message: String| {
            Err(TaskError::new(
                TaskErrorKind::Cluster,
                &submission.function,
                message,
            ))
        };
        if submission.function.len() > MAX_NAME_BYTES || submission.task_id.len() > MAX_NAME_BYTES {
            return cluster(format!(
                "function names and task ids are at most {MAX_NAME_BYTES} bytes"
            ));
        }
        if submission.invocation.len() > MAX_INVOCATION_BYTES {
            return cluster(format!(
                "the invocation is {} bytes; at most {MAX_INVOCATION_BYTES} are allowed",
                submission.invocation.len()
            ));
        }
        if submission
            .trace
            .as_ref()
            .is_some_and(|t| t.state_len() > 512)
        {
            return cluster("the trace context is longer than W3C trace context allows".into());
        }
        if self.tasks.len() >= self.max_tasks
            || self.task_bytes + submission.invocation.len() > MAX_TASK_BYTES
        {
            return cluster(format!(
                "the cluster holds {} tasks ({} MiB of invocations), as many as it takes; wait \
                 for results before submitting more",
                self.tasks.len(),
                self.task_bytes >> 20
            ));
        }
        if self.store.get(&submission.component).is_none() {
            return cluster(self.store.missing(&submission.component));
        }
        Ok(())
    }

    /// Where a submission goes in its tree: its depth and, for a nested
    /// task, its tree's root. Counted here from what the head knows, never
    /// from numbers a peer sends.
    fn place(
        &mut self,
        origin: Origin,
        submission: &Submission,
    ) -> std::result::Result<(u32, Option<u64>), TaskError> {
        let Origin::Worker(conn) = origin else {
            return Ok((0, None));
        };
        let error = |kind, message: String| TaskError::new(kind, &submission.function, message);
        let parent = submission
            .parent
            .and_then(|id| self.tasks.get(&id))
            .filter(|parent| parent.worker == Some(conn))
            .ok_or_else(|| {
                error(
                    TaskErrorKind::Cluster,
                    "a nested task must name the running task that submits it".into(),
                )
            })?;
        let limits = &self.config.limits;
        let depth = parent.depth.saturating_add(1);
        if depth > limits.nesting_depth {
            return Err(error(
                TaskErrorKind::NestingLimit,
                format!(
                    "nesting depth limit reached: tasks may nest {} deep (raise it with \
                     --max-nesting-depth)",
                    limits.nesting_depth
                ),
            ));
        }
        let root = parent.root;
        // The root is live: it, or a task under it, is running this submit.
        let tree = self.trees.entry(root).or_insert(Tree {
            submitted: 0,
            live: 1,
        });
        tree.submitted = tree.submitted.saturating_add(1);
        if tree.submitted > limits.nested_tasks {
            return Err(error(
                TaskErrorKind::NestingLimit,
                format!(
                    "the task tree has submitted {} tasks, the limit (raise it with \
                     --max-nested-tasks)",
                    limits.nested_tasks
                ),
            ));
        }
        Ok((depth, Some(root)))
    }

    /// Tells every worker to finish its current task, flush and exit.
    fn shutdown(&mut self) {
        self.stopping = true;
        for worker in self.workers.values() {
            worker.tx.send(ToWorker::Shutdown);
        }
    }

    /// Leases queued tasks to the ready workers that asked for them, the one
    /// with the most credit first.
    fn dispatch(&mut self) {
        if self.stopping {
            return;
        }
        let mut leased: HashMap<ConnId, Vec<Lease>> = HashMap::new();
        let mut forgotten: HashMap<ConnId, Vec<Digest>> = HashMap::new();
        let mut refused: HashMap<Origin, Vec<Done>> = HashMap::new();
        while let Some(&id) = self.queue.front() {
            let creates = self
                .tasks
                .get(&id)
                .is_some_and(|t| matches!(t.submission.actor, Some(ActorOp::Create { .. })));
            // A creation goes only to a worker with room for one more actor.
            let room = |conn: &ConnId| !creates || self.has_actor_room(*conn);
            let Some((&conn, _)) = self
                .workers
                .iter()
                .filter(|(conn, w)| w.ready && w.credit > 0 && room(conn))
                .max_by_key(|(_, w)| w.credit)
            else {
                if creates && !self.workers.iter().any(|(conn, w)| w.ready && room(conn)) {
                    // No worker that could ever take it now: say so rather
                    // than hold everything queued behind it.
                    self.queue.pop_front();
                    self.refuse_creation(id, &mut refused);
                    continue;
                }
                break;
            };
            self.queue.pop_front();
            let Some(lease) = self.lease(conn, id, &mut forgotten) else {
                continue;
            };
            self.workers.get_mut(&conn).expect("chosen above").credit -= 1;
            if let Some(ActorOp::Create { id: actor, .. }) = &lease.actor
                && let Some(actor) = self.actors.get_mut(actor)
            {
                actor.worker = Some(conn);
            }
            leased.entry(conn).or_default().push(lease);
        }
        if !refused.is_empty() {
            self.reply(refused);
        }
        for (conn, leases) in leased {
            for batch in batches(leases, usize::MAX, BATCH_BYTES, Lease::wire_size) {
                self.workers[&conn].tx.send(ToWorker::Run(batch));
            }
            // After the leases: those sent before still find what they need.
            if let Some(digests) = forgotten.remove(&conn) {
                self.workers[&conn].tx.send(ToWorker::Forget(digests));
            }
        }
    }

    /// Whether worker `conn` holds fewer live actors than
    /// `--max-actors-per-worker`.
    fn has_actor_room(&self, conn: ConnId) -> bool {
        let held = self
            .actors
            .values()
            .filter(|a| a.worker == Some(conn) && !matches!(a.state, ActorState::Dead(_)))
            .count();
        held < self.config.actors.per_worker as usize
    }

    /// Fails actor creation `id`: no ready worker has room for an actor.
    fn refuse_creation(&mut self, id: u64, replies: &mut HashMap<Origin, Vec<Done>>) {
        let Some(task) = self.retire(id) else {
            return;
        };
        let limit = self.config.actors.per_worker;
        let error = TaskError::new(
            TaskErrorKind::ActorLimit,
            &task.submission.function,
            format!(
                "every worker holds {limit} actors, as many as --max-actors-per-worker allows; \
                 kill one (`wtrace actor kill ID`), add workers, or start the cluster with a \
                 higher --max-actors-per-worker"
            ),
        );
        if let Some(op) = &task.submission.actor {
            let why = format!("its creation failed: {}", error.message);
            self.kill_actor(op.id(), &why, replies);
            self.forget_actor(op.id());
        }
        replies.entry(task.origin).or_default().push(Done {
            id: task.submission.tag,
            pid: 0,
            busy_us: 0,
            output: TaskOutput::failed(error),
        });
    }

    /// The lease of task `id` for worker `conn`, with its component's bytes
    /// unless the worker holds them; a component the worker must now forget
    /// goes into `forgotten`. None when the task or its component is gone.
    fn lease(
        &mut self,
        conn: ConnId,
        id: u64,
        forgotten: &mut HashMap<ConnId, Vec<Digest>>,
    ) -> Option<Lease> {
        let task = self.tasks.get_mut(&id)?;
        let worker = self.workers.get_mut(&conn)?;
        let digest = &task.submission.component;
        let component = self.store.get(digest)?;
        let bytes = match worker.has.iter().position(|d| d == digest) {
            Some(held) => {
                let digest = worker.has.remove(held).expect("found");
                worker.has.push_back(digest);
                None
            }
            None => {
                worker.has.push_back(*digest);
                if worker.has.len() > WORKER_COMPONENTS
                    && let Some(oldest) = worker.has.pop_front()
                {
                    forgotten.entry(conn).or_default().push(oldest);
                }
                Some(component.bytes.as_ref().clone())
            }
        };
        worker.leased.insert(id, worker.sent);
        worker.sent += 1;
        task.worker = Some(conn);
        Some(Lease {
            lease_id: id,
            task_id: task.submission.task_id.clone(),
            attempt: task.attempt,
            component: ComponentRef {
                digest: *digest,
                name: component.name.clone(),
                bytes,
            },
            function: task.submission.function.clone(),
            invocation: task.submission.invocation.clone(),
            trace: task.submission.trace.clone(),
            depth: task.depth,
            confirm_start: task.suspect,
            actor: task.submission.actor.clone(),
        })
    }

    /// Checks an actor submission and points it at its actor: a creation's
    /// id and name must be new; a call or kill names a known actor (by id
    /// or name), whose id and component it then carries.
    fn admit_actor_op(
        &mut self,
        submission: &mut Submission,
    ) -> std::result::Result<ActorAdmission, TaskError> {
        let error = |kind, message: String| TaskError::new(kind, &submission.function, message);
        let Some(op) = &submission.actor else {
            return Ok(ActorAdmission::Proceed);
        };
        match op {
            ActorOp::Create { id, name, .. } => {
                let taken =
                    |n: &str| self.actors.contains_key(n) || self.actor_names.contains_key(n);
                if id.len() > MAX_NAME_BYTES
                    || name.as_ref().is_some_and(|n| n.len() > MAX_NAME_BYTES)
                {
                    return Err(error(
                        TaskErrorKind::Cluster,
                        format!("actor ids and names are at most {MAX_NAME_BYTES} bytes"),
                    ));
                }
                if taken(id) {
                    return Err(error(
                        TaskErrorKind::Cluster,
                        format!("an actor {id:?} exists already"),
                    ));
                }
                let limit = self.config.actors.per_cluster;
                let live = self
                    .actors
                    .values()
                    .filter(|a| !matches!(a.state, ActorState::Dead(_)))
                    .count();
                if live >= limit as usize {
                    return Err(error(
                        TaskErrorKind::ActorLimit,
                        format!(
                            "the cluster holds {live} actors, as many as --max-actors allows \
                             ({limit}); kill one (`wtrace actor kill ID`) or start the cluster \
                             with a higher --max-actors"
                        ),
                    ));
                }
                if let Some(name) = name
                    && taken(name)
                {
                    return Err(error(
                        TaskErrorKind::Cluster,
                        format!(
                            "an actor named {name:?} exists already; pick another --name, or \
                             `wtrace actor kill {name}` first"
                        ),
                    ));
                }
                Ok(ActorAdmission::Proceed)
            }
            ActorOp::Find { id: given }
            | ActorOp::Call { id: given }
            | ActorOp::Kill { id: given } => {
                let id = self
                    .actor_names
                    .get(given)
                    .cloned()
                    .unwrap_or_else(|| given.clone());
                let Some(actor) = self.actors.get(&id) else {
                    return Err(error(
                        TaskErrorKind::Cluster,
                        format!("no actor {given:?} in this cluster (see `wtrace actor list`)"),
                    ));
                };
                if matches!(op, ActorOp::Find { .. }) {
                    let found = FoundActor {
                        id,
                        class: actor.class.clone(),
                        component: actor.component,
                        component_name: actor.component_name.clone(),
                    };
                    let json = serde_json::to_string(&found).expect("serializes");
                    return Ok(ActorAdmission::Answer(TaskOutput::answered(Ok(json))));
                }
                let kill = matches!(op, ActorOp::Kill { .. });
                if let ActorState::Dead(why) = &actor.state {
                    if kill {
                        self.forget_actor(&id);
                        return Ok(ActorAdmission::Answer(TaskOutput::answered(Ok(
                            String::new(),
                        ))));
                    }
                    return Err(error(
                        TaskErrorKind::ActorDead,
                        format!("actor {id} is dead: {why}"),
                    ));
                }
                submission.component = actor.component;
                submission.actor = Some(if kill {
                    ActorOp::Kill { id }
                } else {
                    ActorOp::Call { id }
                });
                Ok(ActorAdmission::Proceed)
            }
        }
    }

    fn register_actor(
        &mut self,
        creation: u64,
        id: String,
        name: Option<String>,
        max_restarts: u32,
    ) {
        let Some(task) = self.tasks.get(&creation) else {
            return;
        };
        let submission = &task.submission;
        let class = submission
            .function
            .strip_suffix(".new")
            .unwrap_or(&submission.function)
            .to_owned();
        let component_name = self
            .store
            .get(&submission.component)
            .map(|c| c.name.clone())
            .unwrap_or_default();
        if let Some(name) = &name {
            self.actor_names.insert(name.clone(), id.clone());
        }
        self.actors.insert(
            id,
            HeadActor {
                name,
                class,
                component: submission.component,
                component_name,
                creation,
                constructor: submission.clone(),
                restarts: 0,
                max_restarts,
                worker: None,
                calls: 0,
                state: ActorState::Creating,
                waiting: VecDeque::new(),
                busy: false,
            },
        );
    }

    /// Sends an alive, idle actor its next waiting call or kill.
    fn pump_actor(&mut self, id: &str) {
        loop {
            let Some(actor) = self.actors.get_mut(id) else {
                return;
            };
            if actor.busy || actor.state != ActorState::Alive {
                return;
            }
            let Some(conn) = actor.worker else {
                return;
            };
            let Some(task) = actor.waiting.pop_front() else {
                return;
            };
            actor.busy = true;
            let mut forgotten = HashMap::new();
            if let Some(lease) = self.lease(conn, task, &mut forgotten) {
                let worker = &self.workers[&conn];
                worker.tx.send(ToWorker::Run(vec![lease]));
                if let Some(digests) = forgotten.remove(&conn) {
                    worker.tx.send(ToWorker::Forget(digests));
                }
                return;
            }
            if let Some(actor) = self.actors.get_mut(id) {
                actor.busy = false;
            }
        }
    }

    /// An actor's creation, call or kill finished with `output`.
    fn actor_done(
        &mut self,
        op: &ActorOp,
        output: &TaskOutput,
        replies: &mut HashMap<Origin, Vec<Done>>,
    ) {
        let id = op.id().to_owned();
        match (op, &output.result) {
            (ActorOp::Create { .. }, Ok(_)) => {
                if let Some(actor) = self.actors.get_mut(&id) {
                    actor.state = ActorState::Alive;
                }
            }
            (ActorOp::Create { restarts: 0, .. }, Err(error)) => {
                let why = format!("its creation failed: {}", error.message);
                self.kill_actor(&id, &why, replies);
                self.forget_actor(&id);
            }
            (ActorOp::Create { restarts, .. }, Err(error)) => {
                let why = format!(
                    "making it again (restart {restarts}) failed: {}",
                    error.message
                );
                self.kill_actor(&id, &why, replies);
            }
            (ActorOp::Call { .. }, result) => {
                let Some(actor) = self.actors.get_mut(&id) else {
                    return;
                };
                actor.busy = false;
                if crate::exec::actor::ran(result) {
                    actor.calls += 1;
                }
                if let Err(error) = result
                    && crate::exec::actor::kills(error.kind)
                {
                    let why = format!("call {} failed: {}", actor.calls, error.message);
                    self.restart_or_kill(&id, &why, replies);
                }
            }
            (ActorOp::Kill { .. }, _) => {
                self.kill_actor(&id, "it was killed", replies);
                self.forget_actor(&id);
            }
            (ActorOp::Find { .. }, _) => {}
        }
        self.pump_actor(&id);
    }

    /// Makes a dead actor again by its constructor while it has restarts
    /// left (the calls waiting for it then go to the new one); else marks
    /// it dead for `why`.
    fn restart_or_kill(&mut self, id: &str, why: &str, replies: &mut HashMap<Origin, Vec<Done>>) {
        let Some(actor) = self.actors.get_mut(id) else {
            return;
        };
        if actor.restarts >= actor.max_restarts {
            self.kill_actor(id, why, replies);
            return;
        }
        actor.restarts += 1;
        actor.state = ActorState::Creating;
        actor.worker = None;
        actor.busy = false;
        let mut submission = actor.constructor.clone();
        if let Some(ActorOp::Create { restarts, .. }) = &mut submission.actor {
            *restarts = actor.restarts;
        }
        let task = self.next_task;
        self.next_task += 1;
        actor.creation = task;
        self.store.pin(&submission.component);
        self.task_bytes += submission.invocation.len();
        self.tasks.insert(
            task,
            Task {
                submission,
                origin: Origin::Cluster,
                attempt: 0,
                worker: None,
                depth: 0,
                root: task,
                suspect: false,
            },
        );
        self.queue.push_front(task);
    }

    /// Marks an actor dead for `why`, failing what waits for it.
    fn kill_actor(&mut self, id: &str, why: &str, replies: &mut HashMap<Origin, Vec<Done>>) {
        let Some(actor) = self.actors.get_mut(id) else {
            return;
        };
        if !matches!(actor.state, ActorState::Dead(_)) {
            actor.state = ActorState::Dead(why.to_owned());
            self.dead_actors.push_back(id.to_owned());
        }
        actor.busy = false;
        let waiting: Vec<u64> = actor.waiting.drain(..).collect();
        for task in waiting {
            if let Some(task) = self.retire(task) {
                let error = TaskError::new(
                    TaskErrorKind::ActorDead,
                    &task.submission.function,
                    format!("actor {id} is dead: {why}"),
                );
                replies.entry(task.origin).or_default().push(Done {
                    id: task.submission.tag,
                    pid: 0,
                    busy_us: 0,
                    output: TaskOutput::failed(error),
                });
            }
        }
        while self.dead_actors.len() > DEAD_ACTORS_KEPT {
            if let Some(oldest) = self.dead_actors.pop_front() {
                self.forget_actor(&oldest);
            }
        }
    }

    fn forget_actor(&mut self, id: &str) {
        if let Some(actor) = self.actors.remove(id)
            && let Some(name) = actor.name
        {
            self.actor_names.remove(&name);
        }
        self.dead_actors.retain(|d| d != id);
    }

    fn status(&self) -> ClusterStatus {
        let mut actors: Vec<ActorStatus> = self
            .actors
            .iter()
            .map(|(id, a)| ActorStatus {
                id: id.clone(),
                name: a.name.clone(),
                class: a.class.clone(),
                component: a.component_name.clone(),
                digest: a.component,
                worker: a
                    .worker
                    .and_then(|conn| self.workers.get(&conn))
                    .map(|w| (w.info.worker_id.clone(), w.info.node_id.clone(), w.pid)),
                calls: a.calls,
                restarts: a.restarts,
                state: match &a.state {
                    ActorState::Creating => "creating".into(),
                    ActorState::Alive => "alive".into(),
                    ActorState::Dead(why) => format!("dead: {why}"),
                },
            })
            .collect();
        actors.sort_by(|a, b| a.id.cmp(&b.id));
        ClusterStatus {
            actors,
            job_id: self.config.job_id.clone(),
            hook: self
                .config
                .hook
                .as_ref()
                .map(|h| (h.display.clone(), h.digest)),
            workers: self
                .workers
                .values()
                .map(|w| WorkerStatus {
                    worker_id: w.info.worker_id.clone(),
                    node_id: w.info.node_id.clone(),
                    pid: w.pid,
                    ready: w.ready,
                    running: w.running(),
                    leased: w.leased.len(),
                    done: w.done,
                })
                .collect(),
            queued: self.queue.len(),
            running: self.workers.values().map(Worker::running).sum(),
            done: self.done,
            components: self.store.len(),
            component_bytes: self.store.bytes(),
            uptime: self.started.elapsed(),
            failed_hooks: self.failed_hooks.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::messages::ActorLimits;

    fn state(max_retries: u32, nested_tasks: u32, nesting_depth: u32) -> State {
        State::new(ClusterConfig {
            job_id: "job".into(),
            hook: None,
            limits: crate::config::Limits {
                nested_tasks,
                nesting_depth,
                ..Default::default()
            },
            policy: Default::default(),
            grants: Default::default(),
            max_retries,
            component_store: 1 << 30,
            actors: Default::default(),
        })
    }

    fn join_worker(state: &mut State, conn: ConnId) -> mpsc::UnboundedReceiver<ToWorker> {
        // As if its tasks were quick: it asks for many at once.
        join_worker_asking(state, conn, 128)
    }

    fn join_worker_asking(
        state: &mut State,
        conn: ConnId,
        credit: u32,
    ) -> mpsc::UnboundedReceiver<ToWorker> {
        let (tx, rx) = Outbox::new(CancellationToken::new());
        state.handle(Event::WorkerJoined {
            conn,
            info: WorkerInfo {
                worker_id: format!("w{conn}"),
                node_id: "n".into(),
                job_id: String::new(),
            },
            pid: conn as u32,
            tx,
        });
        state.handle(Event::WorkerMessage(conn, FromWorker::Ready));
        state.handle(Event::WorkerMessage(conn, FromWorker::Credit(credit)));
        rx
    }

    fn join_driver(state: &mut State, conn: ConnId) -> (mpsc::UnboundedReceiver<ToDriver>, Digest) {
        let (tx, rx) = Outbox::new(CancellationToken::new());
        state.handle(Event::DriverJoined {
            conn,
            tx,
            config: None,
        });
        let bytes = b"\0asm component".to_vec();
        let digest = Digest::of(&bytes);
        state.handle(Event::DriverMessage(
            conn,
            FromDriver::Upload {
                name: "t.wasm".into(),
                bytes,
            },
        ));
        (rx, digest)
    }

    fn submission(tag: u64, component: &Digest, parent: Option<u64>) -> Submission {
        Submission {
            tag,
            task_id: format!("t-{tag}"),
            component: *component,
            function: "f".into(),
            invocation: "f()".into(),
            trace: None,
            parent,
            actor: None,
        }
    }

    /// What `pick` takes of the messages queued on `rx`, all drained.
    fn drain<M, T>(
        rx: &mut mpsc::UnboundedReceiver<M>,
        pick: impl Fn(M) -> Option<Vec<T>>,
    ) -> Vec<T> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .filter_map(pick)
            .flatten()
            .collect()
    }

    fn leases(rx: &mut mpsc::UnboundedReceiver<ToWorker>) -> Vec<Lease> {
        drain(rx, |m| match m {
            ToWorker::Run(leases) => Some(leases),
            _ => None,
        })
    }

    fn worker_results(rx: &mut mpsc::UnboundedReceiver<ToWorker>) -> Vec<Done> {
        drain(rx, |m| match m {
            ToWorker::Results(results) => Some(results),
            _ => None,
        })
    }

    fn driver_results(rx: &mut mpsc::UnboundedReceiver<ToDriver>) -> Vec<Done> {
        drain(rx, |m| match m {
            ToDriver::Results(results) => Some(results),
            _ => None,
        })
    }

    /// The error message of a failed result.
    fn message(done: &Done) -> &str {
        &done.output.result.as_ref().unwrap_err().message
    }

    fn done(id: u64) -> Done {
        Done {
            id,
            pid: 1,
            busy_us: 10,
            output: TaskOutput {
                result: Ok("ok".into()),
                stdout: Vec::new(),
                stderr: Vec::new(),
                nested: Vec::new(),
            },
        }
    }

    fn kind(done: &Done) -> Option<TaskErrorKind> {
        done.output.result.as_ref().err().map(|e| e.kind)
    }

    fn upload(state: &mut State, driver: ConnId, tag: u8) -> Digest {
        let bytes = vec![0, tag, 1, 2, 3];
        let digest = Digest::of(&bytes);
        state.handle(Event::DriverMessage(
            driver,
            FromDriver::Upload {
                name: format!("c{tag}.wasm"),
                bytes,
            },
        ));
        digest
    }

    fn actor_submission(tag: u64, component: &Digest, function: &str, op: ActorOp) -> Submission {
        Submission {
            function: function.into(),
            invocation: format!("{function}()"),
            actor: Some(op),
            ..submission(tag, component, None)
        }
    }

    fn create(tag: u64, component: &Digest, id: &str) -> Submission {
        let op = ActorOp::Create {
            id: id.into(),
            name: None,
            max_restarts: 0,
            restarts: 0,
        };
        actor_submission(tag, component, "counter.new", op)
    }

    /// Runs every lease on `rx` to success, as worker `conn`.
    fn run_all(state: &mut State, conn: ConnId, rx: &mut mpsc::UnboundedReceiver<ToWorker>) {
        for lease in leases(rx) {
            state.handle(Event::WorkerMessage(conn, FromWorker::Started(u64::MAX)));
            state.handle(Event::WorkerMessage(
                conn,
                FromWorker::Done(vec![done(lease.lease_id)]),
            ));
        }
    }

    #[test]
    fn actors_past_the_cluster_or_worker_limit_are_refused_and_room_comes_back() {
        let mut state = state(3, 100, 16);
        Arc::make_mut(&mut state.config).actors = ActorLimits {
            per_cluster: 3,
            per_worker: 1,
        };
        let mut w1 = join_worker(&mut state, 1);
        let mut w2 = join_worker(&mut state, 2);
        let (mut driver, digest) = join_driver(&mut state, 3);
        let submit = |state: &mut State, s: Submission| {
            state.handle(Event::DriverMessage(3, FromDriver::Submit(vec![s])));
        };
        submit(&mut state, create(1, &digest, "a"));
        submit(&mut state, create(2, &digest, "b"));
        run_all(&mut state, 1, &mut w1);
        run_all(&mut state, 2, &mut w2);
        let made = driver_results(&mut driver);
        assert_eq!(made.len(), 2);
        assert!(made.iter().all(|d| d.output.result.is_ok()), "{made:?}");
        let workers: Vec<_> = state.actors.values().map(|a| a.worker).collect();
        assert!(
            workers.contains(&Some(1)) && workers.contains(&Some(2)),
            "one on each"
        );

        // Both workers are full: the third is refused, saying which limit.
        submit(&mut state, create(3, &digest, "c"));
        let refused = driver_results(&mut driver);
        assert_eq!(refused.len(), 1);
        assert_eq!(kind(&refused[0]), Some(TaskErrorKind::ActorLimit));
        assert!(
            message(&refused[0]).contains("--max-actors-per-worker"),
            "{}",
            message(&refused[0])
        );
        assert!(
            !state.actors.contains_key("c"),
            "a refused actor is not listed"
        );
        // A plain task behind it still runs.
        submit(&mut state, submission(4, &digest, None));
        assert_eq!(leases(&mut w1).len() + leases(&mut w2).len(), 1);

        // Killing one makes room on its worker.
        let kill = ActorOp::Kill { id: "a".into() };
        submit(
            &mut state,
            actor_submission(5, &digest, "counter.kill", kill),
        );
        let holder = state.actors["a"].worker.unwrap();
        let (rx, other) = if holder == 1 {
            (&mut w1, 2)
        } else {
            (&mut w2, 1)
        };
        run_all(&mut state, holder, rx);
        submit(&mut state, create(6, &digest, "d"));
        assert_eq!(state.actors["d"].worker, Some(holder));
        let _ = other;

        // Past --max-actors in the whole cluster.
        Arc::make_mut(&mut state.config).actors.per_worker = 10;
        submit(&mut state, create(7, &digest, "e"));
        submit(&mut state, create(8, &digest, "f"));
        let results = driver_results(&mut driver);
        let over: Vec<_> = results.iter().filter(|d| d.id == 8).collect();
        assert_eq!(over.len(), 1, "{results:?}");
        assert_eq!(kind(over[0]), Some(TaskErrorKind::ActorLimit));
        assert!(
            message(over[0]).contains("--max-actors allows (3)"),
            "{}",
            message(over[0])
        );
    }

    #[test]
    fn a_worker_is_told_to_forget_components_past_its_bound_and_sent_them_again() {
        let mut state = state(3, 100, 16);
        let mut worker = join_worker(&mut state, 1);
        let (_driver, _) = join_driver(&mut state, 2);
        let digests: Vec<Digest> = (0..40).map(|tag| upload(&mut state, 2, tag)).collect();
        let mut forgotten = Vec::new();
        let mut sent_bytes = Vec::new();
        for (tag, digest) in digests.iter().enumerate() {
            state.handle(Event::DriverMessage(
                2,
                FromDriver::Submit(vec![submission(tag as u64, digest, None)]),
            ));
            while let Ok(message) = worker.try_recv() {
                match message {
                    ToWorker::Run(leases) => {
                        for lease in leases {
                            sent_bytes.push(lease.component.bytes.is_some());
                            state.handle(Event::WorkerMessage(1, FromWorker::Started(u64::MAX)));
                            state.handle(Event::WorkerMessage(
                                1,
                                FromWorker::Done(vec![done(lease.lease_id)]),
                            ));
                        }
                    }
                    ToWorker::Forget(digests) => forgotten.extend(digests),
                    _ => {}
                }
            }
        }
        assert!(
            sent_bytes.iter().all(|b| *b),
            "each new component went with its bytes"
        );
        assert_eq!(forgotten, digests[..40 - WORKER_COMPONENTS].to_vec());
        assert_eq!(state.workers[&1].has.len(), WORKER_COMPONENTS);
        // A forgotten component leased again goes with its bytes again.
        state.handle(Event::DriverMessage(
            2,
            FromDriver::Submit(vec![submission(99, &digests[0], None)]),
        ));
        let again = leases(&mut worker);
        assert!(again[0].component.bytes.is_some());
    }

    #[test]
    fn submissions_past_what_the_head_holds_fail_and_room_comes_back() {
        let mut state = state(3, 100, 16);
        state.max_tasks = 4;
        let (mut driver, digest) = join_driver(&mut state, 2);
        state.handle(Event::DriverMessage(
            2,
            FromDriver::Submit((1..=6).map(|tag| submission(tag, &digest, None)).collect()),
        ));
        let refused = driver_results(&mut driver);
        assert_eq!(refused.iter().map(|d| d.id).collect::<Vec<_>>(), [5, 6]);
        assert!(message(&refused[0]).contains("wait for results"));
        // A worker takes them, finishes them: there is room again.
        let mut worker = join_worker(&mut state, 1);
        let leased = leases(&mut worker);
        state.handle(Event::WorkerMessage(1, FromWorker::Started(4)));
        state.handle(Event::WorkerMessage(
            1,
            FromWorker::Done(leased.iter().map(|l| done(l.lease_id)).collect()),
        ));
        assert_eq!(driver_results(&mut driver).len(), 4);
        assert_eq!(state.task_bytes, 0);
        state.handle(Event::DriverMessage(
            2,
            FromDriver::Submit(vec![submission(7, &digest, None)]),
        ));
        assert!(driver_results(&mut driver).is_empty());
        assert_eq!(leases(&mut worker).len(), 1);
    }

    #[test]
    fn a_peer_that_stops_reading_is_dropped_past_its_send_budget() {
        let closed = CancellationToken::new();
        let (outbox, rx) = Outbox::<ToDriver>::new(closed.clone());
        let written = outbox.written();
        let big = || {
            let mut result = done(1);
            result.output.stdout = vec![0; 64 << 20];
            ToDriver::Results(vec![result])
        };
        // Written as it goes: the budget is never reached.
        for _ in 0..20 {
            let message = big();
            outbox.send(message);
            written(&big());
        }
        assert!(!closed.is_cancelled());
        // Never read: past the budget the connection is dropped.
        for _ in 0..(MAX_OUTGOING_BYTES >> 26) + 1 {
            outbox.send(big());
        }
        assert!(closed.is_cancelled(), "the connection is closed");
        drop(rx);
    }

    #[test]
    fn depth_and_tree_budgets_are_the_heads_own_count() {
        let mut state = state(3, 2, 2);
        let mut worker = join_worker(&mut state, 1);
        let (_driver, digest) = join_driver(&mut state, 2);
        state.handle(Event::DriverMessage(
            2,
            FromDriver::Submit(vec![submission(1, &digest, None)]),
        ));
        let root = leases(&mut worker).pop().unwrap();
        assert_eq!(root.depth, 0);

        // A child names its parent; its depth is the parent's plus one,
        // whatever else the peer sends.
        state.handle(Event::WorkerMessage(
            1,
            FromWorker::Submit(vec![submission(10, &digest, Some(root.lease_id))]),
        ));
        let child = leases(&mut worker).pop().unwrap();
        assert_eq!(child.depth, 1);
        // A grandchild at the depth limit is fine; one below it is not.
        state.handle(Event::WorkerMessage(
            1,
            FromWorker::Submit(vec![submission(11, &digest, Some(child.lease_id))]),
        ));
        let grandchild = leases(&mut worker).pop().unwrap();
        assert_eq!(grandchild.depth, 2);
        state.handle(Event::WorkerMessage(
            1,
            FromWorker::Submit(vec![submission(12, &digest, Some(grandchild.lease_id))]),
        ));
        let refused = worker_results(&mut worker);
        assert_eq!(refused.len(), 1);
        assert_eq!(kind(&refused[0]), Some(TaskErrorKind::NestingLimit));
        assert!(message(&refused[0]).contains("--max-nesting-depth"));

        // A parent that is not this worker's running task is refused.
        state.handle(Event::WorkerMessage(
            1,
            FromWorker::Submit(vec![submission(13, &digest, Some(9999))]),
        ));
        assert_eq!(
            kind(&worker_results(&mut worker)[0]),
            Some(TaskErrorKind::Cluster)
        );

        // The tree has submitted 2, its budget: the next is over
        // --max-nested-tasks, whichever task of the tree sends it.
        state.handle(Event::WorkerMessage(
            1,
            FromWorker::Submit(vec![submission(14, &digest, Some(child.lease_id))]),
        ));
        let over = worker_results(&mut worker);
        assert_eq!(kind(&over[0]), Some(TaskErrorKind::NestingLimit));
        assert!(message(&over[0]).contains("--max-nested-tasks"));
    }

    #[test]
    fn a_tree_is_released_when_its_tasks_fail() {
        let mut state = state(0, 100, 16);
        let mut worker = join_worker(&mut state, 1);
        let (mut driver, digest) = join_driver(&mut state, 2);
        state.handle(Event::DriverMessage(
            2,
            FromDriver::Submit(vec![submission(1, &digest, None)]),
        ));
        let root = leases(&mut worker).pop().unwrap();
        assert!(state.trees.is_empty(), "a root alone needs no tree");
        state.handle(Event::WorkerMessage(
            1,
            FromWorker::Submit(vec![
                submission(10, &digest, Some(root.lease_id)),
                submission(11, &digest, Some(root.lease_id)),
            ]),
        ));
        assert_eq!(leases(&mut worker).len(), 2);
        assert_eq!(state.trees.len(), 1);
        state.handle(Event::WorkerMessage(1, FromWorker::Started(3)));
        state.handle(Event::WorkerLeft(1));
        let failed = driver_results(&mut driver);
        assert_eq!(failed.len(), 1);
        assert_eq!(kind(&failed[0]), Some(TaskErrorKind::WorkerDied));
        assert!(state.tasks.is_empty(), "every task of the tree is gone");
        assert!(state.trees.is_empty(), "and so is the tree's budget");
        assert!(state.queue.is_empty());
    }

    #[test]
    fn only_leases_a_worker_started_count_an_attempt_when_it_dies() {
        let mut state = state(0, 100, 16);
        let mut first = join_worker(&mut state, 1);
        let (mut driver, digest) = join_driver(&mut state, 2);
        state.handle(Event::DriverMessage(
            2,
            FromDriver::Submit((1..=3).map(|tag| submission(tag, &digest, None)).collect()),
        ));
        let leased = leases(&mut first);
        assert_eq!(leased.len(), 3);
        assert!(leased.iter().all(|l| !l.confirm_start));
        // It started the first, then died with the two behind it unstarted
        // as far as the head knows.
        state.handle(Event::WorkerMessage(1, FromWorker::Started(1)));
        state.handle(Event::WorkerLeft(1));
        let failed = driver_results(&mut driver);
        assert_eq!(failed.len(), 1, "only the started task failed");
        assert_eq!(failed[0].id, 1);
        assert_eq!(kind(&failed[0]), Some(TaskErrorKind::WorkerDied));

        // The other two run again, first attempt still, asking their new
        // worker to confirm the start.
        let mut second = join_worker(&mut state, 3);
        let again = leases(&mut second);
        assert_eq!(again.iter().map(|l| l.attempt).collect::<Vec<_>>(), [0, 0]);
        assert!(again.iter().all(|l| l.confirm_start));
        // A result from a worker the task is not leased to is ignored.
        state.handle(Event::WorkerMessage(
            1,
            FromWorker::Done(vec![done(again[0].lease_id)]),
        ));
        assert!(driver_results(&mut driver).is_empty());
        state.handle(Event::WorkerMessage(
            3,
            FromWorker::Done(again.iter().map(|l| done(l.lease_id)).collect()),
        ));
        let results = driver_results(&mut driver);
        assert_eq!(results.iter().map(|d| d.id).collect::<Vec<_>>(), [2, 3]);
        assert!(results.iter().all(|d| d.output.result.is_ok()));
    }

    #[test]
    fn workers_are_leased_what_they_ask_for_and_no_more() {
        let mut state = state(3, 100, 16);
        let mut one = join_worker_asking(&mut state, 1, 2);
        let mut two = join_worker_asking(&mut state, 2, 3);
        let (_driver, digest) = join_driver(&mut state, 9);
        let submissions = (1..=10).map(|tag| submission(tag, &digest, None)).collect();
        state.handle(Event::DriverMessage(9, FromDriver::Submit(submissions)));
        assert_eq!(leases(&mut one).len(), 2);
        assert_eq!(leases(&mut two).len(), 3);
        assert_eq!(state.queue.len(), 5, "the rest waits for credit");
        // Credit adds up, results alone free none.
        state.handle(Event::WorkerMessage(1, FromWorker::Credit(4)));
        assert_eq!(leases(&mut one).len(), 4);
        assert_eq!(state.queue.len(), 1);
        let id = state.workers[&2].leased.keys().next().copied().unwrap();
        state.handle(Event::WorkerMessage(2, FromWorker::Done(vec![done(id)])));
        assert!(leases(&mut two).is_empty());
        state.handle(Event::WorkerMessage(2, FromWorker::Credit(1)));
        assert_eq!(leases(&mut two).len(), 1);
        assert!(state.queue.is_empty());
    }

    #[test]
    fn the_hook_is_a_blob_fetched_by_digest() {
        let hook = b"\0asm hook".to_vec();
        let mut state = state(3, 100, 16);
        let digest = Digest::of(&hook);
        Arc::get_mut(&mut state.config).unwrap().hook = Some(crate::cluster::HookRef {
            display: "hook.wasm:setup".into(),
            name: "hook.wasm".into(),
            export: "setup".into(),
            digest,
        });
        state.hook = Some(Arc::new(hook.clone()));
        let mut worker = join_worker(&mut state, 1);
        state.handle(Event::WorkerMessage(1, FromWorker::Fetch(digest)));
        let unknown = Digest::of(b"other");
        state.handle(Event::WorkerMessage(1, FromWorker::Fetch(unknown)));
        let blobs = drain(&mut worker, |m| match m {
            ToWorker::Blob(digest, bytes) => Some(vec![(digest, bytes)]),
            _ => None,
        });
        assert_eq!(blobs, vec![(digest, Some(hook)), (unknown, None)]);
    }
}

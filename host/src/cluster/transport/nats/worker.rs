//! A worker's link over NATS: it pulls tasks from the shared consumer as far
//! as its credit goes, keeps each message until the task's result is stored,
//! and announces itself with a heartbeat.

use std::collections::{HashMap, VecDeque};
use std::future::IntoFuture as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, kv, object_store};
use futures::StreamExt as _;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::actors::{self, ActorStore, RecordState};
use super::driver::{PACK_MAX, open_results, pack, publish_tasks};
use super::{
    CONTROL_SUBJECT, HEARTBEAT_EVERY, Heartbeat, Nats, PROGRESS_EVERY, TASKS_STREAM, TaskMessage,
    WORKERS_CONSUMER, connect, decode, encode, get_blob,
};
use crate::capabilities::provider::WorkerInfo;
use crate::cluster::messages::{
    ActorOp, ClusterConfig, ComponentRef, Done, FromWorker, Lease, ToWorker, WORKER_COMPONENTS,
    WorkerStatus,
};
use crate::cluster::transport::{Credentials, WorkerLink};
use crate::error::{Error, Result};
use crate::exec::actor::kills;
use crate::ids::random_hex;
use crate::outcome::{TaskError, TaskErrorKind, TaskOutput};
use crate::runtime::Digest;
use crate::sync::lock;

/// A message of tasks this worker holds: unacknowledged until the result of
/// every task it kept from it is stored.
struct Packet {
    message: jetstream::Message,
    /// Its tasks whose results are not stored yet.
    left: usize,
}

/// A task this worker holds, from the packet of that id.
struct Held {
    packet: u64,
    task: TaskMessage,
    attempt: u32,
}

/// What the link's tasks share.
struct Shared {
    nats: Nats,
    /// The connection results and acknowledgements go out on, with its
    /// generation: replaced by a fresh one when it stalls.
    publisher: Mutex<(u64, Nats)>,
    blobs: object_store::ObjectStore,
    config: ClusterConfig,
    held: Mutex<HashMap<u64, Held>>,
    packets: Mutex<HashMap<u64, Packet>>,
    next_packet: AtomicU64,
    next_lease: AtomicU64,
    /// Leases the pool says it started (ids `1..=started`).
    started: AtomicU64,
    credit: Mutex<usize>,
    credit_came: Notify,
    /// Components the pool holds, least recently leased first.
    has: Mutex<VecDeque<Digest>>,
    /// Component names by digest, for nested submissions' spans.
    names: Mutex<HashMap<Digest, String>>,
    beat: Mutex<Heartbeat>,
    /// Task trees' budgets.
    trees: kv::Store,
    /// Where results of this worker's nested tasks go.
    subject: String,
    inbox: mpsc::UnboundedSender<ToWorker>,
    closing: CancellationToken,
    /// The cluster's actors.
    actors: ActorStore,
    /// The actors this worker holds, by id.
    local: Mutex<HashMap<String, LocalActor>>,
    /// Actor creations this worker took and has not finished.
    creating: AtomicUsize,
    /// Starts the call loop of an actor this worker made.
    loops: mpsc::UnboundedSender<ActorLoop>,
    /// Workers holding actors whose heartbeat was gone at the last look.
    suspects: Mutex<std::collections::HashSet<String>>,
}

/// An actor whose calls to read: its id, which making of it, and its
/// [`LocalActor::stop`] and [`LocalActor::turn`].
type ActorLoop = (String, u32, CancellationToken, Arc<Notify>);

/// An actor this worker holds.
struct LocalActor {
    /// Calls it finished, and how many of them its record says.
    calls: u64,
    flushed: u64,
    /// Ends its call loop.
    stop: CancellationToken,
    /// Told when the call it was sent finished.
    turn: Arc<Notify>,
}

pub(crate) async fn connect_worker(
    servers: &[String],
    tls: bool,
    credentials: &Credentials,
    info: WorkerInfo,
    pid: u32,
    written: impl Fn(&FromWorker) + Send + Sync + 'static,
) -> Result<WorkerLink> {
    let name = format!("wtrace worker {}", info.worker_id);
    let nats = connect(servers, tls, credentials, &name).await?;
    let entry = nats.config(&servers.join(",")).await?;
    let blobs = nats.blobs().await?;
    let workers = nats.workers().await?;
    let trees = nats
        .bucket(super::TREES, super::RESULTS_KEPT)
        .await
        .map_err(|e| Error::Cluster(format!("cannot open the task trees' bucket: {e}")))?;
    let stream = nats
        .js
        .get_stream(TASKS_STREAM)
        .await
        .map_err(|e| Error::Cluster(format!("cannot open the task stream: {e}")))?;
    let consumer: consumer::PullConsumer = stream
        .get_consumer(WORKERS_CONSUMER)
        .await
        .map_err(|e| Error::Cluster(format!("cannot open the workers' consumer: {e}")))?;
    let subject = format!(
        "wtrace.results.w-{}-{}",
        sanitize(&info.worker_id),
        random_hex(4)
    );
    let results = open_results(&nats, &subject).await?;
    let control =
        nats.client.subscribe(CONTROL_SUBJECT).await.map_err(|e| {
            Error::Cluster(format!("cannot subscribe to the cluster's control: {e}"))
        })?;
    let actor_store = nats.actor_store().await?;
    let (loops, actor_loops) = mpsc::unbounded_channel();

    let (tx, outbound) = mpsc::unbounded_channel();
    let (inbox, rx) = mpsc::unbounded_channel();
    let (_lost_tx, lost) = oneshot::channel();
    let key = sanitize(&info.worker_id);
    let shared = Arc::new(Shared {
        publisher: Mutex::new((0, nats.clone())),
        nats,
        blobs,
        config: entry.config.clone(),
        held: Mutex::new(HashMap::new()),
        packets: Mutex::new(HashMap::new()),
        next_packet: AtomicU64::new(1),
        next_lease: AtomicU64::new(1),
        started: AtomicU64::new(0),
        credit: Mutex::new(0),
        credit_came: Notify::new(),
        has: Mutex::new(VecDeque::new()),
        names: Mutex::new(HashMap::new()),
        beat: Mutex::new(Heartbeat {
            status: WorkerStatus {
                worker_id: info.worker_id.clone(),
                node_id: info.node_id.clone(),
                pid,
                ready: false,
                running: 0,
                leased: 0,
                done: 0,
            },
            hook_failed: None,
        }),
        trees,
        subject,
        inbox,
        closing: CancellationToken::new(),
        actors: actor_store,
        local: Mutex::new(HashMap::new()),
        creating: AtomicUsize::new(0),
        loops,
        suspects: Mutex::new(std::collections::HashSet::new()),
    });
    beat(&shared, &workers, &key).await;
    tokio::spawn(fetch_loop(shared.clone(), consumer));
    tokio::spawn(results_loop(shared.clone(), results));
    tokio::spawn(control_loop(shared.clone(), control));
    tokio::spawn(start_actor_loops(shared.clone(), actor_loops));
    tokio::spawn(keep_alive(shared.clone(), workers.clone(), key.clone()));
    let sent = tokio::spawn(async move {
        send_loop(&shared, outbound, written).await;
        shared.closing.cancel();
        let _ = workers.delete(&key).await;
        let _ = shared.nats.client.flush().await;
    });
    Ok(WorkerLink {
        config: entry.config,
        tx,
        rx,
        lost,
        sent,
    })
}

/// A key or subject token made of what NATS allows.
fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

async fn beat(shared: &Shared, workers: &jetstream::kv::Store, key: &str) {
    let _ = tokio::time::timeout(super::REQUEST_TIMEOUT, put_beat(shared, workers, key)).await;
}

async fn put_beat(shared: &Shared, workers: &jetstream::kv::Store, key: &str) {
    let json = {
        let mut beat = lock(&shared.beat);
        // The pool starts leases in the order they came, and their ids
        // count up: those up to the starts it told are running.
        let started = shared.started.load(Ordering::Relaxed);
        let held = lock(&shared.held);
        beat.status.leased = held.len();
        beat.status.running = held.keys().filter(|id| **id <= started).count();
        serde_json::to_vec(&*beat).expect("a heartbeat serializes")
    };
    let _ = workers.put(key, json.into()).await;
}

/// Renews the heartbeat and tells the stream the held tasks are still being
/// worked on, so a slow task is not taken for a dead one.
async fn keep_alive(shared: Arc<Shared>, workers: jetstream::kv::Store, key: String) {
    let mut beats = tokio::time::interval(HEARTBEAT_EVERY);
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    let mut watch = tokio::time::interval(ACTOR_WATCH_EVERY);
    loop {
        tokio::select! {
            _ = beats.tick() => beat(&shared, &workers, &key).await,
            _ = watch.tick() => {
                flush_calls(&shared).await;
                watch_actors(&shared, &workers).await;
            }
            _ = progress.tick() => {
                let ackers: Vec<_> = lock(&shared.packets)
                    .values()
                    .map(|packet| packet.message.clone())
                    .collect();
                for message in ackers {
                    let progress = message.ack_with(AckKind::Progress);
                    let _ = tokio::time::timeout(super::REQUEST_TIMEOUT, progress).await;
                }
            }
            () = shared.closing.cancelled() => return,
        }
    }
}

/// How long a worker running tasks waits for credit enough for a pack.
const PACK_WAIT: Duration = Duration::from_millis(2);

/// Pulls as many tasks as the pool has asked for, as they come.
async fn fetch_loop(shared: Arc<Shared>, consumer: consumer::PullConsumer) {
    loop {
        // Credit for a whole pack is worth a moment's wait while tasks
        // run: less than a pack means putting the rest back.
        let want = loop {
            let credit = *lock(&shared.credit);
            let idle = lock(&shared.held).is_empty();
            if credit >= PACK_MAX || (credit > 0 && idle) {
                break credit;
            }
            let more = async {
                tokio::select! {
                    () = shared.credit_came.notified() => true,
                    () = shared.closing.cancelled() => false,
                }
            };
            if credit == 0 {
                if !more.await {
                    return;
                }
                continue;
            }
            match tokio::time::timeout(PACK_WAIT, more).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(_) => break credit,
            }
        };
        let batch = tokio::select! {
            batch = consumer
                .fetch()
                // A message carries up to PACK_MAX tasks; those past the
                // credit go back to the stream.
                .max_messages((want / PACK_MAX).clamp(1, 256))
                .expires(Duration::from_secs(1))
                .messages() => batch,
            () = shared.closing.cancelled() => return,
        };
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(_) => {
                // The server is away (restarting, say): try again shortly.
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        let mut leases = Vec::new();
        let mut forget = Vec::new();
        while let Some(message) = batch.next().await {
            let Ok(message) = message else { break };
            take(&shared, message, &mut leases, &mut forget).await;
        }
        if !leases.is_empty() && shared.inbox.send(ToWorker::Run(leases)).is_err() {
            return;
        }
        if !forget.is_empty() {
            let _ = shared.inbox.send(ToWorker::Forget(forget));
        }
    }
}

/// Makes leases of the tasks of a delivered message, as many as the credit
/// goes (the rest go back to the stream in a message of their own), or
/// fails them at once (past their retries, or their component missing).
async fn take(
    shared: &Arc<Shared>,
    message: jetstream::Message,
    leases: &mut Vec<Lease>,
    forget: &mut Vec<Digest>,
) {
    let delivered = message.info().map_or(1, |info| info.delivered.max(1));
    let redelivered = u32::try_from(delivered - 1).unwrap_or(u32::MAX);
    let mut tasks: Vec<TaskMessage> = match decode(&message.payload, &shared.blobs, false).await {
        Ok(tasks) => tasks,
        Err(why) => {
            eprintln!("wtrace worker: dropping an unreadable task message: {why}");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    for task in &mut tasks {
        task.attempts_before = task.attempts_before.saturating_add(redelivered);
    }
    let (creations, rest): (Vec<_>, Vec<_>) = tasks
        .into_iter()
        .partition(|t| matches!(t.submission.actor, Some(ActorOp::Create { .. })));
    tasks = rest;
    for creation in creations {
        match make_room(shared, creation).await {
            Some(kept) => tasks.push(kept),
            None => continue,
        }
    }
    if tasks.is_empty() {
        // Every task went elsewhere, and is safe there.
        let _ = message.ack().await;
        return;
    }
    // A message delivered again goes back one task a message, so a task
    // that kills its workers does not take its pack-mates' attempts along.
    let room = if redelivered > 0 {
        1
    } else {
        (*lock(&shared.credit)).max(1)
    };
    if tasks.len() > room {
        let rest = tasks.split_off(room);
        let id = |task: &TaskMessage, count: usize| {
            format!(
                "{}:{}+{count}r",
                task.submission.task_id, task.attempts_before
            )
        };
        let packets = if redelivered > 0 {
            rest.iter()
                .map(|task| (vec![task.clone()], id(task, 1)))
                .collect()
        } else {
            vec![(rest.clone(), id(&rest[0], rest.len()))]
        };
        let mut nats = shared.nats.clone();
        if !publish_tasks(&mut nats, &shared.blobs, packets)
            .await
            .is_empty()
        {
            // Not all back on the stream: run them here after all (those
            // that are back run twice; their drivers drop one result).
            tasks.extend(rest);
        }
    }
    let packet = shared.next_packet.fetch_add(1, Ordering::Relaxed);
    lock(&shared.packets).insert(
        packet,
        Packet {
            message,
            left: tasks.len(),
        },
    );
    let mut failed: HashMap<String, Vec<(u64, Done)>> = HashMap::new();
    let mut failed_tasks = Vec::new();
    for task in tasks {
        let actor = task.submission.actor.is_some().then(|| task.clone());
        match lease(shared, packet, task, forget).await {
            Ok(lease) => leases.push(lease),
            Err(failure) => {
                let (reply, done) = *failure;
                failed.entry(reply).or_default().push((packet, done));
                failed_tasks.extend(actor);
            }
        }
    }
    for (reply, finished) in failed {
        for (_, done) in &finished {
            if let Some(task) = failed_tasks
                .iter()
                .find(|t| t.submission.tag == done.id && t.reply == reply)
            {
                actor_finished(shared, task, &done.output).await;
            }
        }
        finish_all(shared, &reply, finished).await;
    }
}

/// Leases one task of `packet`, or says why it fails without running: its
/// submitter's subject and its result.
async fn lease(
    shared: &Shared,
    packet: u64,
    task: TaskMessage,
    forget: &mut Vec<Digest>,
) -> std::result::Result<Lease, Box<(String, Done)>> {
    let attempt = task.attempts_before;
    let submission = &task.submission;
    let fail = |kind, why: String| {
        let error = TaskError::new(kind, &submission.function, why);
        let done = Done {
            id: submission.tag,
            pid: 0,
            busy_us: 0,
            output: TaskOutput::failed(error),
        };
        Err(Box::new((task.reply.clone(), done)))
    };
    if attempt > shared.config.max_retries {
        let why = format!(
            "its worker died on every attempt ({attempt} attempts); the task may be crashing \
             its workers"
        );
        return fail(TaskErrorKind::WorkerDied, why);
    }
    let digest = submission.component;
    let held_already = {
        let mut has = lock(&shared.has);
        match has.iter().position(|d| *d == digest) {
            Some(at) => {
                let d = has.remove(at).expect("found");
                has.push_back(d);
                true
            }
            None => false,
        }
    };
    let bytes = if held_already {
        None
    } else {
        match get_blob(&shared.blobs, &digest.to_string()).await {
            Ok(Some(bytes)) => {
                let mut has = lock(&shared.has);
                has.push_back(digest);
                if has.len() > WORKER_COMPONENTS
                    && let Some(oldest) = has.pop_front()
                {
                    forget.push(oldest);
                }
                Some(bytes)
            }
            Ok(None) | Err(_) => {
                let why = format!("component {digest} is not in the cluster's object store");
                return fail(TaskErrorKind::Cluster, why);
            }
        }
    };
    lock(&shared.names).insert(digest, task.component_name.clone());
    let lease_id = shared.next_lease.fetch_add(1, Ordering::Relaxed);
    let lease = Lease {
        lease_id,
        task_id: submission.task_id.clone(),
        attempt,
        component: ComponentRef {
            digest,
            name: task.component_name.clone(),
            bytes,
        },
        function: submission.function.clone(),
        invocation: submission.invocation.clone(),
        trace: submission.trace.clone(),
        depth: task.depth,
        confirm_start: false,
        actor: submission.actor.clone(),
    };
    // Calls and kills come to an actor's worker unasked.
    if !matches!(
        submission.actor,
        Some(ActorOp::Call { .. } | ActorOp::Kill { .. })
    ) {
        let mut credit = lock(&shared.credit);
        *credit = credit.saturating_sub(1);
    }
    lock(&shared.held).insert(
        lease_id,
        Held {
            packet,
            task,
            attempt,
        },
    );
    Ok(lease)
}

/// Replaces the publishing connection `stalled` (of `generation`) by a fresh
/// one, unless another result's publish replaced it first. After the server
/// restarts, a reconnected connection sometimes stops sending while it keeps
/// receiving; a fresh one does not.
async fn replace_stalled(shared: &Shared, generation: u64, stalled: &Nats) {
    if lock(&shared.publisher).0 != generation {
        return;
    }
    if let Ok(fresh) = stalled.fresh().await {
        let mut publisher = lock(&shared.publisher);
        if publisher.0 == generation {
            *publisher = (generation + 1, fresh);
        }
    }
}

/// Stores results for one submitter in one message on its subject, then
/// acknowledges each task message whose every task is done: a worker dying
/// between the two leaves the tasks to run again (the driver delivers each
/// result once), never a task acknowledged without its result. The server
/// being away (restarting) only delays it.
async fn finish_all(shared: &Shared, reply: &str, finished: Vec<(u64, Done)>) {
    let (packets, results): (Vec<_>, Vec<_>) = finished.into_iter().unzip();
    if reply.is_empty() {
        // No one waits for the result (an actor the cluster made again).
        let nats = lock(&shared.publisher).1.clone();
        acknowledge(shared, &nats, &packets).await;
        return;
    }
    let spill = || format!("result/{}", random_hex(8));
    let payload = match encode(&results, &shared.blobs, spill).await {
        Ok(payload) => payload,
        Err(error) => {
            eprintln!("wtrace worker: cannot store results: {error}");
            return;
        }
    };
    // Until the server is back, if it is away: about a minute.
    let waits = [0u64, 100, 250, 500, 1000].into_iter().chain([2000; 30]);
    for wait in waits {
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let (generation, nats) = lock(&shared.publisher).clone();
        let publish = nats.js.publish(reply.to_owned(), payload.clone());
        let (stored, stalled) = match tokio::time::timeout(super::REQUEST_TIMEOUT, publish).await {
            Ok(Ok(ack)) => {
                match tokio::time::timeout(super::REQUEST_TIMEOUT, ack.into_future()).await {
                    Ok(Ok(_)) => (true, false),
                    Ok(Err(_)) => (false, false),
                    Err(_) => (false, true),
                }
            }
            Ok(Err(e)) => (
                false,
                e.kind() == async_nats::jetstream::context::PublishErrorKind::TimedOut,
            ),
            Err(_) => (false, true),
        };
        if stalled {
            replace_stalled(shared, generation, &nats).await;
            continue;
        }
        if stored {
            acknowledge(shared, &nats, &packets).await;
            return;
        }
    }
    eprintln!(
        "wtrace worker: could not store {} results; their tasks will run again",
        results.len()
    );
}

/// Counts one task done in each of `packets`, acknowledging those whose
/// every task is done. Should an acknowledgement be lost, the tasks run
/// again and their second results are dropped by their drivers. It goes out
/// on `nats`, the connection that just stored the results.
async fn acknowledge(shared: &Shared, nats: &Nats, packets: &[u64]) {
    let complete: Vec<jetstream::Message> = {
        let mut held = lock(&shared.packets);
        packets
            .iter()
            .filter_map(|id| {
                let packet = held.get_mut(id)?;
                packet.left = packet.left.saturating_sub(1);
                (packet.left == 0).then(|| held.remove(id).expect("there").message)
            })
            .collect()
    };
    for message in complete {
        match &message.reply {
            Some(subject) => {
                let _ = nats
                    .client
                    .publish(subject.clone(), Bytes::from_static(b"+ACK"))
                    .await;
            }
            None => {
                let _ = message.ack().await;
            }
        }
        super::discard_spilled(&shared.blobs, &message.payload).await;
    }
}

/// Sends what the pool says on to NATS until the pool is done.
async fn send_loop(
    shared: &Arc<Shared>,
    mut outbound: mpsc::UnboundedReceiver<FromWorker>,
    written: impl Fn(&FromWorker),
) {
    while let Some(message) = outbound.recv().await {
        match &message {
            FromWorker::Credit(more) => {
                *lock(&shared.credit) += *more as usize;
                shared.credit_came.notify_one();
            }
            FromWorker::Done(batch) => {
                let mut finishing = Vec::with_capacity(batch.len());
                for done in batch {
                    if let Some(held) = lock(&shared.held).remove(&done.id) {
                        finishing.push((held, done.clone()));
                    }
                }
                lock(&shared.beat).status.done += finishing.len() as u64;
                let mut by_reply: HashMap<&str, Vec<(u64, Done)>> = HashMap::new();
                for (held, done) in &finishing {
                    let done = Done {
                        id: held.task.submission.tag,
                        ..done.clone()
                    };
                    by_reply
                        .entry(held.task.reply.as_str())
                        .or_default()
                        .push((held.packet, done));
                }
                // An actor's next call may run while this one's result is
                // stored, unless this one left the actor dead.
                for (held, done) in &finishing {
                    if let Some(ActorOp::Call { id }) = &held.task.submission.actor
                        && !done.output.result.as_ref().is_err_and(|e| kills(e.kind))
                        && let Some(actor) = lock(&shared.local).get(id)
                    {
                        actor.turn.notify_one();
                    }
                }
                let stored = by_reply
                    .into_iter()
                    .map(|(reply, finished)| finish_all(shared, reply, finished));
                futures::future::join_all(stored).await;
                for (held, done) in &finishing {
                    actor_finished(shared, &held.task, &done.output).await;
                }
            }
            FromWorker::Submit(submissions) => submit(shared, submissions.clone()).await,
            FromWorker::Ready => lock(&shared.beat).status.ready = true,
            FromWorker::HookFailed(error) => {
                lock(&shared.beat).hook_failed =
                    Some(crate::capabilities::tracer::truncate(error.clone(), 4096));
            }
            FromWorker::Fetch(digest) => {
                let bytes = get_blob(&shared.blobs, &digest.to_string())
                    .await
                    .ok()
                    .flatten();
                let _ = shared.inbox.send(ToWorker::Blob(*digest, bytes));
            }
            FromWorker::Started(count) => shared.started.store(*count, Ordering::Relaxed),
        }
        written(&message);
    }
}

/// Publishes nested tasks, nested one deeper than the task that submits
/// them; the de-duplication id names the submitter's attempt, so a retried
/// parent's children are new tasks, not duplicates.
async fn submit(shared: &Shared, submissions: Vec<crate::cluster::messages::Submission>) {
    let mut rejected = Vec::new();
    let mut tasks = Vec::new();
    for mut submission in submissions {
        if let Some(ActorOp::Find { .. }) = submission.actor {
            // A lookup runs nothing: answered here, outside any budget.
            let lookup = TaskMessage {
                submission,
                component_name: String::new(),
                reply: shared.subject.clone(),
                depth: 0,
                attempts_before: 0,
                bounces: 0,
            };
            let mut nats = shared.nats.clone();
            let limits = shared.config.actors;
            rejected.extend(
                actors::submit(&mut nats, &shared.actors, &shared.blobs, limits, lookup).await,
            );
            continue;
        }
        let parent = submission.parent.take().and_then(|id| {
            lock(&shared.held).get(&id).map(|held| {
                let root = tree_root(&held.task.submission.task_id).to_owned();
                (held.task.depth, held.attempt, root)
            })
        });
        let fail = |kind, why: String| Done {
            id: submission.tag,
            pid: 0,
            busy_us: 0,
            output: TaskOutput::failed(TaskError::new(kind, &submission.function, why)),
        };
        let Some((depth, attempt, root)) = parent else {
            rejected.push(fail(
                TaskErrorKind::Cluster,
                "a nested task must name the running task that submits it".into(),
            ));
            continue;
        };
        let depth = depth.saturating_add(1);
        let limit = shared.config.limits.nesting_depth;
        if depth > limit {
            rejected.push(fail(
                TaskErrorKind::NestingLimit,
                format!(
                    "nesting depth limit reached: tasks may nest {limit} deep (raise it with \
                     --max-nesting-depth)"
                ),
            ));
            continue;
        }
        let component_name = lock(&shared.names)
            .get(&submission.component)
            .cloned()
            .unwrap_or_else(|| submission.component.to_string());
        let id = format!("{}:{attempt}", submission.task_id);
        tasks.push((
            root,
            (
                TaskMessage {
                    submission,
                    component_name,
                    reply: shared.subject.clone(),
                    depth,
                    attempts_before: 0,
                    bounces: 0,
                },
                id,
            ),
        ));
    }
    // Each tree's budget is charged before its tasks go out; those past it
    // fail, as on a wtrace head.
    let limit = shared.config.limits.nested_tasks;
    let mut granted: HashMap<String, Result<u32>> = HashMap::new();
    for (root, _) in &tasks {
        if let std::collections::hash_map::Entry::Vacant(entry) = granted.entry(root.clone()) {
            let want = tasks.iter().filter(|(r, _)| r == root).count() as u32;
            entry.insert(charge_tree(&shared.trees, root, want, limit).await);
        }
    }
    let tasks: Vec<(TaskMessage, String)> = tasks
        .into_iter()
        .filter_map(|(root, task)| {
            let fail = |why: String, kind| Done {
                id: task.0.submission.tag,
                pid: 0,
                busy_us: 0,
                output: TaskOutput::failed(TaskError::new(kind, &task.0.submission.function, why)),
            };
            match granted.get_mut(&root).expect("charged") {
                Ok(0) => {
                    rejected.push(fail(
                        format!(
                            "the task tree has submitted {limit} tasks, the limit (raise it \
                             with --max-nested-tasks)"
                        ),
                        TaskErrorKind::NestingLimit,
                    ));
                    None
                }
                Ok(left) => {
                    *left -= 1;
                    Some(task)
                }
                Err(error) => {
                    rejected.push(fail(error.to_string(), TaskErrorKind::Cluster));
                    None
                }
            }
        })
        .collect();
    let mut nats = shared.nats.clone();
    let (to_actors, tasks): (Vec<_>, Vec<_>) = tasks
        .into_iter()
        .partition(|(task, _)| task.submission.actor.is_some());
    rejected.extend(publish_tasks(&mut nats, &shared.blobs, pack(tasks)).await);
    let limits = shared.config.actors;
    let to_actors = to_actors.into_iter().map(|(task, _)| task).collect();
    rejected.extend(
        actors::submit_all(&mut nats, &shared.actors, &shared.blobs, limits, to_actors).await,
    );
    if !rejected.is_empty() {
        let _ = shared.inbox.send(ToWorker::Results(rejected));
    }
}

/// The id of the task at the root of `task_id`'s tree: nested task ids
/// extend their parent's (`<root>.<n>.<m>`).
fn tree_root(task_id: &str) -> &str {
    task_id.split('.').next().unwrap_or(task_id)
}

/// Adds up to `want` tasks to `root`'s tree, within `limit`: how many it
/// may submit. Compare-and-set, so workers running one tree share its count.
async fn charge_tree(trees: &kv::Store, root: &str, want: u32, limit: u32) -> Result<u32> {
    let key = sanitize(root);
    let failed = |e: &dyn std::fmt::Display| {
        Error::Cluster(format!(
            "cannot count the task tree's nested tasks on NATS: {e}"
        ))
    };
    for _ in 0..64 {
        let entry = trees.entry(&key).await.map_err(|e| failed(&e))?;
        let (used, revision) = match &entry {
            Some(entry) if entry.operation == kv::Operation::Put => (
                std::str::from_utf8(&entry.value)
                    .ok()
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(0),
                Some(entry.revision),
            ),
            _ => (0, None),
        };
        let granted = want.min(limit.saturating_sub(used));
        if granted == 0 {
            return Ok(0);
        }
        let value = (used + granted).to_string().into_bytes().into();
        // A conflict is another worker's write first: read it again.
        let written = match revision {
            Some(revision) => match trees.update(&key, value, revision).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
                Err(e) => Err(failed(&e)),
            },
            None => match trees.create(&key, value).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(failed(&e)),
            },
        };
        if written? {
            return Ok(granted);
        }
    }
    Err(failed(&"too many workers raced for it"))
}

/// Most times an actor's creation goes back to the stream, for want of room
/// on the workers that took it, before it fails: with room anywhere, a
/// worker with room takes it long before.
const MAX_BOUNCES: u32 = 64;

/// Calls of one actor its worker reads ahead of the one running.
const CALLS_AHEAD: usize = 32;

/// How often a worker looks for alive actors whose worker died, and writes
/// its own actors' call counts to their records.
const ACTOR_WATCH_EVERY: Duration = Duration::from_secs(3);

/// Keeps an actor's creation when this worker has room for another actor
/// (`--max-actors-per-worker`); else puts it back on the task stream for
/// another worker, or fails it once it went round every worker. None when
/// it went elsewhere.
async fn make_room(shared: &Arc<Shared>, task: TaskMessage) -> Option<TaskMessage> {
    let limit = shared.config.actors.per_worker as usize;
    let held = lock(&shared.local).len() + shared.creating.load(Ordering::SeqCst);
    if held < limit {
        shared.creating.fetch_add(1, Ordering::SeqCst);
        return Some(task);
    }
    if task.bounces >= MAX_BOUNCES {
        let why = format!(
            "every worker holds {limit} actors, as many as --max-actors-per-worker allows; kill \
             one (`wtrace actor kill ID`), add workers, or start the cluster with a higher \
             --max-actors-per-worker"
        );
        let done = actors::refused(&task, TaskErrorKind::ActorLimit, why);
        shared.creating.fetch_add(1, Ordering::SeqCst);
        actor_finished(shared, &task, &done.output).await;
        finish_all(shared, &task.reply, vec![(0, done)]).await;
        return None;
    }
    // A moment's pause, so a worker with room but busy gets its turn.
    tokio::time::sleep(Duration::from_millis(5 * u64::from(task.bounces.min(10)))).await;
    let mut again = task.clone();
    again.bounces += 1;
    let id = format!(
        "{}:{}b{}",
        task.submission.task_id, task.attempts_before, again.bounces
    );
    let mut nats = shared.nats.clone();
    if publish_tasks(&mut nats, &shared.blobs, vec![(vec![again], id)])
        .await
        .is_empty()
    {
        return None;
    }
    // Not back on the stream: make it here after all.
    shared.creating.fetch_add(1, Ordering::SeqCst);
    Some(task)
}

/// Keeps an actor's record true to what its creation, call or kill came
/// to, once its result is stored.
async fn actor_finished(shared: &Arc<Shared>, task: &TaskMessage, output: &TaskOutput) {
    let Some(op) = &task.submission.actor else {
        return;
    };
    match op {
        ActorOp::Create { id, restarts, .. } => {
            let _ = shared
                .creating
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            match &output.result {
                Ok(_) => made(shared, id, *restarts).await,
                Err(error) if *restarts == 0 => {
                    let why = format!("its creation failed: {}", error.message);
                    end_actor(shared, id, &why, true).await;
                }
                Err(error) => {
                    let why = format!(
                        "making it again (restart {restarts}) failed: {}",
                        error.message
                    );
                    end_actor(shared, id, &why, false).await;
                }
            }
        }
        ActorOp::Call { id } => {
            let calls = {
                let mut local = lock(&shared.local);
                let Some(actor) = local.get_mut(id) else {
                    return;
                };
                if crate::exec::actor::ran(&output.result) {
                    actor.calls += 1;
                }
                actor.calls
            };
            if let Err(error) = &output.result
                && kills(error.kind)
            {
                // The pool dropped the instance: the actor is made again
                // or dead.
                if let Some(actor) = lock(&shared.local).remove(id) {
                    actor.stop.cancel();
                }
                let why = format!("call {calls} failed: {}", error.message);
                let worker = lock(&shared.beat).status.worker_id.clone();
                claim(shared, id, &worker, &why, None).await;
            }
        }
        ActorOp::Kill { id } => {
            if let Some(actor) = lock(&shared.local).remove(id) {
                actor.stop.cancel();
            }
            end_actor(shared, id, "it was killed", true).await;
        }
        ActorOp::Find { .. } => {}
    }
}

/// This worker made actor `id` (its `restarts`-th making): its record says
/// so, and its calls start coming here.
async fn made(shared: &Shared, id: &str, restarts: u32) {
    let me = {
        let beat = lock(&shared.beat);
        (
            beat.status.worker_id.clone(),
            beat.status.node_id.clone(),
            beat.status.pid,
        )
    };
    let mut recorded = false;
    for _ in 0..16 {
        let Ok(Some((mut record, revision))) = shared.actors.record(id).await else {
            break;
        };
        if record.state != RecordState::Creating || record.restarts != restarts {
            break;
        }
        record.state = RecordState::Alive;
        record.worker = Some(me.clone());
        match shared.actors.replace(&record, revision).await {
            Ok(true) => {
                recorded = true;
                break;
            }
            Ok(false) => continue,
            Err(_) => break,
        }
    }
    if !recorded {
        // Its record is gone or moved on: no call will come for this
        // instance, so the pool drops it.
        eprintln!("wtrace worker: actor {id} was made but its record moved on; dropping it");
        return;
    }
    let stop = CancellationToken::new();
    let turn = Arc::new(Notify::new());
    lock(&shared.local).insert(
        id.to_owned(),
        LocalActor {
            calls: 0,
            flushed: 0,
            stop: stop.clone(),
            turn: turn.clone(),
        },
    );
    let _ = shared.loops.send((id.to_owned(), restarts, stop, turn));
}

/// Starts each actor's call loop. (Spawned here, not where an actor is
/// made: a loop's own calls make actors again.)
async fn start_actor_loops(shared: Arc<Shared>, mut loops: mpsc::UnboundedReceiver<ActorLoop>) {
    loop {
        let started = tokio::select! {
            started = loops.recv() => started,
            () = shared.closing.cancelled() => return,
        };
        let Some((id, restarts, stop, turn)) = started else {
            return;
        };
        tokio::spawn(actor_loop(shared.clone(), id, restarts, stop, turn));
    }
}

/// Reads actor `id`'s calls, one at a time: each is leased to the pool, and
/// the next read once its result is stored.
async fn actor_loop(
    shared: Arc<Shared>,
    id: String,
    restarts: u32,
    stop: CancellationToken,
    turn: Arc<Notify>,
) {
    let name = actors::consumer_name(&id, restarts);
    let consumer: consumer::PullConsumer = match shared
        .actors
        .calls
        .get_or_create_consumer(
            &name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: actors::calls_subject(&id),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: super::ACK_WAIT,
                max_ack_pending: CALLS_AHEAD as i64,
                ..Default::default()
            },
        )
        .await
    {
        Ok(consumer) => consumer,
        Err(e) => {
            eprintln!("wtrace worker: cannot read the calls of actor {id}: {e}");
            return;
        }
    };
    // A standing pull of a few calls ahead: they still run one at a time,
    // the next as soon as the last finished (its result is stored, and it
    // acknowledged, meanwhile).
    let mut messages = None;
    loop {
        let stream = match &mut messages {
            Some(stream) => stream,
            None => match consumer
                .stream()
                .max_messages_per_batch(CALLS_AHEAD)
                .messages()
                .await
            {
                Ok(stream) => messages.insert(stream),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            },
        };
        let next = tokio::select! {
            next = stream.next() => next,
            () = stop.cancelled() => return,
            () = shared.closing.cancelled() => return,
        };
        let message = match next {
            Some(Ok(message)) => message,
            failed => {
                if !still_holds(&shared, &id).await {
                    // Taken over (this worker was taken for dead): the
                    // record names another making; this instance gets no
                    // more calls.
                    lock(&shared.local).remove(&id);
                    return;
                }
                if failed.is_none() {
                    messages = None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut leases = Vec::new();
        let mut forget = Vec::new();
        take(&shared, message, &mut leases, &mut forget).await;
        let sent = !leases.is_empty();
        if sent && shared.inbox.send(ToWorker::Run(leases)).is_err() {
            return;
        }
        if !forget.is_empty() {
            let _ = shared.inbox.send(ToWorker::Forget(forget));
        }
        if sent {
            tokio::select! {
                () = turn.notified() => {}
                () = stop.cancelled() => return,
                () = shared.closing.cancelled() => return,
            }
        }
    }
}

/// Whether actor `id`'s record still names this worker (true when it
/// cannot be read: the server may be away).
async fn still_holds(shared: &Shared, id: &str) -> bool {
    let me = lock(&shared.beat).status.worker_id.clone();
    match shared.actors.record(id).await {
        Ok(Some((record, _))) => {
            record.state == RecordState::Alive && record.worker.as_ref().is_some_and(|w| w.0 == me)
        }
        Ok(None) => false,
        Err(_) => true,
    }
}

/// Actor `id` is gone for `why`: its calls' consumer goes, its record is
/// forgotten (`forget`) or marked dead, and every call waiting for it is
/// answered.
async fn end_actor(shared: &Shared, id: &str, why: &str, forget: bool) {
    let store = &shared.actors;
    let Ok(Some((mut record, revision))) = store.record(id).await else {
        return;
    };
    let _ = store
        .calls
        .delete_consumer(&actors::consumer_name(id, record.restarts))
        .await;
    if forget {
        store.forget(&record).await;
    } else {
        record.state = RecordState::Dead(why.to_owned());
        record.worker = None;
        let _ = store.replace(&record, revision).await;
    }
    answer_all(shared, actors::drain(store, &shared.blobs, id, why).await).await;
}

/// Stores answers for the tasks that asked, by their subject.
async fn answer_all(shared: &Shared, answers: Vec<(String, Done)>) {
    let mut by_reply: HashMap<String, Vec<(u64, Done)>> = HashMap::new();
    for (reply, done) in answers {
        by_reply.entry(reply).or_default().push((0, done));
    }
    for (reply, answers) in by_reply {
        finish_all(shared, &reply, answers).await;
    }
}

/// Takes over actor `id` from `worker`, which is done with it (a call
/// killed it) or died (`died`: its pid, and the call it was running fails
/// with [`TaskErrorKind::WorkerDied`]): makes it again by its constructor
/// while it has restarts left, else marks it dead and answers what waits.
/// Compare-and-set, so of the workers that notice, one acts.
async fn claim(shared: &Shared, id: &str, worker: &str, why: &str, died: Option<u32>) {
    let store = &shared.actors;
    for _ in 0..16 {
        let Ok(Some((record, revision))) = store.record(id).await else {
            return;
        };
        let held_by = record.worker.as_ref().map(|w| w.0.as_str());
        if record.state != RecordState::Alive || held_by != Some(worker) {
            return;
        }
        let mut next = record.clone();
        next.worker = None;
        if record.restarts < record.max_restarts {
            next.restarts += 1;
            next.state = RecordState::Creating;
        } else {
            next.state = RecordState::Dead(why.to_owned());
        }
        match store.replace(&next, revision).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(_) => return,
        }
        let running = match died {
            Some(_) => actors::take_running_call(store, &shared.blobs, &record).await,
            None => {
                let name = actors::consumer_name(id, record.restarts);
                let _ = store.calls.delete_consumer(&name).await;
                None
            }
        };
        if let Some(task) = running {
            let done = actors::refused(
                &task,
                TaskErrorKind::WorkerDied,
                format!("actor {id} is dead: {why}"),
            );
            answer_all(shared, vec![(task.reply.clone(), done)]).await;
        }
        if next.state == RecordState::Creating {
            let mut constructor = record.constructor.clone();
            if let Some(ActorOp::Create { restarts, .. }) = &mut constructor.submission.actor {
                *restarts = next.restarts;
            }
            constructor.reply = String::new();
            constructor.attempts_before = 0;
            constructor.bounces = 0;
            let dedup = format!("{id}:restart{}", next.restarts);
            let mut nats = shared.nats.clone();
            let failed =
                publish_tasks(&mut nats, &shared.blobs, vec![(vec![constructor], dedup)]).await;
            if let Some(done) = failed.into_iter().next() {
                let why = done
                    .output
                    .result
                    .err()
                    .map_or_else(String::new, |e| e.message);
                end_actor(shared, id, &format!("making it again failed: {why}"), false).await;
            }
        } else {
            answer_all(shared, actors::drain(store, &shared.blobs, id, why).await).await;
        }
        return;
    }
}

/// Takes over the alive actors whose worker no longer announces itself:
/// its heartbeat, read by key (a listing can come back short while the
/// server is busy), gone at two looks in a row.
async fn watch_actors(shared: &Shared, workers: &kv::Store) {
    let Ok(records) = shared.actors.all().await else {
        return;
    };
    let me = lock(&shared.beat).status.worker_id.clone();
    let mut missing = std::collections::HashSet::new();
    for (record, _) in records {
        if record.state != RecordState::Alive {
            continue;
        }
        let Some((worker, _, pid)) = &record.worker else {
            continue;
        };
        if *worker == me || missing.contains(worker) {
            continue;
        }
        let gone = match workers.entry(sanitize(worker)).await {
            Ok(None) => true,
            Ok(Some(entry)) => entry.operation != kv::Operation::Put,
            Err(_) => false,
        };
        if !gone {
            continue;
        }
        missing.insert(worker.clone());
        if lock(&shared.suspects).contains(worker) {
            let why = format!("its worker {worker} (pid {pid}) died");
            claim(shared, &record.id, worker, &why, Some(*pid)).await;
        }
    }
    *lock(&shared.suspects) = missing;
}

/// Writes this worker's actors' call counts to their records, for `wtrace
/// actor list`.
async fn flush_calls(shared: &Shared) {
    let counts: Vec<(String, u64)> = lock(&shared.local)
        .iter()
        .filter(|(_, a)| a.calls != a.flushed)
        .map(|(id, a)| (id.clone(), a.calls))
        .collect();
    for (id, calls) in counts {
        for _ in 0..4 {
            let Ok(Some((mut record, revision))) = shared.actors.record(&id).await else {
                break;
            };
            if record.state != RecordState::Alive {
                break;
            }
            record.calls = calls;
            if let Ok(true) = shared.actors.replace(&record, revision).await {
                if let Some(actor) = lock(&shared.local).get_mut(&id) {
                    actor.flushed = calls;
                }
                break;
            }
        }
    }
}

async fn results_loop(shared: Arc<Shared>, mut results: consumer::pull::Ordered) {
    loop {
        let message = tokio::select! {
            message = results.next() => message,
            () = shared.closing.cancelled() => return,
        };
        let Some(message) = message else { return };
        let Ok(message) = message else { continue };
        match decode::<Vec<Done>>(&message.payload, &shared.blobs, true).await {
            Ok(results) => {
                if shared.inbox.send(ToWorker::Results(results)).is_err() {
                    return;
                }
            }
            Err(why) => eprintln!("wtrace worker: a nested result could not be read: {why}"),
        }
    }
}

async fn control_loop(shared: Arc<Shared>, mut control: async_nats::Subscriber) {
    tokio::select! {
        message = control.next() => {
            if message.is_some() {
                let _ = shared.inbox.send(ToWorker::Shutdown);
            }
        }
        () = shared.closing.cancelled() => {}
    }
}

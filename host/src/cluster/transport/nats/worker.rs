//! A worker's link over NATS: it pulls tasks from the shared consumer as far
//! as its credit goes, keeps each message until the task's result is stored,
//! and announces itself with a heartbeat.

use std::collections::{HashMap, VecDeque};
use std::future::IntoFuture as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, kv, object_store};
use futures::StreamExt as _;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::driver::{PACK_MAX, open_results, pack, publish_tasks};
use super::{
    CONTROL_SUBJECT, HEARTBEAT_EVERY, Heartbeat, Nats, PROGRESS_EVERY, TASKS_STREAM, TaskMessage,
    WORKERS_CONSUMER, connect, decode, encode, get_blob,
};
use crate::capabilities::provider::WorkerInfo;
use crate::cluster::messages::{
    ClusterConfig, ComponentRef, Done, FromWorker, Lease, ToWorker, WORKER_COMPONENTS, WorkerStatus,
};
use crate::cluster::transport::{Credentials, WorkerLink};
use crate::error::{Error, Result};
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
    });
    beat(&shared, &workers, &key).await;
    tokio::spawn(fetch_loop(shared.clone(), consumer));
    tokio::spawn(results_loop(shared.clone(), results));
    tokio::spawn(control_loop(shared.clone(), control));
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
    loop {
        tokio::select! {
            _ = beats.tick() => beat(&shared, &workers, &key).await,
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
    shared: &Shared,
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
    for task in tasks {
        match lease(shared, packet, task, forget).await {
            Ok(lease) => leases.push(lease),
            Err(failure) => {
                let (reply, done) = *failure;
                failed.entry(reply).or_default().push((packet, done));
            }
        }
    }
    for (reply, finished) in failed {
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
    let digest = submission.component.clone();
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
                has.push_back(digest.clone());
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
    lock(&shared.names).insert(digest.clone(), task.component_name.clone());
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
        actor: None,
    };
    {
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
                // Should this acknowledgement be lost, the tasks run again
                // and their second results are dropped by their drivers. It
                // goes out on the connection that just stored the results.
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
            return;
        }
    }
    eprintln!(
        "wtrace worker: could not store {} results; their tasks will run again",
        results.len()
    );
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
                let stored = by_reply
                    .into_iter()
                    .map(|(reply, finished)| finish_all(shared, reply, finished));
                futures::future::join_all(stored).await;
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
                let _ = shared.inbox.send(ToWorker::Blob(digest.clone(), bytes));
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
    let tasks = tasks
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
    rejected.extend(publish_tasks(&mut nats, &shared.blobs, pack(tasks)).await);
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

//! Actors on NATS, where no head routes their calls: the streams and
//! buckets do.
//!
//! - An actor's record (class, component, constructor, restarts, worker,
//!   state) is an entry of [`ACTORS`] under its id; a name maps to the id in
//!   [`ACTOR_NAMES`], made with `create`, so two actors never share one.
//! - Its creation is a task like any other on the task stream: the worker
//!   that takes it (one with room for another actor) makes the actor, marks
//!   the record alive with its own id, and reads the actor's calls.
//! - Calls and kills go to the work-queue stream [`CALLS_STREAM`], on the
//!   actor's own subject, so they keep the order the server got them in; the
//!   actor's worker reads them through a consumer of its own, one at a time,
//!   acknowledging each once its result is stored.
//! - A worker that dies stops renewing its heartbeat: a live worker that
//!   finds an alive actor whose worker no longer announces itself claims the
//!   record (compare-and-set), fails the call that was running, and makes
//!   the actor again by its constructor or marks it dead and fails what waits.
//! - A call sent to an actor that died meanwhile is taken back from the
//!   stream by its sender and failed there: nothing waits for an actor that
//!   is gone.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, object_store, stream};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

use super::{Nats, TaskMessage, decode, encode};
use crate::capabilities::tasks::FoundActor;
use crate::cluster::messages::{ActorLimits, ActorOp, ActorStatus, Done};
use crate::error::{Error, Result};
use crate::outcome::{TaskError, TaskErrorKind, TaskOutput};
use crate::runtime::Digest;

/// The key-value bucket of actor records, by id.
pub const ACTORS: &str = "wtrace-actors";
/// The key-value bucket of actor ids, by name.
pub const ACTOR_NAMES: &str = "wtrace-actor-names";
/// The work-queue stream of actor calls, on `wtrace.actor.<id>`.
pub const CALLS_STREAM: &str = "WTRACE_ACTOR_CALLS";

/// The subject of actor `id`'s calls.
pub(super) fn calls_subject(id: &str) -> String {
    format!("wtrace.actor.{id}")
}

/// The consumer of actor `id`'s calls for its `restarts`-th making: a new
/// one each time, so nothing of a dead worker's delivery state carries over.
pub(super) fn consumer_name(id: &str, restarts: u32) -> String {
    format!("actor-{id}-{restarts}")
}

/// Whether an actor id or name can be a key and a subject token.
fn valid_key(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 200
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Where an actor is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum RecordState {
    Creating,
    Alive,
    Dead(String),
}

/// An actor as the cluster knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ActorRecord {
    pub id: String,
    pub name: Option<String>,
    pub class: String,
    pub component: Digest,
    pub component_name: String,
    /// The task that made it first, to make it again.
    pub constructor: TaskMessage,
    pub max_restarts: u32,
    pub restarts: u32,
    /// Its worker, that worker's node and pid.
    pub worker: Option<(String, String, u32)>,
    /// Method calls it finished (as its worker last wrote them).
    pub calls: u64,
    pub state: RecordState,
}

impl ActorRecord {
    pub(crate) fn status(&self) -> ActorStatus {
        ActorStatus {
            id: self.id.clone(),
            name: self.name.clone(),
            class: self.class.clone(),
            component: self.component_name.clone(),
            digest: self.component,
            worker: self.worker.clone(),
            calls: self.calls,
            restarts: self.restarts,
            state: match &self.state {
                RecordState::Creating => "creating".into(),
                RecordState::Alive => "alive".into(),
                RecordState::Dead(why) => format!("dead: {why}"),
            },
        }
    }

    fn json(&self) -> tokio_util::bytes::Bytes {
        serde_json::to_vec(self)
            .expect("a record serializes")
            .into()
    }
}

/// The buckets and stream actors live in.
#[derive(Clone)]
pub(crate) struct ActorStore {
    pub records: kv::Store,
    pub names: kv::Store,
    pub calls: jetstream::stream::Stream,
}

impl std::fmt::Debug for ActorStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ActorStore")
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Cluster(format!("{what}: {e}"))
}

impl Nats {
    /// Makes the actors' buckets and stream anew: a new cluster starts with
    /// no actors (those of one that stopped died with its workers).
    pub(crate) async fn create_actor_store(&self) -> std::result::Result<(), String> {
        let _ = self.js.delete_key_value(ACTORS).await;
        let _ = self.js.delete_key_value(ACTOR_NAMES).await;
        let _ = self.js.delete_stream(CALLS_STREAM).await;
        self.bucket(ACTORS, Duration::ZERO).await?;
        self.bucket(ACTOR_NAMES, Duration::ZERO).await?;
        self.js
            .get_or_create_stream(stream::Config {
                name: CALLS_STREAM.into(),
                subjects: vec!["wtrace.actor.*".into()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// The actors' buckets and stream, as the head made them.
    pub(crate) async fn actor_store(&self) -> Result<ActorStore> {
        let open = |e: &dyn std::fmt::Display| {
            failed(
                "cannot open the cluster's actors on NATS (was it started by this wtrace?)",
                e,
            )
        };
        Ok(ActorStore {
            records: self.js.get_key_value(ACTORS).await.map_err(|e| open(&e))?,
            names: self
                .js
                .get_key_value(ACTOR_NAMES)
                .await
                .map_err(|e| open(&e))?,
            calls: self
                .js
                .get_stream(CALLS_STREAM)
                .await
                .map_err(|e| open(&e))?,
        })
    }
}

impl ActorStore {
    /// The record of actor `id` and its revision; none once it is gone.
    pub(crate) async fn record(&self, id: &str) -> Result<Option<(ActorRecord, u64)>> {
        let entry = self
            .records
            .entry(id)
            .await
            .map_err(|e| failed(&format!("cannot read actor {id}"), e))?;
        Ok(match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let record = serde_json::from_slice(&entry.value).map_err(|e| {
                    failed(
                        &format!("actor {id}'s record is unreadable (use the same wtrace build everywhere)"),
                        e,
                    )
                })?;
                Some((record, entry.revision))
            }
            _ => None,
        })
    }

    /// Every actor's record.
    pub(crate) async fn all(&self) -> Result<Vec<(ActorRecord, u64)>> {
        let mut keys = self
            .records
            .keys()
            .await
            .map_err(|e| failed("cannot list the cluster's actors", e))?;
        let mut ids = Vec::new();
        while let Some(key) = keys.next().await {
            if let Ok(key) = key {
                ids.push(key);
            }
        }
        let mut records = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(record) = self.record(&id).await? {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// Writes `record` if it is still at `revision`: false when someone
    /// else changed it first.
    pub(crate) async fn replace(&self, record: &ActorRecord, revision: u64) -> Result<bool> {
        match self
            .records
            .update(&record.id, record.json(), revision)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(failed(&format!("cannot write actor {}", record.id), e)),
        }
    }

    /// Forgets actor `record`, and its name.
    pub(crate) async fn forget(&self, record: &ActorRecord) {
        if let Some(name) = &record.name {
            let _ = self.names.delete(name).await;
        }
        let _ = self.records.delete(&record.id).await;
    }

    /// The id `given` names: an actor's name, or its id.
    async fn resolve(&self, given: &str) -> Result<String> {
        if !valid_key(given) {
            return Ok(given.to_owned());
        }
        match self.names.get(given).await {
            Ok(Some(id)) => Ok(String::from_utf8_lossy(&id).into_owned()),
            Ok(None) => Ok(given.to_owned()),
            Err(e) => Err(failed("cannot read the actors' names", e)),
        }
    }

    /// The statuses of every actor, sorted by id.
    pub(crate) async fn statuses(&self) -> Vec<ActorStatus> {
        let mut actors: Vec<ActorStatus> = self
            .all()
            .await
            .unwrap_or_default()
            .iter()
            .map(|(record, _)| record.status())
            .collect();
        actors.sort_by(|a, b| a.id.cmp(&b.id));
        actors
    }
}

/// A result for a task that did not run: `kind` and `why`.
pub(super) fn refused(task: &TaskMessage, kind: TaskErrorKind, why: String) -> Done {
    Done {
        id: task.submission.tag,
        pid: 0,
        busy_us: 0,
        output: TaskOutput::failed(TaskError::new(kind, &task.submission.function, why)),
    }
}

fn answered(task: &TaskMessage, result: String) -> Done {
    Done {
        id: task.submission.tag,
        pid: 0,
        busy_us: 0,
        output: TaskOutput::answered(Ok(result)),
    }
}

/// Sends an actor submission on its way: a creation to the task stream
/// (the record made first), a call or kill to its actor's calls. Returns
/// the answer when there is one at once: a refusal, a lookup's answer, the
/// kill of a dead actor, or a call taken back from an actor that died.
pub(super) async fn submit(
    nats: &mut Nats,
    store: &ActorStore,
    blobs: &object_store::ObjectStore,
    limits: ActorLimits,
    task: TaskMessage,
) -> Option<Done> {
    let Some(op) = task.submission.actor.clone() else {
        return Some(refused(
            &task,
            TaskErrorKind::Cluster,
            "not an actor submission".into(),
        ));
    };
    let cluster =
        |task: &TaskMessage, e: Error| refused(task, TaskErrorKind::Cluster, e.to_string());
    match &op {
        ActorOp::Create {
            id,
            name,
            max_restarts,
            ..
        } => {
            let name = name.clone();
            match create(nats, store, blobs, limits, &task, id, name, *max_restarts).await {
                Ok(()) => None,
                Err(done) => Some(*done),
            }
        }
        ActorOp::Call { .. } | ActorOp::Kill { .. } => {
            send_calls(nats, store, blobs, vec![task]).await.pop()
        }
        ActorOp::Find { id: given } => {
            let id = match store.resolve(given).await {
                Ok(id) => id,
                Err(e) => return Some(cluster(&task, e)),
            };
            match store.record(&id).await {
                Ok(Some((record, _))) if valid_key(&id) => {
                    let found = FoundActor {
                        id: record.id,
                        class: record.class,
                        component: record.component,
                        component_name: record.component_name,
                    };
                    let json = serde_json::to_string(&found).expect("serializes");
                    Some(answered(&task, json))
                }
                Ok(_) => Some(refused(&task, TaskErrorKind::Cluster, no_such(given))),
                Err(e) => Some(cluster(&task, e)),
            }
        }
    }
}

fn no_such(given: &str) -> String {
    format!("no actor {given:?} in this cluster (see `wtrace actor list`)")
}

/// [`submit`] for many submissions in order: calls sent one after another
/// travel together, each actor's in the order given.
pub(super) async fn submit_all(
    nats: &mut Nats,
    store: &ActorStore,
    blobs: &object_store::ObjectStore,
    limits: ActorLimits,
    tasks: Vec<TaskMessage>,
) -> Vec<Done> {
    let mut answers = Vec::new();
    let mut calls = Vec::new();
    for task in tasks {
        if matches!(task.submission.actor, Some(ActorOp::Call { .. })) {
            calls.push(task);
            continue;
        }
        answers.extend(send_calls(nats, store, blobs, std::mem::take(&mut calls)).await);
        answers.extend(submit(nats, store, blobs, limits, task).await);
    }
    answers.extend(send_calls(nats, store, blobs, calls).await);
    answers
}

/// Records actor `id` and sends its creation to the task stream.
#[allow(clippy::too_many_arguments)]
async fn create(
    nats: &mut Nats,
    store: &ActorStore,
    blobs: &object_store::ObjectStore,
    limits: ActorLimits,
    task: &TaskMessage,
    id: &str,
    name: Option<String>,
    max_restarts: u32,
) -> std::result::Result<(), Box<Done>> {
    let refuse = |kind, why: String| Err(Box::new(refused(task, kind, why)));
    let cluster = |e: Error| {
        Err(Box::new(refused(
            task,
            TaskErrorKind::Cluster,
            e.to_string(),
        )))
    };
    if !valid_key(id) || name.as_deref().is_some_and(|n| !valid_key(n)) {
        return refuse(
            TaskErrorKind::Cluster,
            "actor ids and names on a NATS cluster are 1 to 200 letters, digits, '-' and '_'"
                .into(),
        );
    }
    let live = match store.all().await {
        Ok(all) => all
            .iter()
            .filter(|(r, _)| !matches!(r.state, RecordState::Dead(_)))
            .count(),
        Err(e) => return cluster(e),
    };
    if live >= limits.per_cluster as usize {
        return refuse(
            TaskErrorKind::ActorLimit,
            format!(
                "the cluster holds {live} actors, as many as --max-actors allows ({}); kill one \
                 (`wtrace actor kill ID`) or start the cluster with a higher --max-actors",
                limits.per_cluster
            ),
        );
    }
    let class = task
        .submission
        .function
        .strip_suffix(".new")
        .unwrap_or(&task.submission.function)
        .to_owned();
    let record = ActorRecord {
        id: id.to_owned(),
        name: name.clone(),
        class,
        component: task.submission.component,
        component_name: task.component_name.clone(),
        constructor: task.clone(),
        max_restarts,
        restarts: 0,
        worker: None,
        calls: 0,
        state: RecordState::Creating,
    };
    match store.records.create(id, record.json()).await {
        Ok(_) => {}
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            return refuse(
                TaskErrorKind::Cluster,
                format!("an actor {id:?} exists already"),
            );
        }
        Err(e) => return cluster(failed("cannot record the actor", e)),
    }
    if let Some(name) = &name {
        let taken = match store
            .names
            .create(name, id.as_bytes().to_vec().into())
            .await
        {
            Ok(_) => None,
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Some(format!(
                "an actor named {name:?} exists already; pick another --name, or `wtrace actor \
                 kill {name}` first"
            )),
            Err(e) => Some(format!("cannot record the actor's name: {e}")),
        };
        if let Some(why) = taken {
            let _ = store.records.delete(id).await;
            return refuse(TaskErrorKind::Cluster, why);
        }
    }
    let dedup = format!("{}:0", task.submission.task_id);
    let failed = super::driver::publish_tasks(nats, blobs, vec![(vec![task.clone()], dedup)]).await;
    if let Some(done) = failed.into_iter().next() {
        store.forget(&record).await;
        return Err(Box::new(done));
    }
    Ok(())
}

/// Puts calls and kills on their actors' subjects, each actor's in the
/// order given, and answers those that cannot go: no such actor, a dead one
/// (whose kill succeeds), or one that died before its call landed (taken
/// back from the stream; if it was already read, whoever read it answers).
async fn send_calls(
    nats: &mut Nats,
    store: &ActorStore,
    blobs: &object_store::ObjectStore,
    tasks: Vec<TaskMessage>,
) -> Vec<Done> {
    let mut answers = Vec::new();
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut records: HashMap<String, Option<ActorRecord>> = HashMap::new();
    let mut by_actor: Vec<(String, Vec<TaskMessage>)> = Vec::new();
    for mut task in tasks {
        let Some(op) = task.submission.actor.clone() else {
            continue;
        };
        let given = op.id().to_owned();
        let id = match ids.get(&given) {
            Some(id) => id.clone(),
            None => match store.resolve(&given).await {
                Ok(id) => {
                    ids.insert(given.clone(), id.clone());
                    id
                }
                Err(e) => {
                    answers.push(refused(&task, TaskErrorKind::Cluster, e.to_string()));
                    continue;
                }
            },
        };
        if !records.contains_key(&id) {
            let record = match store.record(&id).await {
                Ok(record) => record.map(|(record, _)| record),
                Err(e) => {
                    answers.push(refused(&task, TaskErrorKind::Cluster, e.to_string()));
                    continue;
                }
            };
            records.insert(id.clone(), record.filter(|_| valid_key(&id)));
        }
        let Some(record) = &records[&id] else {
            answers.push(refused(&task, TaskErrorKind::Cluster, no_such(&given)));
            continue;
        };
        let kill = matches!(op, ActorOp::Kill { .. });
        if let RecordState::Dead(why) = &record.state {
            if kill {
                store.forget(record).await;
                answers.push(answered(&task, String::new()));
            } else {
                let why = format!("actor {id} is dead: {why}");
                answers.push(refused(&task, TaskErrorKind::ActorDead, why));
            }
            continue;
        }
        task.submission.component = record.component;
        task.component_name = record.component_name.clone();
        task.submission.actor = Some(if kill {
            ActorOp::Kill { id: id.clone() }
        } else {
            ActorOp::Call { id: id.clone() }
        });
        match by_actor.iter_mut().find(|(actor, _)| *actor == id) {
            Some((_, tasks)) => tasks.push(task),
            None => by_actor.push((id, vec![task])),
        }
    }
    for (id, tasks) in by_actor {
        let sent = publish_calls(nats, blobs, &id, tasks, &mut answers).await;
        // Its actor may have died before the calls landed: then no one
        // reads them.
        let why = match store.record(&id).await {
            Ok(Some((record, _))) => match record.state {
                RecordState::Dead(why) => format!("actor {id} is dead: {why}"),
                _ => continue,
            },
            Ok(None) => format!("actor {id} is gone: it was killed"),
            Err(_) => continue,
        };
        for (task, sequence) in sent {
            if let Ok(true) = store.calls.delete_message(sequence).await {
                answers.push(refused(&task, TaskErrorKind::ActorDead, why.clone()));
            }
        }
    }
    answers
}

/// Publishes `tasks` on actor `id`'s subject in order, waiting for their
/// acknowledgements together: each with its stream sequence. Those the
/// server does not take at once are published again one by one while it is
/// away; those refused for good are answered.
async fn publish_calls(
    nats: &mut Nats,
    blobs: &object_store::ObjectStore,
    id: &str,
    tasks: Vec<TaskMessage>,
    answers: &mut Vec<Done>,
) -> Vec<(TaskMessage, u64)> {
    let subject = calls_subject(id);
    let mut pending = Vec::with_capacity(tasks.len());
    for task in tasks {
        let dedup = format!("{}:0", task.submission.task_id);
        match encode(&vec![task.clone()], blobs, || format!("payload/{dedup}")).await {
            Ok(payload) => pending.push((task, dedup, payload)),
            Err(e) => answers.push(refused(&task, TaskErrorKind::Cluster, e.to_string())),
        }
    }
    let mut acks = Vec::with_capacity(pending.len());
    for (task, dedup, payload) in pending {
        let message = jetstream::message::PublishMessage::build()
            .payload(payload.clone())
            .message_id(dedup.as_str());
        let sent = tokio::time::timeout(
            super::REQUEST_TIMEOUT,
            nats.js.send_publish(subject.clone(), message),
        )
        .await;
        acks.push((task, dedup, payload, sent.ok().and_then(Result::ok)));
    }
    let (waiting, futures): (Vec<_>, Vec<_>) = acks
        .into_iter()
        .map(|(task, dedup, payload, ack)| {
            let ack = async move {
                let ack = ack?;
                let acked = tokio::time::timeout(
                    super::REQUEST_TIMEOUT,
                    std::future::IntoFuture::into_future(ack),
                )
                .await;
                acked.ok()?.ok().map(|ack| ack.sequence)
            };
            ((task, dedup, payload), ack)
        })
        .unzip();
    let acked = futures::future::join_all(futures).await;
    let mut sent = Vec::with_capacity(waiting.len());
    for ((task, dedup, payload), sequence) in waiting.into_iter().zip(acked) {
        let sequence = match sequence {
            Some(sequence) => Ok(sequence),
            // The de-duplication id keeps it from being stored twice.
            None => publish_one(nats, &subject, payload, &dedup).await,
        };
        match sequence {
            Ok(sequence) => sent.push((task, sequence)),
            Err(why) => answers.push(refused(
                &task,
                TaskErrorKind::Cluster,
                format!("NATS did not store the call: {why}"),
            )),
        }
    }
    sent
}

/// How long a publish is retried while the server is away.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(60);

/// Publishes one message and waits until the stream has it: its sequence.
async fn publish_one(
    nats: &mut Nats,
    subject: &str,
    payload: tokio_util::bytes::Bytes,
    dedup: &str,
) -> std::result::Result<u64, String> {
    let deadline = tokio::time::Instant::now() + PUBLISH_PATIENCE;
    let mut backoff = Duration::from_millis(100);
    loop {
        let message = jetstream::message::PublishMessage::build()
            .payload(payload.clone())
            .message_id(dedup);
        let sent = tokio::time::timeout(
            super::REQUEST_TIMEOUT,
            nats.js.send_publish(subject.to_owned(), message),
        )
        .await;
        let why = match sent {
            Ok(Ok(ack)) => {
                match tokio::time::timeout(
                    super::REQUEST_TIMEOUT,
                    std::future::IntoFuture::into_future(ack),
                )
                .await
                {
                    Ok(Ok(ack)) => return Ok(ack.sequence),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "no acknowledgement".into(),
                }
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".into(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(why);
        }
        if let Ok(fresh) = nats.fresh().await {
            *nats = fresh;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Takes every call waiting for actor `id` off its subject and answers it:
/// kills succeed (the actor is gone either way), calls fail with `why`.
/// Returns the answers by the subject they go to. No consumer of the
/// actor's may exist meanwhile (the stream allows one per subject).
pub(super) async fn drain(
    store: &ActorStore,
    blobs: &object_store::ObjectStore,
    id: &str,
    why: &str,
) -> Vec<(String, Done)> {
    let mut answers = Vec::new();
    let Ok(consumer) = store
        .calls
        .create_consumer(consumer::pull::Config {
            filter_subject: calls_subject(id),
            ack_policy: consumer::AckPolicy::Explicit,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
    else {
        return answers;
    };
    loop {
        let Ok(mut batch) = consumer
            .fetch()
            .max_messages(64)
            .expires(Duration::from_millis(300))
            .messages()
            .await
        else {
            break;
        };
        let mut any = false;
        while let Some(Ok(message)) = batch.next().await {
            any = true;
            if let Ok(tasks) = decode::<Vec<TaskMessage>>(&message.payload, blobs, false).await {
                for task in tasks {
                    let done = match task.submission.actor {
                        Some(ActorOp::Kill { .. }) => answered(&task, String::new()),
                        _ => refused(
                            &task,
                            TaskErrorKind::ActorDead,
                            format!("actor {id} is dead: {why}"),
                        ),
                    };
                    answers.push((task.reply.clone(), done));
                }
            }
            super::discard_spilled(blobs, &message.payload).await;
            let _ = message.ack().await;
        }
        if !any {
            break;
        }
    }
    let info = consumer.cached_info();
    let _ = store.calls.delete_consumer(&info.name).await;
    answers
}

/// Ends actor `record`'s calls consumer, and takes off the stream the call
/// its worker was running when it died: the oldest left on the actor's
/// subject, when the consumer had delivered calls not yet acknowledged
/// (calls are acknowledged in order, each once its result is stored).
pub(super) async fn take_running_call(
    store: &ActorStore,
    blobs: &object_store::ObjectStore,
    record: &ActorRecord,
) -> Option<TaskMessage> {
    let name = consumer_name(&record.id, record.restarts);
    let delivered = match store
        .calls
        .get_consumer::<consumer::pull::Config>(&name)
        .await
    {
        Ok(mut consumer) => consumer
            .info()
            .await
            .is_ok_and(|info| info.num_ack_pending > 0),
        Err(_) => false,
    };
    let _ = store.calls.delete_consumer(&name).await;
    if !delivered {
        return None;
    }
    let oldest = store
        .calls
        .create_consumer(consumer::pull::Config {
            filter_subject: calls_subject(&record.id),
            ack_policy: consumer::AckPolicy::Explicit,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .ok()?;
    let mut batch = oldest
        .fetch()
        .max_messages(1)
        .expires(Duration::from_millis(500))
        .messages()
        .await
        .ok()?;
    let message = batch.next().await.and_then(Result::ok);
    let _ = store
        .calls
        .delete_consumer(&oldest.cached_info().name)
        .await;
    let message = message?;
    let mut tasks = decode::<Vec<TaskMessage>>(&message.payload, blobs, false)
        .await
        .ok()?;
    let _ = message.ack().await;
    super::discard_spilled(blobs, &message.payload).await;
    tasks.pop()
}

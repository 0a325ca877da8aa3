//! A driver's link over NATS: uploads go to the object store, submissions to
//! the task stream, results come from the driver's own subject of the
//! results stream.

use std::collections::HashMap;
use std::future::IntoFuture as _;
use std::time::Duration;

use async_nats::jetstream::{consumer, object_store};
use futures::StreamExt as _;
use tokio::sync::{mpsc, oneshot};

use super::{
    CONTROL_SUBJECT, ConfigEntry, JOBS, Nats, RESULTS_STREAM, TaskMessage, connect, decode,
    get_blob, live_workers, put_blob,
};
use crate::cluster::messages::{
    ClusterStatus, DetachedJob, Done, FromDriver, Submission, ToDriver,
};
use crate::cluster::transport::{Credentials, DriverLink};
use crate::error::{Error, Result};
use crate::ids::random_hex;
use crate::outcome::{TaskError, TaskErrorKind, TaskOutput};
use crate::runtime::Digest;

/// A driver's link; with `job`, reattached to that detached job: its
/// results, kept in the stream, are read from the first.
pub(crate) async fn connect_driver(
    servers: &[String],
    tls: bool,
    credentials: &Credentials,
    job: Option<&str>,
) -> Result<DriverLink> {
    let nats = connect(servers, tls, credentials, "wtrace driver").await?;
    let entry = nats.config(&servers.join(",")).await?;
    let blobs = nats.blobs().await?;
    let (key, detached) = match job {
        Some(job) => (job.to_owned(), Some(read_job(&nats, job).await?)),
        None => (format!("j-{}", random_hex(8)), None),
    };
    let subject = format!("wtrace.results.{key}");
    let results = open_results(&nats, &subject).await?;
    let (tx, requests) = mpsc::unbounded_channel();
    let (replies, rx) = mpsc::unbounded_channel();
    let (_lost_tx, lost) = oneshot::channel();
    tokio::spawn(read_results(results, blobs.clone(), replies.clone()));
    let config = entry.config.clone();
    tokio::spawn(serve_requests(
        nats,
        blobs,
        entry,
        key.clone(),
        requests,
        replies,
    ));
    Ok(DriverLink {
        config,
        tx,
        rx,
        lost,
        job: Some(key),
        detached,
    })
}

/// The tasks of the detached `job`.
async fn read_job(nats: &Nats, job: &str) -> Result<DetachedJob> {
    let no_such = |cause: String| Error::NoSuchJob {
        job: job.to_owned(),
        cause,
    };
    if job.is_empty()
        || !job
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(no_such(
            "a job id is letters, digits and dashes, as `wtrace submit --detach` printed it".into(),
        ));
    }
    let kept = "a job's results are kept 24 hours after it was submitted; check the id \
                `wtrace submit --detach` printed";
    let jobs = nats
        .js
        .get_key_value(JOBS)
        .await
        .map_err(|_| no_such(format!("this cluster has no detached jobs; {kept}")))?;
    let bytes = jobs
        .get(job)
        .await
        .map_err(|e| Error::Cluster(format!("cannot read job {job}: {e}")))?
        .ok_or_else(|| no_such(kept.into()))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::Cluster(format!(
            "job {job} is unreadable ({e}); use the same wtrace build everywhere"
        ))
    })
}

/// Writes `job`'s tasks under `key`.
async fn write_job(nats: &Nats, key: &str, job: &DetachedJob) -> std::result::Result<(), String> {
    let jobs = nats.bucket(JOBS, super::RESULTS_KEPT).await?;
    let json = serde_json::to_vec(job).expect("a job serializes");
    jobs.put(key, json.into())
        .await
        .map(|_| ())
        .map_err(|e| format!("cannot store the job on NATS: {e}"))
}

/// The ordered consumer of the results sent to `subject`.
pub(super) async fn open_results(nats: &Nats, subject: &str) -> Result<consumer::pull::Ordered> {
    let stream = nats
        .js
        .get_stream(RESULTS_STREAM)
        .await
        .map_err(|e| Error::Cluster(format!("cannot open the results stream: {e}")))?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::Cluster(format!("cannot read results: {e}")))?;
    consumer
        .messages()
        .await
        .map_err(|e| Error::Cluster(format!("cannot read results: {e}")))
}

async fn read_results(
    mut results: consumer::pull::Ordered,
    blobs: object_store::ObjectStore,
    replies: mpsc::UnboundedSender<ToDriver>,
) {
    while let Some(message) = results.next().await {
        let Ok(message) = message else {
            // Missed heartbeats while the server restarts: the ordered
            // consumer recreates itself.
            continue;
        };
        match decode::<Vec<Done>>(&message.payload, &blobs, true).await {
            Ok(results) => {
                if replies.send(ToDriver::Results(results)).is_err() {
                    return;
                }
            }
            Err(why) => eprintln!("wtrace: a result could not be read: {why}"),
        }
    }
}

async fn serve_requests(
    mut nats: Nats,
    blobs: object_store::ObjectStore,
    entry: ConfigEntry,
    key: String,
    mut requests: mpsc::UnboundedReceiver<FromDriver>,
    replies: mpsc::UnboundedSender<ToDriver>,
) {
    let subject = format!("wtrace.results.{key}");
    let mut names: HashMap<Digest, String> = HashMap::new();
    let mut refused: HashMap<Digest, String> = HashMap::new();
    let mut actors: Option<super::actors::ActorStore> = None;
    let mut held: Option<FromDriver> = None;
    loop {
        let request = match held.take() {
            Some(request) => request,
            None => match requests.recv().await {
                Some(request) => request,
                None => return,
            },
        };
        match request {
            FromDriver::Upload { name, bytes } => {
                let digest = Digest::of(&bytes);
                match put_blob(&blobs, &digest.to_string(), &bytes).await {
                    Ok(()) => {
                        refused.remove(&digest);
                    }
                    Err(error) => {
                        refused.insert(digest, error.to_string());
                    }
                }
                names.insert(digest, name);
            }
            FromDriver::Submit(mut submissions) => {
                // Submissions queued behind this one go with it: many calls
                // sent at once are stored together.
                while let Ok(next) = requests.try_recv() {
                    match next {
                        FromDriver::Submit(more) => submissions.extend(more),
                        other => {
                            held = Some(other);
                            break;
                        }
                    }
                }
                let mut failed = Vec::new();
                let mut tasks = Vec::with_capacity(submissions.len());
                let mut to_actors = Vec::new();
                for submission in submissions {
                    if let Some(why) = refused.get(&submission.component) {
                        failed.push(failed_task(&submission, why.clone()));
                        continue;
                    }
                    let component_name = names
                        .get(&submission.component)
                        .cloned()
                        .unwrap_or_else(|| submission.component.to_string());
                    let id = format!("{}:0", submission.task_id);
                    let task = TaskMessage {
                        submission,
                        component_name,
                        reply: subject.clone(),
                        depth: 0,
                        attempts_before: 0,
                        bounces: 0,
                    };
                    if task.submission.actor.is_some() {
                        to_actors.push(task);
                    } else {
                        tasks.push((task, id));
                    }
                }
                failed.extend(publish_tasks(&mut nats, &blobs, pack(tasks)).await);
                if !to_actors.is_empty() {
                    if actors.is_none() {
                        match nats.actor_store().await {
                            Ok(store) => actors = Some(store),
                            Err(e) => {
                                failed.extend(
                                    to_actors
                                        .iter()
                                        .map(|t| failed_task(&t.submission, e.to_string())),
                                );
                                to_actors.clear();
                            }
                        }
                    }
                    if let Some(store) = &actors {
                        let limits = entry.config.actors;
                        failed.extend(
                            super::actors::submit_all(&mut nats, store, &blobs, limits, to_actors)
                                .await,
                        );
                    }
                }
                if !failed.is_empty() && replies.send(ToDriver::Results(failed)).is_err() {
                    return;
                }
            }
            FromDriver::Status => {
                let status = status(&nats, &entry).await;
                let _ = replies.send(ToDriver::Status(Box::new(status)));
            }
            FromDriver::Shutdown => {
                let _ = nats
                    .client
                    .publish(CONTROL_SUBJECT, "shutdown".into())
                    .await;
                let _ = nats.client.flush().await;
                let (nats, replies) = (nats.clone(), replies.clone());
                tokio::spawn(async move {
                    wait_no_workers(&nats, Duration::from_secs(60)).await;
                    let _ = replies.send(ToDriver::Stopped);
                });
            }
            FromDriver::Fetch(digest) => {
                let bytes = get_blob(&blobs, &digest.to_string()).await.ok().flatten();
                let _ = replies.send(ToDriver::Blob(digest, bytes));
            }
            FromDriver::Detach(job) => {
                // Requests are served in order: every task submitted
                // before is in the stream by now.
                let written = write_job(&nats, &key, &job).await.map(|()| key.clone());
                let _ = replies.send(ToDriver::Detached(written));
            }
        }
    }
}

/// How long a publish is retried while the server is away (restarting,
/// say) before the task fails.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(60);

/// Most tasks in one message of the task stream: a message costs the server
/// a store, a delivery and an acknowledgement whatever it carries, so
/// trivial tasks travel in packs; a worker with less credit than a pack
/// holds puts the rest back on the stream.
pub(super) const PACK_MAX: usize = 16;

/// Packs `tasks` (each with its de-duplication id) into messages: one task
/// each when few are sent at once, so they spread over the workers, up to
/// [`PACK_MAX`] when many are. A message's id names its first task and how
/// many it carries.
pub(super) fn pack(tasks: Vec<(TaskMessage, String)>) -> Vec<(Vec<TaskMessage>, String)> {
    let size = (tasks.len() / 4).clamp(1, PACK_MAX);
    let mut packets = Vec::with_capacity(tasks.len().div_ceil(size));
    let mut tasks = tasks.into_iter().peekable();
    while let Some((first, id)) = tasks.next() {
        let mut packet = vec![first];
        while packet.len() < size
            && let Some((task, _)) = tasks.next()
        {
            packet.push(task);
        }
        let id = format!("{id}+{}", packet.len());
        packets.push((packet, id));
    }
    packets
}

/// A task that failed before any worker took it.
pub(super) fn failed_task(submission: &Submission, why: String) -> Done {
    Done {
        id: submission.tag,
        pid: 0,
        busy_us: 0,
        output: TaskOutput::failed(TaskError::new(
            TaskErrorKind::Cluster,
            &submission.function,
            why,
        )),
    }
}

/// Publishes messages of tasks on the task stream, each with its
/// de-duplication id, and waits until the stream has them all; while the
/// server is away they are published again (the id keeps a message from
/// being stored twice). The tasks of those refused for good come back as
/// failed results.
pub(super) async fn publish_tasks(
    nats: &mut Nats,
    blobs: &object_store::ObjectStore,
    packets: Vec<(Vec<TaskMessage>, String)>,
) -> Vec<Done> {
    let mut failed = Vec::new();
    let fail = |tasks: &[TaskMessage], why: &str, failed: &mut Vec<Done>| {
        for task in tasks {
            failed.push(failed_task(&task.submission, why.to_owned()));
        }
    };
    let mut pending = Vec::with_capacity(packets.len());
    for (tasks, id) in packets {
        match super::encode(&tasks, blobs, || format!("payload/{id}")).await {
            Ok(payload) => pending.push((tasks, id, payload)),
            Err(error) => fail(&tasks, &error.to_string(), &mut failed),
        }
    }
    let deadline = tokio::time::Instant::now() + PUBLISH_PATIENCE;
    let mut backoff = Duration::from_millis(100);
    while !pending.is_empty() {
        let mut acks = Vec::with_capacity(pending.len());
        let mut again = Vec::new();
        let mut stale = false;
        for (tasks, id, payload) in pending {
            if stale {
                again.push((tasks, id, payload, "the connection stalled".into()));
                continue;
            }
            let message = async_nats::jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .message_id(id.clone());
            let sent = tokio::time::timeout(
                super::REQUEST_TIMEOUT,
                nats.js.send_publish(super::TASKS_SUBJECT, message),
            )
            .await;
            match sent {
                Ok(Ok(ack)) => acks.push((tasks, id, payload, ack)),
                Ok(Err(e)) => {
                    stale |= e.kind() == async_nats::jetstream::context::PublishErrorKind::TimedOut;
                    again.push((tasks, id, payload, e.to_string()));
                }
                Err(_) => {
                    stale = true;
                    again.push((tasks, id, payload, "timed out".into()));
                }
            }
        }
        // Every acknowledgement at once: a stalled connection costs one
        // timeout, not one per task.
        let (waiting, futures): (Vec<_>, Vec<_>) = acks
            .into_iter()
            .map(|(tasks, id, payload, ack)| {
                let ack = tokio::time::timeout(super::REQUEST_TIMEOUT, ack.into_future());
                ((tasks, id, payload), ack)
            })
            .unzip();
        let acked = futures::future::join_all(futures).await;
        for ((tasks, id, payload), acked) in waiting.into_iter().zip(acked) {
            match acked {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => again.push((tasks, id, payload, e.to_string())),
                Err(_) => {
                    stale = true;
                    again.push((tasks, id, payload, "no acknowledgement".into()));
                }
            }
        }
        if again.is_empty() {
            break;
        }
        if stale && let Ok(fresh) = nats.fresh().await {
            *nats = fresh;
        }
        if tokio::time::Instant::now() >= deadline {
            for (tasks, _, _, why) in again {
                fail(
                    &tasks,
                    &format!("NATS did not store the task: {why}"),
                    &mut failed,
                );
            }
            break;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
        pending = again
            .into_iter()
            .map(|(tasks, id, payload, _)| (tasks, id, payload))
            .collect();
    }
    failed
}

/// The cluster's state, from the workers' heartbeats and the consumer.
pub(super) async fn status(nats: &Nats, entry: &ConfigEntry) -> ClusterStatus {
    let beats = match nats.workers().await {
        Ok(workers) => live_workers(&workers).await.unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    // Tasks no worker has taken yet.
    let queued = match nats.js.get_stream(super::TASKS_STREAM).await {
        Ok(stream) => match stream.consumer_info(super::WORKERS_CONSUMER).await {
            Ok(info) => info.num_pending as usize,
            Err(_) => 0,
        },
        Err(_) => 0,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut failed_hooks = Vec::new();
    let mut workers = Vec::new();
    for beat in beats {
        if let Some(error) = beat.hook_failed {
            failed_hooks.push((beat.status.worker_id.clone(), beat.status.pid, error));
        } else {
            workers.push(beat.status);
        }
    }
    let running = workers.iter().map(|w| w.running).sum::<usize>();
    ClusterStatus {
        job_id: entry.config.job_id.clone(),
        hook: entry
            .config
            .hook
            .as_ref()
            .map(|h| (h.display.clone(), h.digest)),
        done: workers.iter().map(|w| w.done).sum(),
        workers,
        queued,
        running,
        components: 0,
        component_bytes: 0,
        actors: match nats.actor_store().await {
            Ok(store) => store.statuses().await,
            Err(_) => Vec::new(),
        },
        uptime: Duration::from_secs(now.saturating_sub(entry.created)),
        failed_hooks,
    }
}

/// Waits until no worker announces itself, or `limit` passed.
pub(crate) async fn wait_no_workers(nats: &Nats, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    let Ok(workers) = nats.workers().await else {
        return;
    };
    while tokio::time::Instant::now() < deadline {
        match live_workers(&workers).await {
            Ok(live) if live.iter().all(|beat| beat.hook_failed.is_some()) => return,
            Err(_) => return,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tasks(n: usize) -> Vec<(TaskMessage, String)> {
        (0..n)
            .map(|i| {
                let task = TaskMessage {
                    submission: Submission {
                        tag: i as u64,
                        task_id: format!("d-{i}"),
                        component: Digest::of(b"c"),
                        function: "f".into(),
                        invocation: "f()".into(),
                        trace: None,
                        parent: None,
                        actor: None,
                    },
                    component_name: "c.wasm".into(),
                    reply: "wtrace.results.d".into(),
                    depth: 0,
                    attempts_before: 0,
                    bounces: 0,
                };
                (task, format!("d-{i}:0"))
            })
            .collect()
    }

    #[test]
    fn few_tasks_travel_alone_and_many_in_packs_in_order() {
        let sizes = |n| {
            pack(tasks(n))
                .iter()
                .map(|(p, _)| p.len())
                .collect::<Vec<_>>()
        };
        assert_eq!(sizes(3), [1, 1, 1], "few tasks spread over workers");
        assert_eq!(sizes(10), [2, 2, 2, 2, 2]);
        assert_eq!(sizes(40), [10, 10, 10, 10]);
        assert_eq!(
            sizes(100),
            [
                PACK_MAX, PACK_MAX, PACK_MAX, PACK_MAX, PACK_MAX, PACK_MAX, 4
            ]
        );
        let packets = pack(tasks(40));
        let tags: Vec<u64> = packets
            .iter()
            .flat_map(|(p, _)| p.iter().map(|t| t.submission.tag))
            .collect();
        assert_eq!(tags, (0..40).collect::<Vec<_>>(), "in submission order");
        let ids: Vec<&str> = packets.iter().map(|(_, id)| id.as_str()).collect();
        assert_eq!(ids, ["d-0:0+10", "d-10:0+10", "d-20:0+10", "d-30:0+10"]);
    }
}

//! The cluster on NATS JetStream, across machines: no wtrace head process,
//! no shared filesystem, no session file.
//!
//! - Tasks travel on a work-queue stream ([`TASKS_STREAM`]), packed up to
//!   16 a message when many are sent at once, pulled by the workers' shared
//!   durable consumer by credit (a worker puts back what is past its
//!   credit), and a message is acknowledged only once the result of every
//!   task it carries is stored; a task whose worker died is redelivered after
//!   [`ACK_WAIT`]. A long task keeps its message with in-progress
//!   acknowledgements.
//! - Results go to a limits stream ([`RESULTS_STREAM`]), on a subject of the
//!   submitter's own; a driver reads them with an ordered consumer, and can
//!   read them again after a reconnect.
//! - Components, the hook and payloads larger than a message live in the
//!   object store ([`BLOBS`]) by name.
//! - A driver that detaches leaves its tasks' list in [`JOBS`] under its
//!   results subject's name, the job id; a driver reattached by that id
//!   reads its results from the stream.
//! - Each task tree's count of nested tasks is a key-value entry
//!   ([`TREES`]) that workers raise by compare-and-set before they publish.
//! - The configuration is a key-value entry ([`CONFIG`]); workers announce
//!   themselves in another ([`WORKERS`]) whose entries expire, so a dead
//!   worker leaves the list by itself.
//! - Actors: records in a bucket, calls on a stream subject of their own
//!   ([`actors`]).

mod actors;
mod driver;
mod worker;

pub(super) use driver::connect_driver;
pub(super) use worker::connect_worker;

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, object_store, stream};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt as _;
use tokio_util::bytes::Bytes;

use super::Credentials;
use crate::cluster::messages::{ClusterConfig, Submission, WorkerStatus};
use crate::error::{Error, Result};

/// The work-queue stream of tasks.
pub const TASKS_STREAM: &str = "WTRACE_TASKS";
/// The subject tasks are published on.
pub const TASKS_SUBJECT: &str = "wtrace.tasks";
/// The workers' shared durable consumer of [`TASKS_STREAM`].
pub const WORKERS_CONSUMER: &str = "wtrace-workers";
/// The stream of results, by submitter: `wtrace.results.<submitter>`.
pub const RESULTS_STREAM: &str = "WTRACE_RESULTS";
/// Where the shutdown request is published (core NATS).
pub const CONTROL_SUBJECT: &str = "wtrace.control.shutdown";
/// The key-value bucket holding the cluster's configuration.
pub const CONFIG: &str = "wtrace-config";
/// The key-value bucket of worker heartbeats.
pub const WORKERS: &str = "wtrace-workers";
/// The object store of components, the hook and large payloads.
pub const BLOBS: &str = "wtrace-blobs";
/// The key-value bucket of detached jobs, by job id.
pub const JOBS: &str = "wtrace-jobs";
/// The key-value bucket counting each task tree's nested tasks, by the
/// root task's id: the budget `--max-nested-tasks` sets, shared by the
/// workers that run the tree.
pub const TREES: &str = "wtrace-trees";

/// How long a delivered task may go unacknowledged before it is taken for
/// lost and delivered again.
pub const ACK_WAIT: Duration = Duration::from_secs(10);
/// How often a worker says it is still working on the tasks it holds.
const PROGRESS_EVERY: Duration = Duration::from_secs(3);
/// How long a worker's heartbeat entry lives unless renewed.
const HEARTBEAT_TTL: Duration = Duration::from_secs(10);
/// How often a worker renews it.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// How long results wait in their stream for a driver to fetch them.
const RESULTS_KEPT: Duration = Duration::from_secs(24 * 3600);
/// How long one request to the server (a publish, its acknowledgement) may
/// take before it is taken for lost and made again.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Payloads up to this go inside their message; larger ones in the object
/// store (NATS's default payload limit is 1 MiB).
const INLINE_MAX: usize = 768 << 10;

/// The first byte of a payload: what follows.
const INLINE: u8 = 0;
const IN_STORE: u8 = 1;

/// Bumped whenever a message on the streams changes shape.
const WIRE_VERSION: u32 = 5;

/// The configuration entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ConfigEntry {
    pub version: u32,
    pub config: ClusterConfig,
    /// When the cluster was made, in seconds since the Unix epoch.
    pub created: u64,
}

/// A task on the work-queue stream, in a message of up to
/// [`driver::PACK_MAX`] of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TaskMessage {
    /// As the submitter sent it; its tag comes back with the result.
    pub submission: Submission,
    /// The component's file name, for spans.
    pub component_name: String,
    /// Where its result goes.
    pub reply: String,
    /// How deep it is nested.
    pub depth: u32,
    /// Deliveries of it before the message it came in (which a worker put
    /// back on the stream); the delivery count of that message adds to it.
    pub attempts_before: u32,
    /// For an actor's creation: how many workers put it back for want of
    /// room for another actor.
    pub bounces: u32,
}

/// A worker's heartbeat entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Heartbeat {
    pub status: WorkerStatus,
    /// Its hook failed with this.
    pub hook_failed: Option<String>,
}

/// The NATS side of a connection: the client and its JetStream context.
#[derive(Clone)]
pub(crate) struct Nats {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    /// How it was made, to make another.
    servers: Vec<String>,
    tls: bool,
    credentials: Credentials,
    name: String,
}

impl std::fmt::Debug for Nats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Nats")
    }
}

fn nats_error(what: impl std::fmt::Display, error: impl std::fmt::Display) -> Error {
    Error::Cluster(format!("{what}: {error}"))
}

/// Connects to the NATS servers, with the given authentication and TLS.
pub(crate) async fn connect(
    servers: &[String],
    tls: bool,
    credentials: &Credentials,
    name: &str,
) -> Result<Nats> {
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .require_tls(tls || credentials.tls_ca.is_some() || credentials.tls_cert.is_some());
    if let Some(token) = &credentials.token {
        options = options.token(token.clone());
    }
    if let Some((user, password)) = &credentials.user {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(path) = &credentials.creds_file {
        options = options.credentials_file(path).await.map_err(|e| {
            Error::io(
                format!("cannot read the NATS credentials file {}", path.display()),
                e,
            )
        })?;
    }
    if let Some(seed) = &credentials.nkey_seed {
        options = options.nkey(seed.clone());
    }
    if let Some(ca) = &credentials.tls_ca {
        options = options.add_root_certificates(ca.clone());
    }
    if let Some(cert) = &credentials.tls_cert {
        let key = credentials.tls_key.clone().ok_or_else(|| {
            Error::Config("--tls-cert needs --tls-key, the certificate's private key".into())
        })?;
        options = options.add_client_certificate(cert.clone(), key);
    }
    let urls: Vec<String> = servers
        .iter()
        .map(|server| format!("{}://{server}", if tls { "tls" } else { "nats" }))
        .collect();
    let client = options.connect(urls.as_slice()).await.map_err(|e| {
        use async_nats::ConnectErrorKind as Kind;
        let hint = match e.kind() {
            Kind::AuthorizationViolation | Kind::Authentication => {
                "; check the NATS credentials (--token, --nats-user, --nats-creds, --nats-nkey)"
            }
            Kind::Tls => "; check --tls-ca, --tls-cert and --tls-key",
            _ if e.to_string().contains("certificate") => {
                "; check --tls-ca (the CA that signed the server's certificate), --tls-cert and \
                 --tls-key"
            }
            _ => "; is a nats-server with JetStream running there?",
        };
        Error::Cluster(format!(
            "cannot connect to NATS at {}: {e}{hint}",
            servers.join(",")
        ))
    })?;
    let js = jetstream::ContextBuilder::new()
        .backpressure_on_inflight(false)
        .build(client.clone());
    Ok(Nats {
        client,
        js,
        servers: servers.to_vec(),
        tls,
        credentials: credentials.clone(),
        name: name.to_owned(),
    })
}

impl Nats {
    /// A new connection like this one. After the server restarted, the
    /// client's own reconnected connection sometimes stops sending
    /// publishes (nothing leaves its socket) while it keeps receiving; a
    /// fresh connection does not.
    pub(crate) async fn fresh(&self) -> Result<Self> {
        connect(&self.servers, self.tls, &self.credentials, &self.name).await
    }
}

impl Nats {
    /// Creates (or finds) every stream, consumer and bucket a cluster needs,
    /// then writes its configuration and hook. What a head does.
    pub(crate) async fn create_cluster(
        &self,
        config: &ClusterConfig,
        hook: Option<&[u8]>,
    ) -> Result<()> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            Error::Cluster(format!(
                "cannot create the {what} on NATS: {e}; the server must run JetStream \
                 (`nats-server -js`)"
            ))
        };
        let tasks = self
            .js
            .get_or_create_stream(stream::Config {
                name: TASKS_STREAM.into(),
                subjects: vec![TASKS_SUBJECT.into()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("task stream", &e))?;
        tasks
            .get_or_create_consumer::<consumer::pull::Config>(
                WORKERS_CONSUMER,
                consumer::pull::Config {
                    durable_name: Some(WORKERS_CONSUMER.into()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    max_ack_pending: 1 << 20,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| unavailable("workers' consumer", &e))?;
        self.js
            .get_or_create_stream(stream::Config {
                name: RESULTS_STREAM.into(),
                subjects: vec!["wtrace.results.>".into()],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                max_age: RESULTS_KEPT,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("result stream", &e))?;
        let workers = self
            .bucket(WORKERS, HEARTBEAT_TTL)
            .await
            .map_err(|e| unavailable("workers' bucket", &e))?;
        let live = live_workers(&workers).await?;
        if !live.is_empty() {
            return Err(Error::Cluster(format!(
                "a wtrace cluster is already running on this NATS ({} workers announce \
                 themselves); stop it with `wtrace stop --address …` first",
                live.len()
            )));
        }
        self.bucket(JOBS, RESULTS_KEPT)
            .await
            .map_err(|e| unavailable("jobs' bucket", &e))?;
        self.bucket(TREES, RESULTS_KEPT)
            .await
            .map_err(|e| unavailable("task trees' bucket", &e))?;
        self.create_actor_store()
            .await
            .map_err(|e| unavailable("actors' buckets and stream", &e))?;
        let blobs = self
            .blobs_create()
            .await
            .map_err(|e| unavailable("object store", &e))?;
        if let (Some(spec), Some(bytes)) = (&config.hook, hook) {
            put_blob(&blobs, &spec.digest.to_string(), bytes).await?;
        }
        let store = self
            .bucket(CONFIG, Duration::ZERO)
            .await
            .map_err(|e| unavailable("configuration bucket", &e))?;
        let entry = ConfigEntry {
            version: WIRE_VERSION,
            config: config.clone(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let json = serde_json::to_vec(&entry).expect("a configuration serializes");
        store
            .put("config", json.into())
            .await
            .map_err(|e| nats_error("cannot write the cluster's configuration", e))?;
        Ok(())
    }

    /// The key-value bucket `name` (one value a key, kept on file,
    /// entries expiring after `max_age` unless it is zero), made if missing.
    pub(crate) async fn bucket(
        &self,
        name: &str,
        max_age: Duration,
    ) -> std::result::Result<kv::Store, String> {
        if let Ok(store) = self.js.get_key_value(name).await {
            return Ok(store);
        }
        self.js
            .create_key_value(kv::Config {
                bucket: name.into(),
                history: 1,
                max_age,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())
    }

    async fn blobs_create(&self) -> std::result::Result<object_store::ObjectStore, String> {
        self.js
            .create_object_store(object_store::Config {
                bucket: BLOBS.into(),
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())
    }

    /// The cluster's configuration, as its head wrote it.
    pub(crate) async fn config(&self, servers: &str) -> Result<ConfigEntry> {
        let missing = || {
            Error::Cluster(format!(
                "no wtrace cluster on the NATS at {servers}; start one with `wtrace start --head \
                 --address nats://…`"
            ))
        };
        let store = self.js.get_key_value(CONFIG).await.map_err(|_| missing())?;
        let bytes = store
            .get("config")
            .await
            .map_err(|e| nats_error("cannot read the cluster's configuration", e))?
            .ok_or_else(missing)?;
        let entry: ConfigEntry = serde_json::from_slice(&bytes).map_err(|e| {
            Error::Cluster(format!(
                "the cluster's configuration on NATS is unreadable ({e}); use the same wtrace \
                 build everywhere"
            ))
        })?;
        if entry.version != WIRE_VERSION {
            return Err(Error::Cluster(format!(
                "the cluster on NATS speaks wire version {}, this wtrace {WIRE_VERSION}; use the \
                 same wtrace build everywhere",
                entry.version
            )));
        }
        Ok(entry)
    }

    pub(crate) async fn blobs(&self) -> Result<object_store::ObjectStore> {
        self.js
            .get_object_store(BLOBS)
            .await
            .map_err(|e| nats_error("cannot open the cluster's object store", e))
    }

    pub(crate) async fn workers(&self) -> Result<kv::Store> {
        self.js
            .get_key_value(WORKERS)
            .await
            .map_err(|e| nats_error("cannot open the cluster's workers bucket", e))
    }
}

/// Makes a cluster on the NATS servers at `endpoint`, or takes over the
/// streams of one that stopped: writes `config` and the `hook`'s bytes.
/// Refused on servers beyond this machine when `credentials` authenticate
/// nothing, unless `insecure`: anyone who reaches them could run tasks.
pub async fn create_cluster(
    endpoint: &super::Endpoint,
    credentials: &Credentials,
    config: &ClusterConfig,
    hook: Option<&[u8]>,
    insecure: bool,
) -> Result<()> {
    let super::Endpoint::Nats { servers, tls } = endpoint else {
        return Err(Error::Config(format!("{endpoint} is not a NATS address")));
    };
    if !insecure && !credentials.authenticates() {
        for server in servers {
            if !is_loopback(server).await {
                return Err(Error::Config(format!(
                    "{server} is reachable beyond this machine and no NATS authentication is \
                     given: anyone who reaches it could run tasks on the cluster. Pass \
                     credentials (--token-file, --nats-user, --nats-creds, --nats-nkey), or \
                     --insecure if the network is trusted"
                )));
            }
        }
    }
    let nats = connect(servers, *tls, credentials, "wtrace head").await?;
    nats.create_cluster(config, hook).await
}

/// Whether `HOST:PORT` resolves to loopback addresses only.
async fn is_loopback(server: &str) -> bool {
    match tokio::net::lookup_host(server).await {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|addr| addr.ip().is_loopback())
        }
        Err(_) => false,
    }
}

/// The heartbeats of live workers.
pub(crate) async fn live_workers(workers: &kv::Store) -> Result<Vec<Heartbeat>> {
    use futures::StreamExt as _;
    let mut keys = workers
        .keys()
        .await
        .map_err(|e| nats_error("cannot list the cluster's workers", e))?;
    let mut names = Vec::new();
    while let Some(key) = keys.next().await {
        if let Ok(key) = key {
            names.push(key);
        }
    }
    let mut beats = Vec::new();
    for name in names {
        if let Ok(Some(bytes)) = workers.get(&name).await
            && let Ok(beat) = serde_json::from_slice::<Heartbeat>(&bytes)
        {
            beats.push(beat);
        }
    }
    Ok(beats)
}

/// Stores `bytes` under `name` unless an object of that name is there.
pub(crate) async fn put_blob(
    store: &object_store::ObjectStore,
    name: &str,
    bytes: &[u8],
) -> Result<()> {
    if store.info(name).await.is_ok_and(|info| !info.deleted) {
        return Ok(());
    }
    let mut reader = bytes;
    store
        .put(name, &mut reader)
        .await
        .map(|_| ())
        .map_err(|e| nats_error(format!("cannot store {name} in the object store"), e))
}

/// The object called `name`, if the store has it.
pub(crate) async fn get_blob(
    store: &object_store::ObjectStore,
    name: &str,
) -> Result<Option<Vec<u8>>> {
    match store.get(name).await {
        Ok(mut object) => {
            let mut bytes = Vec::new();
            object
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| Error::io(format!("cannot read {name} from the object store"), e))?;
            Ok(Some(bytes))
        }
        Err(e) if e.kind() == object_store::GetErrorKind::NotFound => Ok(None),
        Err(e) => Err(nats_error(
            format!("cannot read {name} from the object store"),
            e,
        )),
    }
}

/// A message's payload: `value` in postcard, inside the message or, when
/// larger than a message should be, in the object store under `spill`.
pub(crate) async fn encode<T: Serialize>(
    value: &T,
    blobs: &object_store::ObjectStore,
    spill: impl FnOnce() -> String,
) -> Result<Bytes> {
    let body = postcard::to_allocvec(value).expect("messages serialize");
    if body.len() <= INLINE_MAX {
        let mut payload = Vec::with_capacity(body.len() + 1);
        payload.push(INLINE);
        payload.extend_from_slice(&body);
        return Ok(payload.into());
    }
    let name = spill();
    let mut reader = body.as_slice();
    blobs
        .put(name.as_str(), &mut reader)
        .await
        .map_err(|e| nats_error("cannot store a large payload in the object store", e))?;
    let mut payload = vec![IN_STORE];
    payload.extend_from_slice(name.as_bytes());
    Ok(payload.into())
}

/// Reads a payload [`encode`] made; one in the object store is deleted
/// once read when `consume` is set.
pub(crate) async fn decode<T: for<'de> Deserialize<'de>>(
    payload: &[u8],
    blobs: &object_store::ObjectStore,
    consume: bool,
) -> std::result::Result<T, String> {
    let (kind, rest) = payload.split_first().ok_or("an empty message")?;
    let decode =
        |body: &[u8]| postcard::from_bytes(body).map_err(|e| format!("a bad message: {e}"));
    match *kind {
        INLINE => decode(rest),
        IN_STORE => {
            let name = std::str::from_utf8(rest).map_err(|_| "a bad payload name")?;
            let body = get_blob(blobs, name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("the payload {name} is gone from the object store"))?;
            if consume {
                let _ = blobs.delete(name).await;
            }
            decode(&body)
        }
        other => Err(format!("a message of unknown kind {other}")),
    }
}

/// Deletes the object a spilled payload was stored in, once it is used.
pub(crate) async fn discard_spilled(blobs: &object_store::ObjectStore, payload: &[u8]) {
    if let Some((&IN_STORE, name)) = payload.split_first()
        && let Ok(name) = std::str::from_utf8(name)
    {
        let _ = blobs.delete(name).await;
    }
}

//! wtrace as processes: a head, worker processes on nodes, and drivers.
//!
//! Drivers and workers reach the cluster through a [`transport`]: the local
//! head over TCP (loopback by default), presenting the cluster's token. The
//! cluster hands every process its tracing startup hook by digest, so no
//! worker needs it on disk.

pub mod client;
pub mod messages;
pub mod node;
pub mod session;
pub mod transport;
pub mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use client::{ActorHandle, ActorOptions, Client, TaskRef, TaskResult};
pub use messages::{ActorLimits, ActorStatus, ClusterConfig, ClusterStatus, HookRef};
pub use node::{Node, NodeOptions};
pub use transport::tcp::Head;
pub use transport::{Credentials, Endpoint};

use crate::config::{ExportPolicy, Grants, Limits};
use crate::error::Result;
use crate::exec::hook::HookComponent;
use crate::ids::random_hex;

/// The default `--component-store`: bytes of components a head keeps.
pub const DEFAULT_COMPONENT_STORE: u64 = 1 << 30;

/// How to start a cluster on this machine.
#[derive(Debug, Clone)]
pub struct LocalClusterOptions {
    /// Worker processes to start.
    pub num_workers: usize,
    /// How many of them start at once; the rest start when the cluster
    /// holds more tasks than it has workers (a task fanning out nested
    /// tasks). `None`: all at once.
    pub start_workers: Option<usize>,
    /// The tracing startup hook every process runs.
    pub hook: Option<HookComponent>,
    /// Per-task limits.
    pub limits: Limits,
    /// Where hooks may export spans.
    pub policy: ExportPolicy,
    /// What tasks may reach beyond the default sandbox.
    pub grants: Grants,
    /// Retries of a task whose worker died.
    pub max_retries: u32,
    /// Bytes of components the head stores (`--component-store`).
    pub component_store: u64,
    /// How many actors may live at once.
    pub actors: ActorLimits,
    /// The `wtrace` executable workers run.
    pub worker_exe: PathBuf,
    /// Where compiled components are cached.
    pub cache_dir: Option<PathBuf>,
    /// Where the head listens (port 0: any free port).
    pub bind: SocketAddr,
    /// How long workers may take to run the hook and become ready.
    pub ready_timeout: Duration,
    /// The job id recorded on every span.
    pub job_id: String,
}

impl LocalClusterOptions {
    /// Defaults: one worker per core, no hook, default limits, loopback.
    pub fn new(worker_exe: PathBuf) -> Self {
        Self {
            num_workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            start_workers: None,
            hook: None,
            limits: Limits::default(),
            policy: ExportPolicy::default(),
            grants: Grants::default(),
            max_retries: 3,
            component_store: DEFAULT_COMPONENT_STORE,
            actors: ActorLimits::default(),
            worker_exe,
            cache_dir: crate::runtime::default_cache_dir(),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            ready_timeout: Duration::from_secs(60),
            job_id: format!("job-{}", random_hex(4)),
        }
    }
}

/// A head in this process plus a node of worker processes.
#[derive(Debug)]
pub struct LocalCluster {
    head: Head,
    node: Node,
    config: ClusterConfig,
    /// The most workers it has, those started at once among them.
    num_workers: usize,
}

/// A local cluster whose workers are started but held before their hook:
/// see [`LocalCluster::spawn_held`].
#[derive(Debug)]
pub struct HeldCluster {
    cluster: LocalCluster,
    ready_timeout: Duration,
}

impl HeldCluster {
    /// Lets the workers run the hook and waits until every one has. On
    /// failure nothing is left running.
    pub async fn admit(self) -> Result<LocalCluster> {
        let Self {
            cluster,
            ready_timeout,
        } = self;
        cluster.head.admit_workers();
        let head = &cluster.head;
        let readiness = || async { Ok(head.readiness().await) };
        let changed = || head.readiness_changed();
        if let Err(error) = cluster
            .node
            .wait_ready(readiness, changed, ready_timeout)
            .await
        {
            cluster.head.shutdown();
            cluster.node.stop(Duration::from_secs(5)).await;
            return Err(error);
        }
        cluster.grow_on_demand();
        Ok(cluster)
    }

    /// Kills the workers before they ran anything, and stops the head.
    pub async fn abort(self) {
        // Killed first: a worker turned away first would say so.
        self.cluster.node.stop(Duration::ZERO).await;
        self.cluster.head.refuse_workers();
        self.cluster.head.shutdown();
    }
}

impl LocalCluster {
    /// Starts the head and the workers, and waits until every worker has run
    /// the hook. On failure nothing is left running.
    pub async fn start(options: LocalClusterOptions) -> Result<Self> {
        Self::spawn_held(options).await?.admit().await
    }

    /// Starts the head and the worker processes, holding the workers at
    /// their handshake: [`HeldCluster::admit`] lets them run the hook and
    /// waits until they have, [`HeldCluster::abort`] kills them before they
    /// ran anything. So the workers start while their driver still does its
    /// own set-up.
    pub async fn spawn_held(options: LocalClusterOptions) -> Result<HeldCluster> {
        let token = crate::ids::secure_token()?;
        let config = ClusterConfig {
            job_id: options.job_id.clone(),
            hook: options.hook.as_ref().map(HookRef::of),
            limits: options.limits.clone(),
            policy: options.policy.clone(),
            grants: options.grants.clone(),
            max_retries: options.max_retries,
            component_store: options.component_store,
            actors: options.actors,
        };
        let hook = options.hook.as_ref().map(|hook| hook.bytes.to_vec());
        let head = Head::start_held(options.bind, token.clone(), config.clone(), hook).await?;
        let num_workers = options.num_workers.max(1);
        let node = match Node::spawn(NodeOptions {
            num_workers: options
                .start_workers
                .map_or(num_workers, |n| n.clamp(1, num_workers)),
            worker_exe: options.worker_exe.clone(),
            endpoint: Endpoint::tcp(head.addr()),
            credentials: token.into(),
            node_id: format!("n-{}", random_hex(3)),
            cache_dir: options.cache_dir.clone(),
        }) {
            Ok(node) => node,
            Err(error) => {
                head.refuse_workers();
                head.shutdown();
                return Err(error);
            }
        };
        Ok(HeldCluster {
            cluster: Self {
                head,
                node,
                config,
                num_workers,
            },
            ready_timeout: options.ready_timeout,
        })
    }

    /// Starts the workers not started at once as the tasks the head holds
    /// outnumber the workers, until there are `num_workers`.
    fn grow_on_demand(&self) {
        if self.node.started() >= self.num_workers {
            return;
        }
        let (node, most) = (self.node.clone(), self.num_workers);
        let mut held = self.head.tasks_held();
        tokio::spawn(async move {
            while held.changed().await.is_ok() {
                let tasks = *held.borrow_and_update();
                if tasks > node.started() {
                    if let Err(error) = node.grow(tasks.min(most)) {
                        eprintln!("wtrace: {error}");
                        return;
                    }
                    if node.started() >= most {
                        return;
                    }
                }
            }
        });
    }

    /// The head.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// The configuration every process shares.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The worker processes' pids.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.node.pids()
    }

    /// A client in this process, linked to the head without a socket;
    /// `telemetry` as in [`Client::connect`].
    pub async fn client(&self, telemetry: Option<crate::Telemetry>) -> Result<Client> {
        Client::over(self.head.driver_link().await?, telemetry.map(Some), None).await
    }

    /// A client in this process that does not trace its submissions.
    pub async fn client_untraced(&self) -> Result<Client> {
        Client::over(self.head.driver_link().await?, Some(None), None).await
    }

    /// Waits until the cluster was stopped (by a driver's
    /// [`Client::shutdown_cluster`] or [`Head::shutdown`]) and every worker of
    /// this node exited.
    pub async fn wait_stopped(self) {
        self.head.stopped().await;
        self.node.stop(Duration::from_secs(10)).await;
    }

    /// Stops every worker gracefully (each flushes its spans), then returns
    /// how many workers said their exporters lost spans.
    pub async fn stop(self) -> usize {
        self.head.shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.head.stopped()).await;
        self.node.stop(Duration::from_secs(10)).await
    }
}

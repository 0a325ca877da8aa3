//! `wtrace start`: a cluster in the background — a head with its workers
//! (`--head`), or one more node of workers for a running head (`--address`).
//!
//! The command re-runs itself as a detached daemon (marked by
//! `WTRACE_DAEMON=1`, with the same arguments) and returns once the daemon
//! reports its workers ready, or fails with the daemon's error.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use wtrace::cluster::session::{NodeRecord, Session, ensure_dir, process_alive, session_dir};
use wtrace::cluster::{
    ActorLimits, Client, ClusterConfig, Endpoint, HookRef, LocalCluster, LocalClusterOptions, Node,
    NodeOptions,
};

use super::args::{HookArgs, SandboxArgs};
use super::cluster_args::{NatsArgs, TokenArgs, credentials_for};

const DAEMON: &str = "WTRACE_DAEMON";

/// Start a cluster in the background: a head and a node of workers
/// (`--head`), or another node of workers for a running cluster
/// (`--address`). With `--head --address nats://…` the cluster lives on
/// NATS JetStream, and nodes on any machine join it with the address alone.
///
/// Returns once every worker has run the tracing startup hook.
#[derive(Debug, Args)]
pub struct StartCommand {
    /// Start a head, with a node of workers on this machine.
    #[arg(long, required_unless_present = "address")]
    head: bool,
    /// Add a node of workers to the cluster at ADDRESS (a head's HOST:PORT,
    /// or nats://HOST:PORT[,…]); with --head, a NATS address makes the
    /// cluster there.
    #[arg(long, value_name = "ADDRESS")]
    address: Option<Endpoint>,
    /// Make a cluster on NATS servers reachable beyond this machine without
    /// authentication (anyone who reaches them could run tasks).
    #[arg(long)]
    insecure: bool,
    /// The head's port (default: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// The address the head listens on. Anything but loopback exposes the
    /// head to the network; every connection must still present the token.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Worker processes on this node (default: one per core).
    #[arg(short = 'n', long, value_name = "N")]
    num_workers: Option<usize>,
    /// Times a task is retried when its worker dies.
    #[arg(long, value_name = "N", default_value_t = 3)]
    max_retries: u32,
    /// Bytes of components the head keeps, e.g. 1G; past it, those no queued
    /// or running task needs are evicted, least recently used first.
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = super::args::parse_size)]
    component_store: u64,
    /// Actors that may live at once in the cluster; past it, creating one
    /// fails until one is killed.
    #[arg(long, value_name = "N", default_value_t = ActorLimits::default().per_cluster)]
    max_actors: u32,
    /// Actors that may live at once on one worker; a creation goes to a
    /// worker with room, and fails when no worker has any.
    #[arg(long, value_name = "N", default_value_t = ActorLimits::default().per_worker)]
    max_actors_per_worker: u32,
    #[command(flatten)]
    token: TokenArgs,
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    hook: HookArgs,
    #[command(flatten)]
    sandbox: SandboxArgs,
}

impl StartCommand {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let daemon = std::env::var_os(DAEMON).is_some();
        let dir = session_dir();
        ensure_dir(&dir)?;
        if self.head
            && let Some(address) = &self.address
        {
            if let Endpoint::Tcp(_) = address {
                bail!(
                    "--head with --address {address}: a wtrace head listens on --bind and --port; \
                     --address names a NATS cluster to make (nats://HOST:PORT)"
                );
            }
            if daemon {
                self.nats_head_daemon(&dir)
            } else {
                self.spawn_head(&dir)
            }
        } else if self.head {
            if daemon {
                self.head_daemon(&dir)
            } else {
                self.spawn_head(&dir)
            }
        } else if daemon {
            self.node_daemon(&dir)
        } else {
            self.spawn_node(&dir)
        }
    }

    fn workers(&self) -> usize {
        self.num_workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
    }

    fn spawn_head(&self, dir: &Path) -> anyhow::Result<ExitCode> {
        self.sandbox.grants()?;
        if let Some(session) = Session::read(dir)?
            && process_alive(session.pid)
        {
            bail!(
                "a wtrace cluster is already running at {} (head pid {}); stop it with `wtrace stop`",
                session.address,
                session.pid
            );
        }
        // Check what can be checked here, so mistakes show at once.
        self.hook.spec()?.map(|spec| spec.load()).transpose()?;
        self.sandbox.policy()?;
        anyhow::ensure!(self.workers() > 0, "--num-workers must be at least 1");

        let log = dir.join("head.log");
        let pid = spawn_daemon(&log)?;
        let session = wait_for(pid, &log, || {
            Session::read(dir).ok().flatten().filter(|s| s.pid == pid)
        })?;
        let hook = session
            .hook
            .as_deref()
            .unwrap_or("none (nothing is traced)");
        println!(
            "wtrace: started a cluster at {} (head pid {pid}, {} workers, hook {hook})",
            session.address,
            self.workers()
        );
        println!("  submit tasks:  wtrace submit tasks.wasm 'my-function()'");
        println!("  see it:        wtrace status");
        println!("  stop it:       wtrace stop");
        if self.address.is_some() {
            println!(
                "  add a node:    wtrace start --address {}  (on any machine, with the NATS credentials)",
                session.address
            );
        } else {
            println!(
                "  add a node:    wtrace start --address {} --token-file FILE  (FILE: the token in {})",
                session.address,
                Session::path(dir).display()
            );
        }
        println!("  head log:      {}", log.display());
        Ok(ExitCode::SUCCESS)
    }

    fn spawn_node(&self, dir: &Path) -> anyhow::Result<ExitCode> {
        let address = self.address.clone().expect("--address or --head");
        let node_id = format!("n-{}", short_id());
        let log = dir.join(format!("node-{node_id}.log"));
        let pid = spawn_daemon_with(&log, &[("WTRACE_NODE_ID", &node_id)])?;
        let node = wait_for(pid, &log, || NodeRecord::read(dir, &node_id).ok().flatten())?;
        println!(
            "wtrace: node {} joined the cluster at {address} with {} workers (node pid {pid}; log {})",
            node.node_id,
            self.workers(),
            log.display()
        );
        Ok(ExitCode::SUCCESS)
    }

    fn actor_limits(&self) -> ActorLimits {
        ActorLimits {
            per_cluster: self.max_actors,
            per_worker: self.max_actors_per_worker,
        }
    }

    fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
        Ok(tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?)
    }

    fn head_daemon(self, dir: &Path) -> anyhow::Result<ExitCode> {
        let hook = self.hook.spec()?.map(|spec| spec.load()).transpose()?;
        let mut options = LocalClusterOptions::new(std::env::current_exe()?);
        options.num_workers = self.workers();
        options.hook = hook.clone();
        options.limits = self.sandbox.limits();
        options.policy = self.sandbox.policy()?;
        options.grants = self.sandbox.grants()?;
        options.max_retries = self.max_retries;
        options.component_store = self.component_store;
        options.actors = self.actor_limits();
        options.cache_dir = self.sandbox.cache_dir();
        options.bind = SocketAddr::new(self.bind, self.port);
        Self::runtime()?.block_on(async move {
            let cluster = LocalCluster::start(options).await?;
            Session {
                address: cluster.head().addr().to_string(),
                token: cluster.head().token().to_owned(),
                pid: std::process::id(),
                job_id: cluster.config().job_id.clone(),
                hook: hook.map(|h| format!("{} ({})", h.display, h.digest)),
                log: dir.join("head.log"),
            }
            .write(dir)?;
            eprintln!("wtrace head: serving at {}", cluster.head().addr());
            let mut terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = cluster.head().stopped() => {}
                _ = terminate.recv() => cluster.head().shutdown(),
                _ = tokio::signal::ctrl_c() => cluster.head().shutdown(),
            }
            cluster.wait_stopped().await;
            remove_own_session(dir);
            Ok(ExitCode::SUCCESS)
        })
    }

    /// A head on NATS: makes the cluster's streams, buckets and
    /// configuration there, then serves as its first node until the cluster
    /// is stopped.
    fn nats_head_daemon(self, dir: &Path) -> anyhow::Result<ExitCode> {
        let address = self.address.clone().expect("--address");
        let hook = self.hook.spec()?.map(|spec| spec.load()).transpose()?;
        let credentials = self.nats.credentials(self.token.given()?)?;
        let config = ClusterConfig {
            job_id: format!("job-{}", short_id()),
            hook: hook.as_ref().map(HookRef::of),
            limits: self.sandbox.limits(),
            policy: self.sandbox.policy()?,
            grants: self.sandbox.grants()?,
            max_retries: self.max_retries,
            component_store: self.component_store,
            actors: self.actor_limits(),
        };
        let node_id = format!("n-{}", short_id());
        let node = self.node_options(&address, credentials.clone(), &node_id)?;
        Self::runtime()?.block_on(async move {
            let bytes = hook.as_ref().map(|h| h.bytes.to_vec());
            wtrace::cluster::transport::nats::create_cluster(
                &address,
                &credentials,
                &config,
                bytes.as_deref(),
                self.insecure,
            )
            .await?;
            let node = start_node(node).await?;
            Session {
                address: address.to_string(),
                token: String::new(),
                pid: std::process::id(),
                job_id: config.job_id.clone(),
                hook: hook.map(|h| format!("{} ({})", h.display, h.digest)),
                log: dir.join("head.log"),
            }
            .write(dir)?;
            eprintln!("wtrace head: the cluster is on {address}, node {node_id} serving");
            serve_node(node).await?;
            remove_own_session(dir);
            Ok(ExitCode::SUCCESS)
        })
    }

    /// This machine's node of workers for the cluster at `address`.
    fn node_options(
        &self,
        address: &Endpoint,
        credentials: wtrace::cluster::Credentials,
        node_id: &str,
    ) -> anyhow::Result<NodeOptions> {
        Ok(NodeOptions {
            num_workers: self.workers(),
            worker_exe: std::env::current_exe()?,
            endpoint: address.clone(),
            credentials,
            node_id: node_id.to_owned(),
            cache_dir: self.sandbox.cache_dir(),
        })
    }

    fn node_daemon(self, dir: &Path) -> anyhow::Result<ExitCode> {
        let address = self.address.clone().expect("--address");
        let node_id = std::env::var("WTRACE_NODE_ID").context("WTRACE_NODE_ID is not set")?;
        let credentials = credentials_for(&address, self.token.given()?, &self.nats)?;
        let node = self.node_options(&address, credentials, &node_id)?;
        let workers = node.num_workers;
        Self::runtime()?.block_on(async move {
            let node = start_node(node).await?;
            NodeRecord {
                node_id: node_id.clone(),
                pid: std::process::id(),
                address: address.to_string(),
                log: dir.join(format!("node-{node_id}.log")),
            }
            .write(dir)?;
            eprintln!("wtrace node {node_id}: {workers} workers serving {address}");
            serve_node(node).await?;
            NodeRecord::remove(dir, &node_id);
            eprintln!("wtrace node {node_id}: stopped");
            Ok(ExitCode::SUCCESS)
        })
    }
}

/// Removes the session file if it is this head's, when it stops.
fn remove_own_session(dir: &Path) {
    if Session::read(dir)
        .ok()
        .flatten()
        .is_some_and(|s| s.pid == std::process::id())
    {
        Session::remove(dir);
    }
    eprintln!("wtrace head: stopped");
}

/// Starts a node's workers and waits until each ran the hook; on failure
/// none is left running.
async fn start_node(options: NodeOptions) -> anyhow::Result<Node> {
    let client = Client::connect_untraced(&options.endpoint, options.credentials.clone()).await?;
    let node_id = options.node_id.clone();
    let node = Node::spawn(options)?;
    if let Err(error) = wait_node_ready(&client, &node, &node_id).await {
        node.terminate(Duration::from_secs(5)).await;
        return Err(error);
    }
    Ok(node)
}

/// Waits until every worker of `node` (ids `<node_id>-…`) ran the hook, as
/// the cluster reports them.
async fn wait_node_ready(client: &Client, node: &Node, node_id: &str) -> anyhow::Result<()> {
    let prefix = format!("{node_id}-");
    let readiness = || async {
        let status = client.status().await?;
        Ok(wtrace::cluster::transport::tcp::Readiness {
            ready: status
                .workers
                .iter()
                .filter(|w| w.ready && w.worker_id.starts_with(&prefix))
                .count(),
            failed: status.failed_hooks,
        })
    };
    node.wait_ready(readiness, std::future::pending, Duration::from_secs(60))
        .await?;
    Ok(())
}

/// Runs until the node's workers exit (the cluster stopped), or SIGTERM
/// comes: then they are told to stop.
async fn serve_node(node: Node) -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let pids = node.pids();
    let exited = node.wait();
    tokio::pin!(exited);
    tokio::select! {
        () = &mut exited => {}
        _ = terminate.recv() => {
            for pid in pids {
                wtrace::cluster::node::signal(pid, libc::SIGTERM);
            }
            exited.await;
        }
    }
    Ok(())
}

fn short_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "{:06x}",
        (nanos as u64 ^ u64::from(std::process::id()).rotate_left(20)) & 0xff_ffff
    )
}

fn spawn_daemon(log: &Path) -> anyhow::Result<u32> {
    spawn_daemon_with(log, &[])
}

/// Re-runs this command (same arguments) detached, as a daemon whose output
/// goes to `log`.
fn spawn_daemon_with(log: &Path, env: &[(&str, &str)]) -> anyhow::Result<u32> {
    let file = wtrace::private::open_truncate(log, 0o600)
        .with_context(|| format!("cannot create {}", log.display()))?;
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command
        .args(std::env::args_os().skip(1))
        .env(DAEMON, "1")
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    for (key, value) in env {
        command.env(key, value);
    }
    #[allow(unsafe_code)]
    // SAFETY: setsid(2) is async-signal-safe, as pre_exec requires.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = command.spawn().context("cannot start the daemon")?;
    let pid = child.id();
    // The daemon outlives this process; reap it if it fails early.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    Ok(pid)
}

/// Waits until `ready` returns something, or the daemon exits (an error with
/// its log), or two minutes pass.
fn wait_for<T>(pid: u32, log: &Path, mut ready: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(found) = ready() {
            return Ok(found);
        }
        if !process_alive(pid) {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let reason = text
                .lines()
                .filter(|l| l.starts_with("error:"))
                .map(|l| l.trim_start_matches("error:").trim())
                .next_back()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("see {}", log.display()));
            bail!("the cluster did not start: {reason}");
        }
        if Instant::now() > deadline {
            bail!(
                "the cluster is not ready after 2 minutes; see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

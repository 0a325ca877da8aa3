//! A node: the worker processes of one machine, started, watched and
//! replaced when they die.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use std::sync::Mutex;
use tokio::process::{Child, Command};

use super::Endpoint;
use super::transport::tcp::Readiness;
use crate::error::{Error, Result};

/// Exit code of a worker that could not start (its hook failed, or the head
/// was unreachable): the node does not restart it.
pub const EXIT_STARTUP_FAILED: i32 = 3;

/// A worker's exit status when it stopped as told but its exporters lost
/// spans (it said which, on its standard error): not a crash, no
/// replacement, but `wtrace run --fail-on-lost-telemetry` hears of it.
pub const EXIT_LOST_TELEMETRY: i32 = 4;

/// How to start a node's workers.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// How many worker processes.
    pub num_workers: usize,
    /// The `wtrace` executable to run as `wtrace worker`.
    pub worker_exe: PathBuf,
    /// Where the cluster is.
    pub endpoint: Endpoint,
    /// How workers prove they may join (passed in the environment, not the
    /// command line).
    pub credentials: super::Credentials,
    /// This node's id.
    pub node_id: String,
    /// Where workers cache compiled components.
    pub cache_dir: Option<PathBuf>,
}

/// A set of running worker processes. Clones share them: one may
/// [`Node::grow`] while another waits on or stops the workers.
#[derive(Debug, Clone)]
pub struct Node {
    options: NodeOptions,
    stopping: Arc<AtomicBool>,
    workers: Arc<Mutex<Workers>>,
}

/// The node's workers, each with the task that watches its process.
#[derive(Debug, Default)]
struct Workers {
    slots: Vec<Arc<Mutex<Slot>>>,
    watchers: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Debug)]
struct Slot {
    worker_id: String,
    pid: Option<u32>,
    exited: Option<String>,
    /// It exited saying its exporters lost spans.
    lost_telemetry: bool,
    restarts: u32,
    /// Deaths in a row, each soon after its start: what the restart
    /// backoff grows with.
    quick_deaths: u32,
}

/// A worker that lived this long before it died was not crash-looping: its
/// replacement starts at once.
const HEALTHY_AFTER: Duration = Duration::from_secs(1);

/// How much longer each quick death in a row makes the next start wait, up
/// to [`MAX_BACKOFF`].
const BACKOFF_STEP: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl Node {
    /// Starts `options.num_workers` workers; more with [`Node::grow`].
    /// They connect to the head by themselves.
    pub fn spawn(options: NodeOptions) -> Result<Self> {
        let node = Self {
            stopping: Arc::new(AtomicBool::new(false)),
            workers: Arc::default(),
            options,
        };
        node.grow(node.options.num_workers)?;
        Ok(node)
    }

    /// Starts workers until the node has `to` (replaced ones count as
    /// one); none once it is stopping.
    pub fn grow(&self, to: usize) -> Result<()> {
        let mut workers = self.workers.lock().unwrap();
        while workers.slots.len() < to && !self.stopping.load(Ordering::SeqCst) {
            let index = workers.slots.len() + 1;
            let worker_id = format!("{}-w{index}", self.options.node_id);
            let child = spawn_worker(&self.options, &worker_id)?;
            let slot = Arc::new(Mutex::new(Slot {
                worker_id,
                pid: child.id(),
                exited: None,
                lost_telemetry: false,
                restarts: 0,
                quick_deaths: 0,
            }));
            workers.watchers.push(tokio::spawn(watch(
                child,
                slot.clone(),
                self.options.clone(),
                self.stopping.clone(),
                index,
            )));
            workers.slots.push(slot);
        }
        Ok(())
    }

    /// How many workers were started (each replacement in its place).
    pub fn started(&self) -> usize {
        self.workers.lock().unwrap().slots.len()
    }

    /// The pids of the live workers.
    pub fn pids(&self) -> Vec<u32> {
        self.slots()
            .iter()
            .filter_map(|slot| slot.lock().unwrap().pid)
            .collect()
    }

    /// Waits until every worker has run the hook; fails with the hook's
    /// error, or if a worker exits first, or after `timeout`. `readiness`
    /// asks the head how far its workers got; `changed` resolves when that
    /// may have changed (a head in this process says so; others are asked
    /// again every 10 ms).
    pub async fn wait_ready<F, Fut, C, CFut>(
        &self,
        mut readiness: F,
        changed: C,
        timeout: Duration,
    ) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Readiness>>,
        C: Fn() -> CFut,
        CFut: std::future::Future<Output = ()>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            let readiness = readiness().await?;
            let mine = |worker: &str| worker.starts_with(&format!("{}-", self.options.node_id));
            if let Some((worker, pid, message)) = readiness.failed.iter().find(|(w, _, _)| mine(w))
            {
                return Err(Error::Cluster(format!(
                    "worker {worker} (pid {pid}) could not start: {message}"
                )));
            }
            if readiness.ready >= self.options.num_workers {
                return Ok(());
            }
            for slot in self.slots() {
                let slot = slot.lock().unwrap();
                if let Some(exit) = &slot.exited {
                    return Err(Error::Cluster(format!(
                        "worker {} exited before it was ready: {exit}",
                        slot.worker_id
                    )));
                }
            }
            if Instant::now() > deadline {
                return Err(Error::Cluster(format!(
                    "only {} of {} workers were ready after {timeout:?}",
                    readiness.ready, self.options.num_workers
                )));
            }
            // A worker's exit is seen here, not by the head: look again
            // within 10 ms whatever happens.
            let _ = tokio::time::timeout(Duration::from_millis(10), changed()).await;
        }
    }

    /// Waits until every worker has exited for good (told to stop, or its
    /// head gone); crashed workers are replaced meanwhile.
    pub async fn wait(self) {
        loop {
            // Taken in rounds: the node may grow while a round is awaited.
            let watchers = std::mem::take(&mut self.workers.lock().unwrap().watchers);
            if watchers.is_empty() {
                return;
            }
            for watcher in watchers {
                let _ = watcher.await;
            }
        }
    }

    /// Asks every worker to stop (SIGTERM: each flushes its spans), then
    /// waits as [`Node::stop`] does.
    pub async fn terminate(self, grace: Duration) {
        for pid in self.pids() {
            signal(pid, libc::SIGTERM);
        }
        self.stop(grace).await;
    }

    /// Waits for every worker to exit (after the head told them to stop),
    /// killing those still running after `grace`. No worker is replaced
    /// from now on.
    ///
    /// Returns how many of its workers exited saying their exporters lost
    /// spans.
    pub async fn stop(self, grace: Duration) -> usize {
        self.stopping.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + grace;
        // No worker is added once `stopping` is set under the lock.
        let (slots, watchers) = {
            let mut workers = self.workers.lock().unwrap();
            (workers.slots.clone(), std::mem::take(&mut workers.watchers))
        };
        for (slot, mut watcher) in slots.iter().zip(watchers) {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, &mut watcher).await.is_err() {
                if let Some(pid) = slot.lock().unwrap().pid {
                    signal(pid, libc::SIGKILL);
                }
                let _ = watcher.await;
            }
        }
        slots
            .iter()
            .filter(|slot| slot.lock().unwrap().lost_telemetry)
            .count()
    }

    fn slots(&self) -> Vec<Arc<Mutex<Slot>>> {
        self.workers.lock().unwrap().slots.clone()
    }
}

/// Sends `signal` to process `pid`.
#[allow(unsafe_code)]
pub fn signal(pid: u32, signal: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// The environment that hands `credentials` to a worker process: what
/// `wtrace worker` reads.
pub fn credential_env(credentials: &super::Credentials) -> Vec<(&'static str, String)> {
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    [
        ("WTRACE_TOKEN", credentials.token.clone()),
        (
            "WTRACE_NATS_USER",
            credentials.user.as_ref().map(|(u, _)| u.clone()),
        ),
        (
            "WTRACE_NATS_PASSWORD",
            credentials.user.as_ref().map(|(_, p)| p.clone()),
        ),
        ("WTRACE_NATS_CREDS", path(&credentials.creds_file)),
        ("WTRACE_NATS_NKEY_SEED", credentials.nkey_seed.clone()),
        ("WTRACE_TLS_CA", path(&credentials.tls_ca)),
        ("WTRACE_TLS_CERT", path(&credentials.tls_cert)),
        ("WTRACE_TLS_KEY", path(&credentials.tls_key)),
    ]
    .into_iter()
    .filter_map(|(key, value)| value.map(|value| (key, value)))
    .collect()
}

fn spawn_worker(options: &NodeOptions, worker_id: &str) -> Result<Child> {
    let mut command = Command::new(&options.worker_exe);
    command
        .arg("worker")
        .arg("--address")
        .arg(options.endpoint.to_string())
        .arg("--worker-id")
        .arg(worker_id)
        .arg("--node-id")
        .arg(&options.node_id)
        .envs(credential_env(&options.credentials))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if let Some(dir) = &options.cache_dir {
        command.arg("--cache-dir").arg(dir);
    }
    command.spawn().map_err(|e| {
        Error::io(
            format!("cannot start worker {}", options.worker_exe.display()),
            e,
        )
    })
}

/// Waits for a worker to exit; replaces it unless the node is stopping or
/// the worker could not start at all.
async fn watch(
    mut child: Child,
    slot: Arc<Mutex<Slot>>,
    options: NodeOptions,
    stopping: Arc<AtomicBool>,
    index: usize,
) {
    let mut born = Instant::now();
    loop {
        let status = child.wait().await;
        let lived = born.elapsed();
        let lost_telemetry = matches!(&status, Ok(s) if s.code() == Some(EXIT_LOST_TELEMETRY));
        if lost_telemetry {
            slot.lock().unwrap().lost_telemetry = true;
        }
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let description = describe_exit(&status);
        let startup_failure = matches!(&status, Ok(s) if s.code() == Some(EXIT_STARTUP_FAILED));
        let (worker_id, backoff) = {
            let mut slot = slot.lock().unwrap();
            slot.pid = None;
            if startup_failure || lost_telemetry || status.as_ref().is_ok_and(ExitStatus::success) {
                slot.exited = Some(description);
                return;
            }
            slot.restarts += 1;
            let worker_id = format!("{}-w{index}r{}", options.node_id, slot.restarts);
            eprintln!(
                "wtrace: worker {} {description}; starting {worker_id} in its place",
                slot.worker_id
            );
            slot.quick_deaths = if lived >= HEALTHY_AFTER {
                0
            } else {
                slot.quick_deaths.saturating_add(1)
            };
            let backoff = (BACKOFF_STEP * slot.quick_deaths.saturating_sub(1)).min(MAX_BACKOFF);
            (worker_id, backoff)
        };
        tokio::time::sleep(backoff).await;
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        match spawn_worker(&options, &worker_id) {
            Ok(next) => {
                born = Instant::now();
                let mut slot = slot.lock().unwrap();
                slot.pid = next.id();
                slot.worker_id = worker_id;
                child = next;
            }
            Err(error) => {
                slot.lock().unwrap().exited = Some(error.to_string());
                return;
            }
        }
    }
}

fn describe_exit(status: &std::io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(signal)) => format!("was killed by signal {signal}"),
            _ => "exited".into(),
        },
        Err(e) => format!("could not be waited for: {e}"),
    }
}

//! `wtrace stop`: stop the cluster gracefully, every span flushed.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use wtrace::cluster::node::signal;
use wtrace::cluster::session::{NodeRecord, Session, process_alive, session_dir};
use wtrace::cluster::{Client, Endpoint};

use super::cluster_args::{ClusterArgs, same_cluster};

/// Stop the cluster: every worker stops its task, flushes its spans and
/// exits, then the head and the nodes exit.
#[derive(Debug, Args)]
pub struct StopCommand {
    #[command(flatten)]
    cluster: ClusterArgs,
}

impl StopCommand {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let (address, token) = self.cluster.locate()?;
        let dir = session_dir();
        let session = Session::read(&dir)?.filter(|s| {
            s.endpoint()
                .is_ok_and(|recorded| same_cluster(&address, &recorded))
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let workers = rt.block_on(async {
            let client = Client::connect_untraced(&address, token.clone()).await?;
            let workers = client.status().await?.workers;
            client.shutdown_cluster().await?;
            anyhow::Ok(workers)
        });
        let (workers, local_workers) = match workers {
            Ok(workers) => {
                let local: Vec<u32> = workers
                    .iter()
                    .filter(|w| is_worker_here(w.pid, &w.worker_id))
                    .map(|w| w.pid)
                    .collect();
                (workers.len(), local)
            }
            Err(error) => match &session {
                // The head is alive but not answering: ask it to stop.
                Some(session) if process_alive(session.pid) => {
                    eprintln!(
                        "warning: {error}; sending SIGTERM to the head (pid {})",
                        session.pid
                    );
                    signal(session.pid, libc::SIGTERM);
                    (0, Vec::new())
                }
                _ => return Err(error),
            },
        };
        // Wait for the processes of this machine to exit.
        let mut pids: Vec<u32> = session.iter().map(|s| s.pid).collect();
        let nodes: Vec<NodeRecord> = NodeRecord::all(&dir)
            .into_iter()
            .filter(|n| {
                n.address
                    .parse()
                    .is_ok_and(|node: Endpoint| same_cluster(&node, &address))
            })
            .collect();
        pids.extend(nodes.iter().map(|n| n.pid));
        // Workers too: one its node could not stop is killed, not left behind.
        pids.extend(local_workers);
        let deadline = Instant::now() + Duration::from_secs(30);
        while pids.iter().any(|pid| process_alive(*pid)) {
            if Instant::now() > deadline {
                for pid in pids.iter().filter(|pid| process_alive(**pid)) {
                    eprintln!("warning: pid {pid} did not exit; killing it");
                    signal(*pid, libc::SIGKILL);
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if session.is_some() {
            Session::remove(&dir);
        }
        for node in nodes {
            NodeRecord::remove(&dir, &node.node_id);
        }
        println!(
            "wtrace: stopped the cluster at {address} ({workers} workers flushed their spans)"
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// Whether `pid` on this machine is the worker process `worker_id` (a pid
/// from another machine may name an unrelated process here).
fn is_worker_here(pid: u32, worker_id: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        let mut args = cmdline.split(|b| *b == 0);
        args.any(|arg| arg == b"--worker-id") && args.next() == Some(worker_id.as_bytes())
    })
}

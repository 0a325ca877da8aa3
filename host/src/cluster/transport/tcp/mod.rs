//! The local transport: the head, a process of its own (or inside `wtrace
//! run`), that workers and drivers reach over TCP, presenting the cluster's
//! token. No service to install; one machine, or a trusted network.

mod head;
pub mod protocol;
mod store;

pub use head::{Head, MAX_CONNECTIONS, MAX_OUTGOING_BYTES, MAX_TASK_BYTES, MAX_TASKS};
pub use head::{MAX_UNAUTHENTICATED, Readiness};
pub use protocol::{MAGIC, PROTOCOL_VERSION};

use std::net::SocketAddr;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use self::protocol::{Hello, OpenError, Reader, write_loop};
use super::{Credentials, DriverLink, WorkerLink};
use crate::capabilities::provider::WorkerInfo;
use crate::cluster::messages::{FromWorker, ToDriver, ToWorker};
use crate::error::{Error, Result};

/// Why a driver of the local head cannot detach.
pub(crate) const DETACH_REFUSED: &str = "the local head keeps a driver's results only while it \
     is connected: detaching and fetching results later (`submit --detach`, `wtrace results`) \
     need a cluster on NATS (--address nats://…)";

fn cluster_token(credentials: &Credentials) -> Result<String> {
    credentials.token.clone().ok_or_else(|| {
        Error::Config(
            "a wtrace head needs the cluster's token: pass --token-file or set WTRACE_TOKEN".into(),
        )
    })
}

/// Resolves `HOST:PORT`.
async fn resolve(addr: &str) -> Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .map_err(|e| Error::Cluster(format!("cannot resolve {addr}: {e}")))?
        .next()
        .ok_or_else(|| Error::Cluster(format!("{addr} resolves to no address")))
}

pub(super) async fn connect_driver(addr: &str, credentials: &Credentials) -> Result<DriverLink> {
    let socket = resolve(addr).await?;
    let hello = Hello::Driver {
        token: cluster_token(credentials)?,
        pid: std::process::id(),
    };
    let (reader, writer, config) = match protocol::open(socket, &hello).await {
        Ok(opened) => opened,
        Err(OpenError::Unreachable(e)) => {
            return Err(Error::Cluster(format!(
                "cannot reach a wtrace cluster at {addr}: {e}; start one with `wtrace start --head`"
            )));
        }
        Err(OpenError::Refused(why)) => return Err(Error::Cluster(why)),
        Err(error) => return Err(Error::Cluster(format!("cluster at {addr}: {error}"))),
    };
    let (tx, requests) = mpsc::unbounded_channel();
    let (replies, rx) = mpsc::unbounded_channel();
    let (lost_tx, lost) = oneshot::channel();
    let closed = CancellationToken::new();
    tokio::spawn(write_loop(writer, requests, closed.clone(), |_| {}));
    tokio::spawn(read_loop::<ToDriver>(
        reader,
        replies,
        lost_tx,
        closed,
        "lost the cluster",
        "this driver could not send to it",
    ));
    Ok(DriverLink {
        config: *config,
        tx,
        rx,
        lost,
        job: None,
        detached: None,
    })
}

pub(super) async fn connect_worker(
    addr: &str,
    credentials: &Credentials,
    info: WorkerInfo,
    written: impl Fn(&FromWorker) + Send + Sync + 'static,
) -> Result<WorkerLink> {
    let socket = resolve(addr).await?;
    let worker_id = info.worker_id.clone();
    let hello = Hello::Worker {
        token: cluster_token(credentials)?,
        info,
        pid: std::process::id(),
    };
    let (reader, writer, config) = protocol::open(socket, &hello).await.map_err(|error| {
        Error::Cluster(format!(
            "worker {worker_id} could not join the head at {addr}: {error}"
        ))
    })?;
    let (tx, messages) = mpsc::unbounded_channel();
    let (leases, rx) = mpsc::unbounded_channel();
    let (lost_tx, lost) = oneshot::channel();
    let closed = CancellationToken::new();
    let sent = tokio::spawn(write_loop(writer, messages, closed.clone(), written));
    tokio::spawn(read_loop::<ToWorker>(
        reader,
        leases,
        lost_tx,
        closed,
        "lost the head",
        "could not send to the head",
    ));
    Ok(WorkerLink {
        config: *config,
        tx,
        rx,
        lost,
        sent,
    })
}

/// Hands what the head sends to `out` until the head closes the connection
/// (nothing told on `lost`), the connection fails, a write failed
/// (`closed`), or no one listens on `out`. A failed connection is closed
/// both ways; otherwise the writer still sends what is queued (a stopping
/// worker's last results).
async fn read_loop<T: serde::de::DeserializeOwned>(
    mut reader: Reader<tokio::net::tcp::OwnedReadHalf>,
    out: mpsc::UnboundedSender<T>,
    lost: oneshot::Sender<String>,
    closed: CancellationToken,
    lost_what: &str,
    unsendable: &str,
) {
    let reason = loop {
        tokio::select! {
            message = reader.recv::<T>() => match message {
                Ok(Some(message)) => {
                    if out.send(message).is_err() {
                        break None;
                    }
                }
                Ok(None) => break None,
                Err(e) => {
                    closed.cancel();
                    break Some(format!("{lost_what}: {e}"));
                }
            },
            () = closed.cancelled() => break Some(format!("{lost_what}: {unsendable}")),
            () = out.closed() => break None,
        }
    };
    if let Some(reason) = reason {
        let _ = lost.send(reason);
    }
}

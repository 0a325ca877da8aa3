//! Messages between drivers, the head and workers, and how they are framed:
//! a 4-byte length, then the message in postcard.

use std::time::Duration;

use futures::{SinkExt, StreamExt as _};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use crate::capabilities::provider::WorkerInfo;
use crate::config::{ExportPolicy, Grants, Limits};
use crate::outcome::TaskOutput;
use crate::runtime::Digest;

/// Bumped whenever a message changes shape.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest frame: big enough for an 18 MB Python component, with room.
const MAX_FRAME: usize = 256 << 20;

/// The first message on every connection to the head.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Hello {
    /// A worker process joining.
    Worker {
        /// [`PROTOCOL_VERSION`] of the sender.
        version: u32,
        /// The cluster's secret.
        token: String,
        /// Who the worker is.
        info: WorkerInfo,
        /// Its process id.
        pid: u32,
    },
    /// A driver (the CLI or [`crate::cluster::Client`]) connecting.
    Driver {
        /// [`PROTOCOL_VERSION`] of the sender.
        version: u32,
        /// The cluster's secret.
        token: String,
        /// Its process id.
        pid: u32,
    },
}

/// A tracing startup hook as the head distributes it: by digest, with bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookBlob {
    /// How the user named it.
    pub display: String,
    /// Its file name.
    pub name: String,
    /// The export to call.
    pub export: String,
    /// sha256 of the bytes.
    pub digest: Digest,
    /// The component.
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// What every process of a cluster shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// The job (session) id.
    pub job_id: String,
    /// The tracing startup hook, if any.
    pub hook: Option<HookBlob>,
    /// Per-task limits.
    pub limits: Limits,
    /// Where hooks may export spans.
    pub policy: ExportPolicy,
    /// What tasks may reach beyond the default sandbox.
    pub grants: Grants,
    /// How often a task is retried when its worker dies.
    pub max_retries: u32,
}

/// A component a task runs, sent with its bytes the first time a worker needs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentRef {
    /// sha256 of the bytes.
    pub digest: Digest,
    /// Its file name, for spans and messages.
    pub name: String,
    /// The bytes, when the receiver may not have them yet.
    #[serde(with = "serde_bytes")]
    pub bytes: Option<Vec<u8>>,
}

/// A task handed to a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lease {
    /// The head's id for the task.
    pub lease_id: u64,
    /// The task's id as its submitter named it (`wtrace.task_id`).
    pub task_id: String,
    /// 0 for the first attempt, then 1, 2… after worker deaths.
    pub attempt: u32,
    /// The component.
    pub component: ComponentRef,
    /// The export to call.
    pub function: String,
    /// The whole invocation in WAVE.
    pub invocation: String,
    /// The submit span, as a W3C traceparent (never among the arguments).
    pub traceparent: Option<String>,
    /// W3C tracestate accompanying the traceparent.
    pub tracestate: Option<String>,
    /// How deep the task is nested (0 when a driver submitted it).
    pub depth: u32,
}

/// A finished task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Done {
    /// The id the receiver knows the task by: the lease id for the head, the
    /// tag for a driver.
    pub id: u64,
    /// The pid of the worker that ran it.
    pub pid: u32,
    /// How long the worker spent on it, in µs.
    pub busy_us: u32,
    /// Its result and output.
    pub output: TaskOutput,
}

/// Head → worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToWorker {
    /// The cluster's configuration; the worker runs the hook, then says `Ready`.
    Welcome(Box<ClusterConfig>),
    /// Tasks to run, in order.
    Run(Vec<Lease>),
    /// Results of tasks the worker's tasks submitted, by the worker's tags.
    Results(Vec<Done>),
    /// Finish the current task, flush spans, exit.
    Shutdown,
}

/// Worker → head.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromWorker {
    /// The hook ran; tasks may come.
    Ready,
    /// The hook failed; the worker exits.
    HookFailed(String),
    /// Tasks finished.
    Done(Vec<Done>),
    /// Tasks submitted by running tasks.
    Submit(Vec<Submission>),
    /// How many of the worker's tasks are waiting for nested tasks; they
    /// hold no CPU, so the head may lease the worker more.
    Waiting(u32),
}

/// A task a driver submits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submission {
    /// The driver's own id for it; results come back with it.
    pub tag: u64,
    /// The task's id (`wtrace.task_id`), unique across the cluster.
    pub task_id: String,
    /// The component, uploaded before.
    pub component: Digest,
    /// The export to call.
    pub function: String,
    /// The whole invocation in WAVE.
    pub invocation: String,
    /// The submit span.
    pub traceparent: Option<String>,
    /// Its tracestate.
    pub tracestate: Option<String>,
    /// 0 from a driver, else the submitting task's depth + 1.
    pub depth: u32,
}

/// Driver → head.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromDriver {
    /// A component, stored by digest.
    Upload {
        /// Its file name.
        name: String,
        /// The bytes.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Tasks to queue.
    Submit(Vec<Submission>),
    /// Ask for [`ClusterStatus`].
    Status,
    /// Stop the cluster: workers flush and exit, then the head.
    Shutdown,
}

/// Head → driver.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToDriver {
    /// Accepted; what the driver needs to trace like the workers.
    Welcome(Box<ClusterConfig>),
    /// Finished tasks, by the driver's tags.
    Results(Vec<Done>),
    /// The answer to `Status`.
    Status(Box<ClusterStatus>),
    /// The connection is refused or the request was bad.
    Error(String),
    /// The cluster stopped.
    Stopped,
}

/// A worker as `wtrace status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Its id.
    pub worker_id: String,
    /// Its node.
    pub node_id: String,
    /// Its process id.
    pub pid: u32,
    /// Whether its hook ran.
    pub ready: bool,
    /// Tasks leased to it.
    pub running: usize,
    /// Tasks it finished.
    pub done: u64,
}

/// The state of a cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The job id.
    pub job_id: String,
    /// The hook as named and its digest.
    pub hook: Option<(String, Digest)>,
    /// Connected workers.
    pub workers: Vec<WorkerStatus>,
    /// Tasks waiting for a worker.
    pub queued: usize,
    /// Tasks on workers.
    pub running: usize,
    /// Tasks finished.
    pub done: u64,
    /// Components stored.
    pub components: usize,
    /// Seconds since the head started.
    pub uptime: Duration,
    /// Workers whose hook failed: (worker id, pid, message).
    pub failed_hooks: Vec<(String, u32, String)>,
}

/// Reads length-prefixed postcard messages.
pub struct Reader<R> {
    inner: FramedRead<R, LengthDelimitedCodec>,
}

/// Writes length-prefixed postcard messages.
pub struct Writer<W> {
    inner: FramedWrite<W, LengthDelimitedCodec>,
}

impl<R> std::fmt::Debug for Reader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reader")
    }
}

impl<W> std::fmt::Debug for Writer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Reads from `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner: FramedRead::new(inner, codec()),
        }
    }

    /// The next message; `None` at a clean end of stream.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> std::io::Result<Option<T>> {
        match self.inner.next().await {
            None => Ok(None),
            Some(frame) => {
                let frame = frame?;
                postcard::from_bytes(&frame).map(Some).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("bad message: {e}"),
                    )
                })
            }
        }
    }
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// Writes to `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner: FramedWrite::new(inner, codec()),
        }
    }

    /// Queues a message without flushing.
    pub async fn feed<T: Serialize>(&mut self, message: &T) -> std::io::Result<()> {
        let bytes = postcard::to_allocvec(message)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        self.inner.feed(tokio_util::bytes::Bytes::from(bytes)).await
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        SinkExt::<tokio_util::bytes::Bytes>::flush(&mut self.inner).await
    }

    /// Sends one message now.
    pub async fn send<T: Serialize>(&mut self, message: &T) -> std::io::Result<()> {
        self.feed(message).await?;
        self.flush().await
    }
}

//! Messages between drivers, the head and workers, and how they are framed:
//! a 4-byte length, then the message in postcard.
//!
//! Every connection opens with a handshake: the connecting side sends one
//! [`Hello`] frame (the [`MAGIC`], its [`PROTOCOL_VERSION`], then the hello
//! in postcard), the head answers one [`HelloReply`]. Until the token is
//! proven, the head reads frames of at most [`MAX_HELLO_FRAME`] bytes, so a
//! stranger can make it hold almost nothing. Every later message is bounded
//! by construction: batches are split by bytes ([`BATCH_BYTES`]) as well as
//! by count, and no single item can exceed [`MAX_FRAME`].

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
pub const PROTOCOL_VERSION: u32 = 3;

/// The first bytes of every connection's first frame: what tells a wtrace
/// peer from a stranger speaking something else.
pub const MAGIC: &[u8; 6] = b"wtrace";

/// Largest frame the head reads before the token is proven.
pub const MAX_HELLO_FRAME: usize = 16 << 10;

/// Largest frame: a lease carrying the largest component and invocation,
/// with room.
pub const MAX_FRAME: usize = 256 << 20;

/// Bytes of payload a batched message (leases, results, submissions) holds
/// before the batch is split: many small tasks share a message, large ones
/// go alone.
pub const BATCH_BYTES: usize = 8 << 20;

/// Longest function name or task id a submission may carry.
pub const MAX_NAME_BYTES: usize = 1024;

/// Largest component a cluster stores.
pub const MAX_COMPONENT_BYTES: usize = 192 << 20;

/// How long a new connection has to prove it holds the token.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The first message on every connection to the head, after the magic and
/// protocol version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Hello {
    /// A worker process joining.
    Worker {
        /// The cluster's secret.
        token: String,
        /// Who the worker is.
        info: WorkerInfo,
        /// Its process id.
        pid: u32,
    },
    /// A driver (the CLI or [`crate::cluster::Client`]) connecting.
    Driver {
        /// The cluster's secret.
        token: String,
        /// Its process id.
        pid: u32,
    },
}

impl Hello {
    /// The handshake frame: magic, version, hello.
    pub fn encode(&self) -> Vec<u8> {
        let mut frame = MAGIC.to_vec();
        frame.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        frame.extend(postcard::to_allocvec(self).expect("a hello serializes"));
        frame
    }

    /// Reads a handshake frame; the error is the refusal to send back.
    pub fn decode(frame: &[u8]) -> Result<Self, String> {
        let Some(rest) = frame.strip_prefix(MAGIC.as_slice()) else {
            return Err(
                "this is a wtrace cluster, and the peer does not speak its protocol".into(),
            );
        };
        let (version, body) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| "truncated wtrace hello".to_owned())?;
        let version = u32::from_le_bytes(*version);
        if version != PROTOCOL_VERSION {
            return Err(format!(
                "protocol version {version} is not this head's ({PROTOCOL_VERSION}); use the same \
                 wtrace build everywhere"
            ));
        }
        postcard::from_bytes(body).map_err(|e| format!("malformed wtrace hello: {e}"))
    }
}

/// The head's answer to a [`Hello`]. `Refused` stays the first variant in
/// every version, so a peer of another version still reads why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum HelloReply {
    /// The connection is refused: wrong token, wrong version, a stranger.
    Refused(String),
    /// Accepted; the cluster's configuration.
    Welcome(Box<ClusterConfig>),
}

/// Splits `items` into batches of at most `max_count` items and, unless an
/// item is larger on its own, at most `max_bytes` bytes by `size`.
pub fn batches<T>(
    items: Vec<T>,
    max_count: usize,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> Vec<Vec<T>> {
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0usize;
    for item in items {
        let item_bytes = size(&item);
        if !current.is_empty()
            && (current.len() >= max_count || bytes.saturating_add(item_bytes) > max_bytes)
        {
            batches.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes = bytes.saturating_add(item_bytes);
        current.push(item);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
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
    /// Bytes of components the head stores (`--component-store`).
    pub component_store: u64,
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
    /// Its last worker died before saying whether it had started it: the
    /// worker says so ([`FromWorker::Started`]) before running it.
    pub confirm_start: bool,
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

/// About how many bytes a message takes on the wire: what the head's
/// per-connection send budget counts.
pub trait WireSize {
    /// The size in bytes, roughly.
    fn wire_size(&self) -> usize;
}

impl WireSize for ToWorker {
    fn wire_size(&self) -> usize {
        match self {
            Self::Run(leases) => leases.iter().map(Lease::wire_size).sum(),
            Self::Results(results) => results.iter().map(Done::wire_size).sum(),
            Self::Forget(digests) => digests.len() * 72,
            Self::Shutdown => 1,
        }
    }
}

impl WireSize for ToDriver {
    fn wire_size(&self) -> usize {
        match self {
            Self::Results(results) => results.iter().map(Done::wire_size).sum(),
            Self::Status(status) => 512 + status.workers.len() * 128,
            Self::Stopped => 1,
        }
    }
}

impl Done {
    /// About how many bytes it takes on the wire: what batches are split by.
    pub fn wire_size(&self) -> usize {
        self.output.wire_size() + 32
    }
}

impl Lease {
    /// About how many bytes it takes on the wire.
    pub fn wire_size(&self) -> usize {
        self.invocation.len()
            + self.function.len()
            + self.task_id.len()
            + self.component.bytes.as_ref().map_or(0, Vec::len)
            + self.component.name.len()
            + 256
    }
}

impl Submission {
    /// About how many bytes it takes on the wire.
    pub fn wire_size(&self) -> usize {
        self.invocation.len()
            + self.function.len()
            + self.task_id.len()
            + self.tracestate.as_ref().map_or(0, String::len)
            + 192
    }
}

/// Head → worker, after the [`HelloReply`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToWorker {
    /// Tasks to run, in order.
    Run(Vec<Lease>),
    /// Results of tasks the worker's tasks submitted, by the worker's tags.
    Results(Vec<Done>),
    /// Components the head will send again (with their bytes) if a later
    /// lease needs them: the worker drops them, so it holds a bounded set.
    Forget(Vec<Digest>),
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
    /// How many leases the worker has started so far (it starts them in the
    /// order they were leased): only started tasks count an attempt when
    /// their worker dies.
    Started(u64),
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
    /// From a worker: the lease id of the running task that submits it. The
    /// head counts depth and tree budgets from it, not from anything a peer
    /// claims.
    pub parent: Option<u64>,
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

/// Head → driver, after the [`HelloReply`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToDriver {
    /// Finished tasks, by the driver's tags.
    Results(Vec<Done>),
    /// The answer to `Status`.
    Status(Box<ClusterStatus>),
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
    /// Tasks it has started and not finished.
    pub running: usize,
    /// Tasks leased to it, started or waiting their turn there.
    pub leased: usize,
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
    /// Their bytes, of the `--component-store` quota.
    pub component_bytes: u64,
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

fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(max_frame)
        .new_codec()
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Reads from `inner`, frames of up to [`MAX_FRAME`] bytes.
    pub fn new(inner: R) -> Self {
        Self::with_limit(inner, MAX_FRAME)
    }

    /// Reads from `inner`, frames of up to `max_frame` bytes: a longer one
    /// announced is an error at once, before any of it is buffered.
    pub fn with_limit(inner: R, max_frame: usize) -> Self {
        Self {
            inner: FramedRead::new(inner, codec(max_frame)),
        }
    }

    /// Changes the largest frame read from now on.
    pub fn set_limit(&mut self, max_frame: usize) {
        self.inner.decoder_mut().set_max_frame_length(max_frame);
    }

    /// The next frame as it came; `None` at a clean end of stream.
    pub async fn recv_frame(&mut self) -> std::io::Result<Option<tokio_util::bytes::BytesMut>> {
        self.inner.next().await.transpose()
    }

    /// The next message; `None` at a clean end of stream.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> std::io::Result<Option<T>> {
        match self.recv_frame().await? {
            None => Ok(None),
            Some(frame) => postcard::from_bytes(&frame).map(Some).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad message: {e}"))
            }),
        }
    }
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// Writes to `inner`, frames of up to [`MAX_FRAME`] bytes.
    pub fn new(inner: W) -> Self {
        Self {
            inner: FramedWrite::new(inner, codec(MAX_FRAME)),
        }
    }

    /// Sends one frame as it is (the handshake's [`Hello`]).
    pub async fn send_frame(&mut self, frame: Vec<u8>) -> std::io::Result<()> {
        self.inner.send(tokio_util::bytes::Bytes::from(frame)).await
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

/// Why a connection to the head did not open.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// Nothing answers at the address.
    Unreachable(std::io::Error),
    /// The head answered, and refused: what it said.
    Refused(String),
    /// The connection broke during the handshake.
    Lost(std::io::Error),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(e) => write!(f, "cannot connect: {e}"),
            Self::Refused(why) => write!(f, "the head refused the connection: {why}"),
            Self::Lost(e) => write!(f, "the connection broke during the handshake: {e}"),
        }
    }
}

/// A connection to the head, its handshake done.
pub(crate) type Opened = (
    Reader<tokio::net::tcp::OwnedReadHalf>,
    Writer<tokio::net::tcp::OwnedWriteHalf>,
    Box<ClusterConfig>,
);

/// Connects to the head at `addr` and says `hello`; the head's welcome
/// carries the cluster's configuration.
pub(crate) async fn open(addr: std::net::SocketAddr, hello: &Hello) -> Result<Opened, OpenError> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(OpenError::Unreachable)?;
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let mut reader = Reader::new(read);
    let mut writer = Writer::new(write);
    writer
        .send_frame(hello.encode())
        .await
        .map_err(OpenError::Lost)?;
    match reader.recv::<HelloReply>().await {
        Ok(Some(HelloReply::Welcome(config))) => Ok((reader, writer, config)),
        Ok(Some(HelloReply::Refused(why))) => Err(OpenError::Refused(why)),
        Ok(None) => Err(OpenError::Lost(std::io::ErrorKind::UnexpectedEof.into())),
        Err(e) => Err(OpenError::Lost(e)),
    }
}

/// Writes what arrives on `rx` in bursts (one flush per burst) until `rx`
/// closes or `closed` is cancelled. A write that fails (an oversized frame,
/// a broken pipe) cancels `closed`, so the connection's reader stops too and
/// the peer sees it leave: no half-open connection.
pub(crate) async fn write_loop<W: AsyncWrite + Unpin, T: Serialize>(
    mut writer: Writer<W>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
    closed: tokio_util::sync::CancellationToken,
    written: impl Fn(&T),
) {
    let written = async {
        while let Some(message) = rx.recv().await {
            writer.feed(&message).await?;
            written(&message);
            while let Ok(message) = rx.try_recv() {
                writer.feed(&message).await?;
                written(&message);
            }
            writer.flush().await?;
        }
        std::io::Result::Ok(())
    };
    tokio::select! {
        result = written => {
            if result.is_err() {
                closed.cancel();
            }
        }
        () = closed.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_split_by_count_and_by_bytes_and_keep_order() {
        let sizes = vec![3, 3, 3, 10, 1, 1, 1, 1, 1];
        let split = batches(sizes, 3, 8, |n| *n);
        assert_eq!(
            split,
            vec![vec![3, 3], vec![3], vec![10], vec![1, 1, 1], vec![1, 1]]
        );
        assert!(batches(Vec::<usize>::new(), 3, 8, |n| *n).is_empty());
    }

    #[test]
    fn hellos_name_what_is_wrong_with_them() {
        let hello = Hello::Driver {
            token: "t".into(),
            pid: 7,
        };
        assert!(matches!(
            Hello::decode(&hello.encode()),
            Ok(Hello::Driver { pid: 7, .. })
        ));
        let stranger = Hello::decode(b"GET / HTTP/1.1\r\n").unwrap_err();
        assert!(
            stranger.contains("does not speak its protocol"),
            "{stranger}"
        );
        let mut old = hello.encode();
        old[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&1u32.to_le_bytes());
        let version = Hello::decode(&old).unwrap_err();
        assert!(
            version.contains(&format!(
                "protocol version 1 is not this head's ({PROTOCOL_VERSION})"
            )),
            "{version}"
        );
        assert!(
            Hello::decode(b"wtrace\x02\0")
                .unwrap_err()
                .contains("truncated")
        );
    }

    #[tokio::test]
    async fn an_announced_frame_over_the_limit_fails_before_it_is_buffered() {
        let (mut ours, theirs) = tokio::io::duplex(64);
        let mut reader = Reader::with_limit(theirs, MAX_HELLO_FRAME);
        // A stranger announces a 1 GiB frame and sends four bytes of it.
        tokio::io::AsyncWriteExt::write_all(&mut ours, &[0x40, 0, 0, 0, 1, 2, 3, 4])
            .await
            .unwrap();
        let error = reader.recv_frame().await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_write_that_fails_closes_the_connection() {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let (ours_read, ours_write) = tokio::io::split(ours);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let closed = tokio_util::sync::CancellationToken::new();
        let writing = tokio::spawn(write_loop(
            Writer::new(ours_write),
            rx,
            closed.clone(),
            |_| {},
        ));
        // A message too large for any frame: the write fails.
        tx.send(vec![0u8; MAX_FRAME + 1]).unwrap();
        tokio::time::timeout(Duration::from_secs(5), closed.cancelled())
            .await
            .expect("the failed write cancels the connection");
        writing.await.unwrap();
        drop(ours_read);
        // The peer sees the end of the stream, not a silence.
        let mut peer = Reader::new(theirs);
        let end = tokio::time::timeout(Duration::from_secs(5), peer.recv::<Vec<u8>>()).await;
        assert!(matches!(end, Ok(Ok(None))), "{end:?}");
    }
}

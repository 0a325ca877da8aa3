//! The driver side: connect to a cluster, upload components, submit tasks
//! inside `<function> submit` spans, and collect their results.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use opentelemetry::trace::{Span as _, TraceContextExt as _};
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, oneshot, watch};

use super::messages::{
    self, ClusterConfig, ClusterStatus, DetachedJob, Done, FromDriver, Submission, ToDriver,
};
use super::transport::{self, Credentials, DriverLink, Endpoint};
use crate::capabilities::provider::WorkerInfo;
use crate::error::{Error, Result};
use crate::exec::hook::HookComponent;
use crate::exec::task::record_error;
use crate::ids::random_hex;
use crate::outcome::{TaskError, TaskErrorKind};
use crate::runtime::wave::Invocation;
use crate::runtime::{Digest, Runtime};
use crate::telemetry::Telemetry;
use crate::telemetry::context::WireContext;
use crate::telemetry::task_span::{self, SubmitSpan};

mod actors;

pub use actors::{ActorHandle, ActorOptions};

type Pending = Arc<Mutex<FxHashMap<u64, oneshot::Sender<Done>>>>;

/// Submissions per message: large enough to amortize a message, small
/// enough that workers start before a big submission is fully prepared.
const SUBMIT_CHUNK: usize = 256;

/// A connection to a wtrace cluster.
///
/// ```no_run
/// # async fn demo() -> wtrace::Result<()> {
/// use wtrace::cluster::Client;
///
/// let client = Client::connect(&"127.0.0.1:7733".parse()?, "token", None).await?;
/// let component = client.upload_file("hello.wasm".as_ref()).await?;
/// let task = client.submit(&component, &"my-function()".parse()?, &opentelemetry::Context::new()).await?;
/// let result = task.get().await?;
/// assert_eq!(result.value.unwrap(), "1");
/// client.flush();
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    requests: mpsc::UnboundedSender<FromDriver>,
    pending: Pending,
    status: Mutex<VecDeque<oneshot::Sender<ClusterStatus>>>,
    detaching: Mutex<VecDeque<oneshot::Sender<std::result::Result<String, String>>>>,
    /// The id this driver's results are kept under, were it to detach.
    job: Option<String>,
    /// A reattached driver's tasks, until [`Client::reattach`] takes them.
    reattached: Mutex<Vec<TaskRef>>,
    stopped: watch::Receiver<Option<String>>,
    config: Arc<ClusterConfig>,
    telemetry: Option<Telemetry>,
    components: Mutex<HashMap<Digest, String>>,
    uploaded: Mutex<HashSet<Digest>>,
    driver_id: String,
    next_tag: AtomicU64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("job_id", &self.inner.config.job_id)
            .finish_non_exhaustive()
    }
}

/// A submitted task; [`TaskRef::get`] waits for its result.
#[derive(Debug)]
pub struct TaskRef {
    tag: u64,
    function: String,
    task_id: String,
    rx: oneshot::Receiver<Done>,
}

/// What a task produced.
#[derive(Debug, Clone)]
pub struct TaskResult {
    /// The export that ran.
    pub function: String,
    /// The result in WAVE, or the task's error.
    pub value: std::result::Result<String, TaskError>,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: Vec<u8>,
    /// The pid of the worker that ran it (0 when none did).
    pub pid: u32,
    /// Output of the nested tasks it waited for.
    pub nested: Vec<crate::outcome::OutputChunk>,
}

impl TaskRef {
    /// The export this task calls.
    pub fn function(&self) -> &str {
        &self.function
    }

    /// Its id (`wtrace.task_id` on its spans).
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// Waits for the task to finish.
    pub async fn get(self) -> Result<TaskResult> {
        let done = self.rx.await.map_err(|_| {
            Error::Cluster(format!(
                "lost the cluster before task {} finished",
                self.function
            ))
        })?;
        Ok(TaskResult {
            function: self.function,
            value: done.output.result,
            stdout: done.output.stdout,
            stderr: done.output.stderr,
            pid: done.pid,
            nested: done.output.nested,
        })
    }
}

impl Client {
    /// Connects to the cluster at `endpoint` (a token alone is credentials
    /// enough for a wtrace head). `telemetry` traces
    /// submissions; when `None`, the cluster's own tracing startup hook is
    /// run in this process (as every worker does) and its provider used.
    pub async fn connect(
        endpoint: &Endpoint,
        credentials: impl Into<Credentials>,
        telemetry: Option<Telemetry>,
    ) -> Result<Self> {
        let link = transport::connect_driver(endpoint, &credentials.into(), None).await?;
        Self::over(link, telemetry.map(Some), None).await
    }

    /// Connects without tracing submissions at all.
    pub async fn connect_untraced(
        endpoint: &Endpoint,
        credentials: impl Into<Credentials>,
    ) -> Result<Self> {
        let link = transport::connect_driver(endpoint, &credentials.into(), None).await?;
        Self::over(link, Some(None), None).await
    }

    /// Reattaches to a job a driver detached from ([`Client::detach`]):
    /// its tasks, in the order they were submitted, whose results come as
    /// they are (or were) finished. Untraced: the job's submit spans were
    /// the detached driver's.
    pub async fn reattach(
        endpoint: &Endpoint,
        credentials: impl Into<Credentials>,
        job: &str,
    ) -> Result<(Self, Vec<TaskRef>)> {
        let link = transport::connect_driver(endpoint, &credentials.into(), Some(job)).await?;
        let client = Self::over(link, Some(None), None).await?;
        let tasks = std::mem::take(&mut *client.inner.reattached.lock().unwrap());
        Ok((client, tasks))
    }

    /// Connects, running the cluster's hook here, after checking that it is
    /// `hook`: a driver given a different hook than its cluster's is an
    /// error, not silently ignored.
    pub async fn connect_with_hook(
        endpoint: &Endpoint,
        credentials: impl Into<Credentials>,
        hook: &HookComponent,
    ) -> Result<Self> {
        let link = transport::connect_driver(endpoint, &credentials.into(), None).await?;
        Self::over(link, None, Some(hook)).await
    }

    /// A client over `link`; `telemetry` as in [`Client::connect`] (`None`:
    /// run the cluster's hook), wrapped (`Some(None)`: untraced).
    pub(crate) async fn over(
        mut link: DriverLink,
        telemetry: Option<Option<Telemetry>>,
        expected_hook: Option<&HookComponent>,
    ) -> Result<Self> {
        let config: Arc<ClusterConfig> = Arc::new(link.config.clone());
        if let Some(expected) = expected_hook {
            check_same_hook(&config, expected)?;
        }
        let telemetry = match telemetry {
            Some(given) => given,
            None => match &config.hook {
                None => None,
                Some(spec) => {
                    let bytes = fetch_hook(&mut link, &spec.digest).await?;
                    // Hooks use synchronous WASI, which must not run on an async thread.
                    let config = config.clone();
                    let handle = tokio::runtime::Handle::current();
                    tokio::task::spawn_blocking(move || run_cluster_hook(&config, bytes, handle))
                        .await
                        .map_err(|e| Error::Cluster(format!("the hook's thread failed: {e}")))??
                }
            },
        };

        let DriverLink {
            tx: requests,
            rx: replies,
            lost,
            job,
            detached,
            ..
        } = link;
        let pending: Pending = Arc::default();
        // A reattached job's tasks wait before any result is read.
        let (reattached, next_tag) = match detached {
            Some(detached) => reattached_tasks(&detached, &pending),
            None => (Vec::new(), 1),
        };
        let (stopped_tx, stopped) = watch::channel(None);
        let inner = Arc::new(Inner {
            requests,
            pending: pending.clone(),
            status: Mutex::default(),
            detaching: Mutex::default(),
            job,
            reattached: Mutex::new(reattached),
            stopped,
            config,
            telemetry,
            components: Mutex::new(HashMap::new()),
            uploaded: Mutex::new(HashSet::new()),
            driver_id: random_hex(4),
            next_tag: AtomicU64::new(next_tag),
        });
        tokio::spawn(read_loop(
            replies,
            lost,
            Arc::downgrade(&inner),
            pending,
            stopped_tx,
        ));
        Ok(Self { inner })
    }

    /// The cluster's configuration (hook, limits, job id).
    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    /// This driver's tracing, if any.
    pub fn telemetry(&self) -> Option<&Telemetry> {
        self.inner.telemetry.as_ref()
    }

    /// Uploads a component (once per digest) and returns its digest.
    pub async fn upload(&self, name: &str, bytes: Vec<u8>) -> Result<Digest> {
        if bytes.len() > messages::MAX_COMPONENT_BYTES {
            return Err(Error::Component {
                path: name.into(),
                cause: format!(
                    "it is {} MiB; a cluster stores components of at most {} MiB",
                    bytes.len() >> 20,
                    messages::MAX_COMPONENT_BYTES >> 20
                ),
            });
        }
        let digest = Digest::of(&bytes);
        self.inner
            .components
            .lock()
            .unwrap()
            .insert(digest, name.to_owned());
        if self.inner.uploaded.lock().unwrap().insert(digest) {
            self.request(FromDriver::Upload {
                name: name.to_owned(),
                bytes,
            })?;
        }
        Ok(digest)
    }

    /// Reads and uploads a component file.
    pub async fn upload_file(&self, path: &Path) -> Result<Digest> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        self.upload(&name, bytes).await
    }

    /// Submits one task inside a `<function> submit` span, a child of
    /// `parent`'s span (or a new trace).
    pub async fn submit(
        &self,
        component: &Digest,
        invocation: &Invocation,
        parent: &opentelemetry::Context,
    ) -> Result<TaskRef> {
        Ok(self
            .submit_many(component, std::slice::from_ref(invocation), parent)
            .await?
            .pop()
            .expect("one task per invocation"))
    }

    /// Submits tasks in one message, each inside its own submit span.
    pub async fn submit_many(
        &self,
        component: &Digest,
        invocations: &[Invocation],
        parent: &opentelemetry::Context,
    ) -> Result<Vec<TaskRef>> {
        let name = self.component_name(component)?;
        // Values every submit span of this call shares, made once.
        let component_name = crate::attrs::text(name);
        let digest = crate::attrs::text(component.to_string());
        let mut refs = Vec::with_capacity(invocations.len());
        // Chunks go out as soon as they are ready, so workers start while
        // the rest is prepared.
        let chunks = messages::batches(
            invocations.iter().collect(),
            SUBMIT_CHUNK,
            messages::BATCH_BYTES,
            |invocation| invocation.text.len() + 192,
        );
        let traced = self.inner.telemetry.is_some();
        for chunk in chunks {
            let mut submissions = Vec::with_capacity(chunk.len());
            // Sized once: grown span by span, the chunk's spans (about 300
            // bytes each) were copied again at each of eight doublings.
            let mut spans = Vec::with_capacity(if traced { chunk.len() } else { 0 });
            let mut senders = Vec::with_capacity(chunk.len());
            for invocation in chunk {
                let tag = self.inner.next_tag.fetch_add(1, Ordering::Relaxed);
                let task_id = format!("{}-{tag}", self.inner.driver_id);
                let (tx, rx) = oneshot::channel();
                senders.push((tag, tx));
                let (context, span) = match &self.inner.telemetry {
                    Some(telemetry) => {
                        let span = task_span::start_submit(
                            telemetry.tracer(),
                            SubmitSpan {
                                function: &invocation.function,
                                component: component_name.clone(),
                                digest: digest.clone(),
                                task_id: &task_id,
                                depth: None,
                                actor: None,
                            },
                            parent,
                        );
                        (span.span_context().clone(), Some(span))
                    }
                    None => (parent.span().span_context().clone(), None),
                };
                submissions.push(Submission {
                    tag,
                    task_id: task_id.clone(),
                    component: *component,
                    function: invocation.function.clone(),
                    invocation: invocation.text.clone(),
                    trace: WireContext::of(&context),
                    parent: None,
                    actor: None,
                });
                spans.extend(span);
                refs.push(TaskRef {
                    tag,
                    function: invocation.function.clone(),
                    task_id,
                    rx,
                });
            }
            self.inner.pending.lock().unwrap().extend(senders);
            let sent = self.request(FromDriver::Submit(submissions));
            // The chunk's spans all end now: one clock read for them all.
            let now = std::time::SystemTime::now();
            for mut span in spans {
                if let Err(error) = &sent {
                    record_error(
                        &mut span,
                        &TaskError::new(TaskErrorKind::Cluster, "submit", error.to_string()),
                    );
                }
                span.end_with_timestamp(now);
            }
            sent?;
        }
        Ok(refs)
    }

    /// The cluster's state.
    pub async fn status(&self) -> Result<ClusterStatus> {
        let (tx, rx) = oneshot::channel();
        self.inner.status.lock().unwrap().push_back(tx);
        self.request(FromDriver::Status)?;
        rx.await
            .map_err(|_| Error::Cluster("lost the cluster while asking its status".into()))
    }

    /// Leaves `tasks` (submitted by this client) to run without it: the
    /// cluster keeps their results, and returns the job id a later driver
    /// fetches them by ([`Client::reattach`], `wtrace results JOB`). Once
    /// this returns, every task is stored on the cluster.
    pub async fn detach(&self, tasks: Vec<TaskRef>) -> Result<String> {
        if self.inner.job.is_none() {
            return Err(Error::Config(transport::tcp::DETACH_REFUSED.into()));
        }
        let job = DetachedJob::of(
            &self.inner.driver_id,
            tasks.iter().map(|task| (task.tag, task.function.as_str())),
        );
        {
            let mut pending = self.inner.pending.lock().unwrap();
            for task in &tasks {
                pending.remove(&task.tag);
            }
        }
        let (tx, rx) = oneshot::channel();
        self.inner.detaching.lock().unwrap().push_back(tx);
        self.request(FromDriver::Detach(job))?;
        rx.await
            .map_err(|_| Error::Cluster("lost the cluster while detaching".into()))?
            .map_err(Error::Cluster)
    }

    /// Stops the whole cluster: every worker flushes its spans and exits.
    /// Returns once the head reports every worker gone.
    pub async fn shutdown_cluster(&self) -> Result<()> {
        self.request(FromDriver::Shutdown)?;
        let mut stopped = self.inner.stopped.clone();
        let _ = stopped.wait_for(|s| s.is_some()).await;
        Ok(())
    }

    /// Yields the results of `tasks` as they finish, in completion order.
    ///
    /// ```no_run
    /// # async fn demo(client: wtrace::Client, component: wtrace::Digest) -> wtrace::Result<()> {
    /// use futures::StreamExt as _;
    ///
    /// let calls: Vec<wtrace::runtime::wave::Invocation> =
    ///     (0..100).map(|i| format!("add({i}, 1)").parse()).collect::<Result<_, _>>()?;
    /// let tasks = client.submit_many(&component, &calls, &opentelemetry::Context::new()).await?;
    /// let mut results = wtrace::Client::results(tasks);
    /// while let Some(result) = results.next().await {
    ///     println!("{}", result?.value.unwrap_or_else(|e| e.to_string()));
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn results(tasks: Vec<TaskRef>) -> impl futures::Stream<Item = Result<TaskResult>> {
        tasks
            .into_iter()
            .map(TaskRef::get)
            .collect::<futures::stream::FuturesUnordered<_>>()
    }

    /// Exports this driver's finished spans now.
    pub fn flush(&self) {
        if let Some(telemetry) = &self.inner.telemetry {
            let _ = telemetry.flush();
        }
    }

    fn request(&self, message: FromDriver) -> Result<()> {
        if let Some(reason) = self.inner.stopped.borrow().clone() {
            return Err(Error::Cluster(reason));
        }
        self.inner
            .requests
            .send(message)
            .map_err(|_| Error::Cluster("the connection to the cluster is closed".into()))
    }
}

fn check_same_hook(config: &ClusterConfig, expected: &HookComponent) -> Result<()> {
    let mismatch = |cluster: String| {
        Err(Error::Hook {
            hook: expected.display.clone(),
            cause: format!(
                "this driver's hook ({}) is not the cluster's ({cluster}); drop \
                 --tracing-startup-hook to use the cluster's, or restart the cluster with this one",
                expected.digest
            ),
        })
    };
    match &config.hook {
        None => mismatch("the cluster has no hook".into()),
        Some(hook) if hook.digest != expected.digest || hook.export != expected.export => {
            mismatch(format!("{}, {}", hook.display, hook.digest))
        }
        Some(_) => Ok(()),
    }
}

/// Asks the cluster for the hook's bytes, before anything else is asked.
async fn fetch_hook(link: &mut DriverLink, digest: &Digest) -> Result<Vec<u8>> {
    let lost = || Error::Cluster("lost the cluster while fetching its hook".into());
    link.tx
        .send(FromDriver::Fetch(*digest))
        .map_err(|_| lost())?;
    loop {
        match link.rx.recv().await.ok_or_else(lost)? {
            ToDriver::Blob(got, bytes) if got == *digest => {
                return bytes.ok_or_else(|| {
                    Error::Cluster(format!("the cluster does not have its hook ({digest})"))
                });
            }
            ToDriver::Stopped => return Err(Error::Cluster("the cluster has stopped".into())),
            _ => {}
        }
    }
}

/// The tasks of a reattached job, each waiting in `pending`, and the tag
/// after the last.
fn reattached_tasks(job: &DetachedJob, pending: &Pending) -> (Vec<TaskRef>, u64) {
    let mut pending = pending.lock().unwrap();
    let mut next = 1;
    let tasks = job
        .tasks()
        .map(|(tag, function)| {
            let (tx, rx) = oneshot::channel();
            pending.insert(tag, tx);
            next = next.max(tag + 1);
            TaskRef {
                tag,
                function: function.to_owned(),
                task_id: format!("{}-{tag}", job.driver_id),
                rx,
            }
        })
        .collect();
    (tasks, next)
}

/// Runs the cluster's hook in this driver process, as Ray does.
fn run_cluster_hook(
    config: &ClusterConfig,
    bytes: Vec<u8>,
    handle: tokio::runtime::Handle,
) -> Result<Option<Telemetry>> {
    let Some(spec) = &config.hook else {
        return Ok(None);
    };
    let runtime = Runtime::new(config.limits.clone(), crate::runtime::default_cache_dir())?;
    let hook = spec.with_bytes(bytes)?;
    let info = WorkerInfo {
        worker_id: "driver".into(),
        node_id: "driver".into(),
        job_id: config.job_id.clone(),
    };
    hook.run(&runtime, info, &config.policy, Some(handle))
        .map(Some)
}

async fn read_loop(
    mut replies: mpsc::UnboundedReceiver<ToDriver>,
    mut lost: transport::Lost,
    inner: std::sync::Weak<Inner>,
    pending: Pending,
    stopped: watch::Sender<Option<String>>,
) {
    let reason = loop {
        match replies.recv().await {
            Some(ToDriver::Results(results)) => {
                let mut pending = pending.lock().unwrap();
                for done in results {
                    if let Some(tx) = pending.remove(&done.id) {
                        let _ = tx.send(done);
                    }
                }
            }
            Some(ToDriver::Status(status)) => {
                if let Some(inner) = inner.upgrade()
                    && let Some(tx) = inner.status.lock().unwrap().pop_front()
                {
                    let _ = tx.send(*status);
                }
            }
            Some(ToDriver::Detached(answer)) => {
                if let Some(inner) = inner.upgrade()
                    && let Some(tx) = inner.detaching.lock().unwrap().pop_front()
                {
                    let _ = tx.send(answer);
                }
            }
            Some(ToDriver::Stopped) => break "the cluster has stopped".to_owned(),
            Some(ToDriver::Blob(..)) => {}
            None => {
                break lost
                    .try_recv()
                    .unwrap_or_else(|_| "the cluster closed the connection".to_owned());
            }
        }
    };
    let _ = stopped.send(Some(reason));
    // Waiting tasks learn the cluster is gone from their dropped senders.
    pending.lock().unwrap().clear();
}

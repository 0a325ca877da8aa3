//! A worker process: joins the head, runs the cluster's tracing startup hook,
//! then runs leased tasks one at a time on an executor thread, each in a
//! fresh instance inside its `execute` span.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::protocol::{
    ClusterConfig, Done, FromWorker, Hello, Lease, PROTOCOL_VERSION, Reader, ToWorker, Writer,
};
use crate::bridge::parse_traceparent;
use crate::engine::{Digest, Runtime};
use crate::error::{Error, Result};
use crate::hook::HookComponent;
use crate::provider::WorkerInfo;
use crate::task::{
    self, TaskComponent, TaskContext, TaskError, TaskErrorKind, TaskLinker, TaskOutput,
};
use crate::telemetry::Telemetry;

/// How a worker process finds its head and names itself.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The head's address.
    pub head: SocketAddr,
    /// The cluster's secret.
    pub token: String,
    /// This worker's id.
    pub worker_id: String,
    /// This node's id.
    pub node_id: String,
    /// Where compiled components are cached.
    pub cache_dir: Option<PathBuf>,
}

/// Runs a worker until the head tells it to stop or goes away, then flushes
/// its spans. Blocks; call from a process's main thread.
pub fn run(options: WorkerOptions) -> Result<()> {
    // Ctrl-C in a terminal reaches the whole process group; the driver
    // decides when workers stop, so that every span gets flushed.
    ignore_sigint();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("wtrace-worker-io")
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the worker's runtime", e))?;
    let handle = rt.handle().clone();
    let result = rt.block_on(serve(options, handle));
    rt.shutdown_timeout(Duration::from_secs(5));
    result
}

#[allow(unsafe_code)]
fn ignore_sigint() {
    // SAFETY: setting a signal's disposition to SIG_IGN has no handler to race with.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
}

async fn serve(options: WorkerOptions, handle: tokio::runtime::Handle) -> Result<()> {
    let stream = TcpStream::connect(options.head).await.map_err(|e| {
        Error::Cluster(format!(
            "worker {} cannot reach the head at {}: {e}",
            options.worker_id, options.head
        ))
    })?;
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let mut reader = Reader::new(read);
    let mut writer = Writer::new(write);
    let lost = |e: std::io::Error| Error::Cluster(format!("lost the head: {e}"));
    let pid = std::process::id();
    writer
        .send(&Hello::Worker {
            version: PROTOCOL_VERSION,
            token: options.token.clone(),
            info: WorkerInfo {
                worker_id: options.worker_id.clone(),
                node_id: options.node_id.clone(),
                job_id: String::new(),
            },
            pid,
        })
        .await
        .map_err(lost)?;
    let config: Box<ClusterConfig> = match reader.recv::<ToWorker>().await.map_err(lost)? {
        Some(ToWorker::Welcome(config)) => config,
        _ => return Ok(()),
    };

    let runtime = Runtime::new(config.limits.clone(), options.cache_dir.clone())?;
    let info = WorkerInfo {
        worker_id: options.worker_id.clone(),
        node_id: options.node_id.clone(),
        job_id: config.job_id.clone(),
    };
    let telemetry = match &config.hook {
        None => None,
        Some(blob) => {
            let hook = HookComponent {
                display: blob.display.clone(),
                name: PathBuf::from(&blob.name),
                export: blob.export.clone(),
                digest: blob.digest.clone(),
                bytes: blob.bytes.clone().into(),
            };
            // Hooks use synchronous WASI, which must not run on an async thread.
            let (rt, info, policy, handle) = (
                runtime.clone(),
                info.clone(),
                config.policy.clone(),
                handle.clone(),
            );
            let ran =
                tokio::task::spawn_blocking(move || hook.run(&rt, info, &policy, Some(handle)))
                    .await
                    .map_err(|e| Error::Cluster(format!("the hook's thread failed: {e}")))?;
            match ran {
                Ok(telemetry) => Some(telemetry),
                Err(error) => {
                    let _ = writer
                        .send(&FromWorker::HookFailed(error.to_string()))
                        .await;
                    return Err(error);
                }
            }
        }
    };
    let linker = TaskLinker::new(&runtime)?;
    writer.send(&FromWorker::Ready).await.map_err(lost)?;

    let stop = Arc::new(AtomicBool::new(false));
    let (lease_tx, lease_rx) = std::sync::mpsc::channel::<Vec<Lease>>();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let executor = {
        let stop = stop.clone();
        let telemetry = telemetry.clone();
        let worker = Executor {
            linker,
            telemetry,
            info,
            components: HashMap::new(),
            abort: stop.clone(),
        };
        std::thread::Builder::new()
            .name("wtrace-executor".into())
            .spawn(move || worker.run(lease_rx, done_tx, &stop))
            .map_err(|e| Error::io("cannot start the executor thread", e))?
    };
    let results = tokio::spawn(async move {
        while let Some(done) = done_rx.recv().await {
            let mut batch = vec![done];
            while let Ok(done) = done_rx.try_recv() {
                batch.push(done);
            }
            if writer.send(&FromWorker::Done(batch)).await.is_err() {
                break;
            }
        }
    });

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::io("cannot handle SIGTERM", e))?;
    loop {
        tokio::select! {
            message = reader.recv::<ToWorker>() => match message {
                Ok(Some(ToWorker::Run(leases))) => {
                    if lease_tx.send(leases).is_err() {
                        break;
                    }
                }
                Ok(Some(ToWorker::Welcome(_))) => {}
                // Shutdown, or the head is gone: finish the running task only.
                Ok(Some(ToWorker::Shutdown)) | Ok(None) | Err(_) => break,
            },
            _ = terminate.recv() => break,
        }
    }
    stop.store(true, Ordering::SeqCst);
    drop(lease_tx);
    let _ = tokio::task::spawn_blocking(move || executor.join()).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), results).await;
    if let Some(telemetry) = telemetry {
        // Exporters may block (OTLP over HTTP); keep the runtime free.
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    }
    Ok(())
}

/// Runs leases in order on its own thread.
struct Executor {
    linker: TaskLinker,
    telemetry: Option<Telemetry>,
    info: WorkerInfo,
    components: HashMap<Digest, Arc<TaskComponent>>,
    abort: Arc<AtomicBool>,
}

impl Executor {
    fn run(
        mut self,
        leases: std::sync::mpsc::Receiver<Vec<Lease>>,
        done: mpsc::UnboundedSender<Done>,
        stop: &AtomicBool,
    ) {
        let pid = std::process::id();
        for batch in leases {
            for lease in batch {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let output = self.run_one(&lease);
                if done
                    .send(Done {
                        id: lease.lease_id,
                        pid,
                        output,
                    })
                    .is_err()
                {
                    return;
                }
            }
        }
    }

    fn run_one(&mut self, lease: &Lease) -> TaskOutput {
        let component = self.component(lease);
        let parent = lease
            .traceparent
            .as_deref()
            .and_then(|tp| parse_traceparent(tp, lease.tracestate.as_deref()));
        let cx = TaskContext {
            task_id: &lease.task_id,
            job_id: &self.info.job_id,
            worker_id: &self.info.worker_id,
            node_id: &self.info.node_id,
            parent,
            attempt: lease.attempt,
            abort: Some(self.abort.clone()),
        };
        match component {
            Ok(component) => task::execute(
                &self.linker,
                self.telemetry.as_ref(),
                &component,
                &lease.function,
                &lease.invocation,
                &cx,
            ),
            Err(error) => {
                let error = TaskError::new(
                    TaskErrorKind::Instantiate,
                    &lease.function,
                    error.to_string(),
                );
                task::record_failure(self.telemetry.as_ref(), &lease.component.name, &error, &cx);
                TaskOutput {
                    result: Err(error),
                    stdout: Vec::new(),
                    stderr: Vec::new(),
                }
            }
        }
    }

    fn component(&mut self, lease: &Lease) -> Result<Arc<TaskComponent>> {
        if let Some(component) = self.components.get(&lease.component.digest) {
            return Ok(component.clone());
        }
        let bytes = lease.component.bytes.as_deref().ok_or_else(|| {
            Error::Cluster(format!(
                "the head did not send component {} to this worker",
                lease.component.digest
            ))
        })?;
        let component = Arc::new(self.linker.load(&lease.component.name, bytes)?);
        self.components
            .insert(lease.component.digest.clone(), component.clone());
        Ok(component)
    }
}

//! Span exporters a tracing startup hook can choose, and the rules on where
//! they may send spans.

/// Builds an OTLP exporter of one signal after checking its endpoint
/// against the policy: `$exporter` is `opentelemetry_otlp::SpanExporter`,
/// `LogExporter` or `MetricExporter`, whose builders differ in type but not
/// in shape; `$signal` (`traces`, `logs`, `metrics`) names the HTTP path.
macro_rules! build_otlp {
    ($exporter:ty, $signal:literal, $endpoint:expr, $protocol:expr, $headers:expr, $timeout:expr, $policy:expr) => {{
        use opentelemetry_otlp::{
            WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _,
        };
        let endpoint: &String = $endpoint;
        let headers: &[(String, String)] = $headers;
        (|| -> Result<$exporter, String> {
            $crate::telemetry::export::check_endpoint(endpoint, $policy)?;
            let timeout = $timeout.unwrap_or(std::time::Duration::from_secs(10));
            let built = match $protocol {
                $crate::telemetry::export::OtlpProtocol::Grpc => <$exporter>::builder()
                    .with_tonic()
                    .with_endpoint(endpoint.clone())
                    .with_timeout(timeout)
                    .with_metadata($crate::telemetry::export::grpc_metadata(headers)?)
                    .build(),
                http => <$exporter>::builder()
                    .with_http()
                    .with_protocol($crate::telemetry::export::http_wire(*http))
                    .with_endpoint($crate::telemetry::export::http_signal_endpoint(
                        endpoint, $signal,
                    ))
                    .with_timeout(timeout)
                    .with_headers(
                        headers
                            .iter()
                            .cloned()
                            .collect::<std::collections::HashMap<_, _>>(),
                    )
                    .build(),
            };
            built.map_err(|e| {
                format!(
                    "cannot build the OTLP {} exporter for {endpoint}: {e}",
                    $signal
                )
            })
        })()
    }};
}

mod console;
mod file;
pub mod logs;
pub mod metrics;
mod otlp_json;

use std::path::{Component as PathComponent, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanExporter, SpanProcessor,
};

pub use console::ConsoleExporter;
pub use file::{FileBatchProcessor, FileExporter, SpanFile};
pub use otlp_json::LineEncoder;

use crate::config::ExportPolicy;
use crate::telemetry::loss::{self, Ledger};

/// Where a hook asked spans to go, before the host checks and builds it.
#[derive(Debug, Clone, PartialEq)]
pub enum ExporterSpec {
    /// Standard error, one line per span.
    Console,
    /// OTLP-JSON lines in a file; `{pid}`, `{worker_id}`, `{node_id}` expanded.
    File {
        /// The path template.
        path: String,
    },
    /// An OTLP receiver.
    Otlp {
        /// Base endpoint (`http://host:port`).
        endpoint: String,
        /// Wire format.
        protocol: OtlpProtocol,
        /// Extra headers / gRPC metadata.
        headers: Vec<(String, String)>,
        /// Export timeout (`None`: 10 s).
        timeout: Option<Duration>,
    },
}

/// OTLP wire formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// gRPC (port 4317 by convention).
    Grpc,
    /// HTTP with protobuf bodies (port 4318).
    HttpProtobuf,
    /// HTTP with JSON bodies (port 4318).
    HttpJson,
}

/// Values substituted into file exporter paths.
#[derive(Debug, Clone)]
pub struct PathVars<'a> {
    /// This process's id.
    pub pid: u32,
    /// `driver` or the worker's id.
    pub worker_id: &'a str,
    /// The node's id.
    pub node_id: &'a str,
}

/// One of the exporters wtrace supports.
#[derive(Debug)]
pub enum AnyExporter {
    /// See [`ConsoleExporter`].
    Console(ConsoleExporter),
    /// See [`FileExporter`].
    File(Box<FileExporter>),
    /// The OpenTelemetry OTLP exporter.
    Otlp(Box<opentelemetry_otlp::SpanExporter>),
}

impl AnyExporter {
    /// Spans per export from a batch processor. A file takes small batches,
    /// whose spans are still in cache when encoded; an OTLP receiver takes
    /// large ones, since each is a request.
    pub fn batch_size(&self) -> usize {
        match self {
            Self::Console(_) | Self::File(_) => 256,
            Self::Otlp(_) => 2048,
        }
    }
}

impl SpanExporter for AnyExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        match self {
            Self::Console(e) => e.export(batch).await,
            Self::File(e) => e.export(batch).await,
            Self::Otlp(e) => e.export(batch).await,
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        match self {
            Self::Console(e) => e.shutdown_with_timeout(timeout),
            Self::File(e) => e.shutdown_with_timeout(timeout),
            Self::Otlp(e) => e.shutdown_with_timeout(timeout),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        match self {
            Self::Console(e) => e.force_flush(),
            Self::File(e) => e.force_flush(),
            Self::Otlp(e) => e.force_flush(),
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        match self {
            Self::Console(e) => e.set_resource(resource),
            Self::File(e) => e.set_resource(resource),
            Self::Otlp(e) => e.set_resource(resource),
        }
    }
}

/// An exporter run by a batch processor's background thread, at a lower CPU
/// priority than tasks: under load, tasks get the CPU first and the queue
/// absorbs the spans until the exporter catches up. It counts down the
/// spans [`Backpressure`] counted up.
///
/// Up to [`EXPORTS_IN_FLIGHT`] exports are under way at once: an OTLP
/// export waits for the receiver's answer, and meanwhile the next batch is
/// converted and sent rather than the receiver and this thread taking
/// turns. Every export is still driven from this thread (an export returns
/// once its batch is sent and fewer than the most are unanswered), and a
/// flush or shutdown waits for all of them.
pub struct Background {
    exporter: Arc<AnyExporter>,
    queued: Arc<AtomicUsize>,
    ledger: Option<Arc<Ledger>>,
    in_flight: Arc<InFlight>,
}

/// Exports under way. The batch processor does not tell its exporter of a
/// flush, so [`Backpressure`] settles them itself after one.
#[derive(Default)]
struct InFlight(std::sync::Mutex<FuturesUnordered<BoxFuture<'static, ()>>>);

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InFlight")
    }
}

impl InFlight {
    fn push(&self, export: BoxFuture<'static, ()>) {
        crate::sync::lock(&self.0).push(export);
    }

    /// Drives the exports under way until at most `most` are left.
    fn settled(&self, most: usize) -> impl Future<Output = ()> + Send + '_ {
        std::future::poll_fn(move |cx| {
            let mut in_flight = crate::sync::lock(&self.0);
            loop {
                match in_flight.poll_next_unpin(cx) {
                    Poll::Ready(Some(())) => continue,
                    Poll::Ready(None) => return Poll::Ready(()),
                    Poll::Pending if in_flight.len() <= most => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
    }

    /// Waits for every export under way (outside any executor).
    fn settle(&self) {
        futures::executor::block_on(self.settled(0));
    }
}

/// Exports a [`Background`] exporter keeps under way at once.
pub const EXPORTS_IN_FLIGHT: usize = 4;

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Background")
            .field("exporter", &self.exporter)
            .finish_non_exhaustive()
    }
}

thread_local! {
    static LOWERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Lowers the calling thread's scheduling priority (nice +10), once.
#[allow(unsafe_code)]
fn lower_this_threads_priority() {
    if LOWERED.with(|l| l.replace(true)) {
        return;
    }
    // SAFETY: gettid(2) and setpriority(2) on this thread's own id have no
    // memory-safety preconditions; failure leaves the priority unchanged.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
}

impl SpanExporter for Background {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        lower_this_threads_priority();
        let count = batch.len();
        let (exporter, ledger, queued) = (
            self.exporter.clone(),
            self.ledger.clone(),
            self.queued.clone(),
        );
        self.in_flight.push(Box::pin(async move {
            let result = exporter.export(batch).await;
            if let Some(ledger) = &ledger {
                ledger.exported(count, &result);
            }
            queued.fetch_sub(count.min(queued.load(Ordering::Relaxed)), Ordering::Relaxed);
        }));
        // Sends this batch (its first poll), and waits while too many are
        // unanswered. A failure is the ledger's to count and say.
        self.in_flight.settled(EXPORTS_IN_FLIGHT - 1).await;
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.in_flight.settle();
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.in_flight.settle();
        self.exporter.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Set before any export, while nothing else holds the exporter.
        if let Some(exporter) = Arc::get_mut(&mut self.exporter) {
            exporter.set_resource(resource);
        }
    }
}

/// A batch processor that slows span producers down instead of dropping
/// spans: when its queue is nearly full, ending a span waits (up to
/// [`loss::MAX_WAIT`]) for the exporter to catch up. Past that wait — an exporter
/// that is stuck, say — the batch processor drops spans, and the SDK says
/// so on stderr.
#[derive(Debug)]
pub struct Backpressure {
    inner: BatchSpanProcessor,
    queued: Arc<AtomicUsize>,
    in_flight: Arc<InFlight>,
    limit: usize,
}

impl Backpressure {
    /// A batch processor over `exporter` with a queue of `queue_size` spans.
    pub fn new(
        exporter: AnyExporter,
        queue_size: usize,
        config: BatchConfigBuilder,
        ledger: Option<Arc<Ledger>>,
    ) -> Self {
        let queued = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(InFlight::default());
        let inner = BatchSpanProcessor::builder(Background {
            exporter: Arc::new(exporter),
            queued: queued.clone(),
            ledger,
            in_flight: in_flight.clone(),
        })
        .with_batch_config(config.with_max_queue_size(queue_size).build())
        .build();
        Self {
            inner,
            queued,
            in_flight,
            // Room for what the exporter holds while exporting.
            limit: queue_size.saturating_sub(queue_size / 4),
        }
    }
}

impl SpanProcessor for Backpressure {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        loss::wait_for_room(|| self.queued.load(Ordering::Relaxed) >= self.limit);
        self.queued.fetch_add(1, Ordering::Relaxed);
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        let result = self.inner.force_flush();
        self.in_flight.settle();
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Spans a queued batch processor holds. The queue takes its memory up
/// front (the SDK's bounded channel), so it is sized to smooth bursts, not
/// to hold them: when it is nearly full, span producers wait for the
/// exporter ([`Backpressure`]) rather than lose spans.
pub const BATCH_QUEUE_SIZE: usize = 1 << 14;

/// The longest a span waits in a queued batch processor when spans come
/// slowly: an OTLP receiver hears of a quiet process's spans this soon.
pub const BATCH_DELAY: Duration = Duration::from_millis(100);

/// The processor a hook's `batch` choice makes. A file gets a
/// [`FileBatchProcessor`], written by whoever asks (a worker, before its
/// results leave); other exporters a [`BATCH_QUEUE_SIZE`] queue with
/// backpressure, exported in the exporter's batch size at least every
/// [`BATCH_DELAY`].
pub fn batch_processor(exporter: AnyExporter) -> BatchProcessor {
    counted_batch_processor(exporter, None)
}

/// [`batch_processor`], its exports counted in `ledger`.
pub fn counted_batch_processor(
    exporter: AnyExporter,
    ledger: Option<Arc<Ledger>>,
) -> BatchProcessor {
    match exporter {
        AnyExporter::File(file) => {
            BatchProcessor::File(FileBatchProcessor::new((*file).counted(ledger)))
        }
        exporter => {
            let batch_size = exporter.batch_size();
            BatchProcessor::Queued(Backpressure::new(
                exporter,
                BATCH_QUEUE_SIZE,
                BatchConfigBuilder::default()
                    .with_max_export_batch_size(batch_size)
                    .with_scheduled_delay(BATCH_DELAY),
                ledger,
            ))
        }
    }
}

/// Where an exporter built from `spec` sends one signal (`traces`, `logs`,
/// `metrics`: the HTTP path), as a loss report names it.
pub fn target(spec: &ExporterSpec, vars: &PathVars<'_>, signal: &str) -> String {
    match spec {
        ExporterSpec::Console => "the console".into(),
        ExporterSpec::File { path } => format!("file {}", expand_path(path, vars).display()),
        ExporterSpec::Otlp {
            endpoint, protocol, ..
        } => match protocol {
            OtlpProtocol::Grpc => format!("OTLP grpc to {endpoint}"),
            http => format!(
                "OTLP {} to {}",
                protocol_name(*http),
                http_signal_endpoint(endpoint, signal)
            ),
        },
    }
}

/// The protocol's name in `OTEL_EXPORTER_OTLP_PROTOCOL`.
fn protocol_name(protocol: OtlpProtocol) -> &'static str {
    match protocol {
        OtlpProtocol::Grpc => "grpc",
        OtlpProtocol::HttpProtobuf => "http/protobuf",
        OtlpProtocol::HttpJson => "http/json",
    }
}

/// The OTLP exporter's wire format for an HTTP protocol.
fn http_wire(protocol: OtlpProtocol) -> opentelemetry_otlp::Protocol {
    match protocol {
        OtlpProtocol::HttpJson => opentelemetry_otlp::Protocol::HttpJson,
        _ => opentelemetry_otlp::Protocol::HttpBinary,
    }
}

/// Headers as gRPC metadata; the error names a header that cannot be one.
fn grpc_metadata(
    headers: &[(String, String)],
) -> Result<opentelemetry_otlp::tonic_types::metadata::MetadataMap, String> {
    let mut map = http::HeaderMap::new();
    for (k, v) in headers {
        let name = http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("invalid OTLP header name {k:?}"))?;
        let value = http::HeaderValue::from_str(v)
            .map_err(|_| format!("invalid value for OTLP header {k:?}"))?;
        map.insert(name, value);
    }
    Ok(opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(map))
}

/// See [`batch_processor`].
#[derive(Debug)]
pub enum BatchProcessor {
    /// Spans to a file, written on demand.
    File(FileBatchProcessor),
    /// Spans queued for a background exporter.
    Queued(Backpressure),
}

impl BatchProcessor {
    /// The file, for a file processor: what [`crate::Telemetry::sync_files`]
    /// writes.
    pub fn file(&self) -> Option<SpanFile> {
        match self {
            Self::File(processor) => Some(processor.file()),
            Self::Queued(_) => None,
        }
    }
}

impl SpanProcessor for BatchProcessor {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        match self {
            Self::File(p) => p.on_start(span, cx),
            Self::Queued(p) => p.on_start(span, cx),
        }
    }

    fn on_end(&self, span: SpanData) {
        match self {
            Self::File(p) => p.on_end(span),
            Self::Queued(p) => p.on_end(span),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        match self {
            Self::File(p) => p.force_flush(),
            Self::Queued(p) => p.force_flush(),
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        match self {
            Self::File(p) => p.shutdown_with_timeout(timeout),
            Self::Queued(p) => p.shutdown_with_timeout(timeout),
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        match self {
            Self::File(p) => p.set_resource(resource),
            Self::Queued(p) => p.set_resource(resource),
        }
    }
}

/// Checks `spec` against `policy` and builds the exporter. The error, shown
/// to the hook, says what was refused and which flag would allow it.
///
/// gRPC exporters must be built inside a Tokio runtime, which then drives
/// their connections for the life of the exporter.
pub fn build(
    spec: &ExporterSpec,
    policy: &ExportPolicy,
    vars: &PathVars<'_>,
) -> Result<AnyExporter, String> {
    match spec {
        ExporterSpec::Console => Ok(AnyExporter::Console(ConsoleExporter::new())),
        ExporterSpec::File { path } => {
            let path = allowed_path(path, vars, policy)?;
            FileExporter::open(&path)
                .map(|file| AnyExporter::File(Box::new(file)))
                .map_err(|e| format!("cannot open span file {}: {e}", path.display()))
        }
        ExporterSpec::Otlp {
            endpoint,
            protocol,
            headers,
            timeout,
        } => build_otlp!(
            opentelemetry_otlp::SpanExporter,
            "traces",
            endpoint,
            protocol,
            headers,
            timeout,
            policy
        )
        .map(|e| AnyExporter::Otlp(Box::new(e))),
    }
}

/// A file exporter's path, expanded and checked against `policy`.
fn allowed_path(
    template: &str,
    vars: &PathVars<'_>,
    policy: &ExportPolicy,
) -> Result<PathBuf, String> {
    let path = expand_path(template, vars);
    check_span_path(&path, policy)?;
    Ok(path)
}

/// Replaces `{pid}`, `{worker_id}` and `{node_id}` in a path template.
pub fn expand_path(template: &str, vars: &PathVars<'_>) -> PathBuf {
    PathBuf::from(
        template
            .replace("{pid}", &vars.pid.to_string())
            .replace("{worker_id}", vars.worker_id)
            .replace("{node_id}", vars.node_id),
    )
}

/// A span file must be absolute, free of `..`, and under an allowed directory.
fn check_span_path(path: &Path, policy: &ExportPolicy) -> Result<(), String> {
    let refuse = |why: &str| {
        Err(format!(
            "span file {} refused: {why}; allowed directories: {} (grant another with --allow-span-dir DIR)",
            path.display(),
            policy
                .span_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    };
    if !path.is_absolute() {
        return refuse("the path must be absolute");
    }
    if path
        .components()
        .any(|c| matches!(c, PathComponent::ParentDir))
    {
        return refuse("the path must not contain `..`");
    }
    if !policy.span_dirs.iter().any(|dir| path.starts_with(dir)) {
        return refuse("it is outside the allowed directories");
    }
    Ok(())
}

/// OTLP may go to loopback, or to hosts granted by the policy.
fn check_endpoint(endpoint: &str, policy: &ExportPolicy) -> Result<(), String> {
    let uri: http::Uri = endpoint.parse().map_err(|e| {
        format!("invalid OTLP endpoint {endpoint:?}: {e}; expected http://host:port")
    })?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(format!(
                "invalid OTLP endpoint {endpoint:?}: expected an http:// or https:// URL"
            ));
        }
    }
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback
        || policy
            .otlp_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host))
    {
        Ok(())
    } else {
        Err(format!(
            "OTLP endpoint {endpoint} refused: {host} is not loopback and not allowed \
             (grant it with --allow-otlp-host {host})"
        ))
    }
}

/// `OTEL_EXPORTER_OTLP_ENDPOINT` semantics for HTTP.
/// The base URL plus `/v1/<signal>`; an endpoint that already names a
/// signal's path (`…/v1/traces`) keeps its own when it is this signal's and
/// loses it otherwise.
fn http_signal_endpoint(endpoint: &str, signal: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    let own = format!("/v1/{signal}");
    if trimmed.ends_with(&own) {
        return trimmed.to_owned();
    }
    let base = ["/v1/traces", "/v1/logs", "/v1/metrics"]
        .iter()
        .find_map(|path| trimmed.strip_suffix(path))
        .unwrap_or(trimmed);
    format!("{base}{own}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> PathVars<'static> {
        PathVars {
            pid: 42,
            worker_id: "w-1",
            node_id: "n-a",
        }
    }

    #[test]
    fn span_files_must_stay_under_allowed_dirs() {
        let policy = ExportPolicy::default();
        assert!(check_span_path(Path::new("/tmp/spans/1.json"), &policy).is_ok());
        let outside = check_span_path(Path::new("/etc/passwd"), &policy).unwrap_err();
        assert!(outside.contains("--allow-span-dir"), "{outside}");
        let dotdot = check_span_path(Path::new("/tmp/spans/../x"), &policy).unwrap_err();
        assert!(dotdot.contains(".."), "{dotdot}");
        assert!(check_span_path(Path::new("spans/x"), &policy).is_err());
        assert!(check_span_path(Path::new("/tmp/spansX/1.json"), &policy).is_err());
    }

    #[test]
    fn otlp_goes_to_loopback_unless_granted() {
        let mut policy = ExportPolicy::default();
        assert!(check_endpoint("http://127.0.0.1:4317", &policy).is_ok());
        assert!(check_endpoint("http://localhost:4318", &policy).is_ok());
        assert!(check_endpoint("http://[::1]:4318", &policy).is_ok());
        let refused = check_endpoint("http://collector.example:4317", &policy).unwrap_err();
        assert!(
            refused.contains("--allow-otlp-host collector.example"),
            "{refused}"
        );
        policy.otlp_hosts.push("collector.example".into());
        assert!(check_endpoint("http://collector.example:4317", &policy).is_ok());
        assert!(check_endpoint("ftp://127.0.0.1", &policy).is_err());
    }

    #[test]
    fn paths_and_endpoints_expand() {
        assert_eq!(
            expand_path("/tmp/spans/{node_id}-{worker_id}-{pid}.json", &vars()),
            PathBuf::from("/tmp/spans/n-a-w-1-42.json")
        );
        assert_eq!(
            http_signal_endpoint("http://h:4318", "traces"),
            "http://h:4318/v1/traces"
        );
        assert_eq!(
            http_signal_endpoint("http://h:4318/v1/traces", "traces"),
            "http://h:4318/v1/traces"
        );
    }
}

//! The host side of `wtrace:tracing/provider`: what a tracing startup hook
//! asks for, collected while it runs and built into a tracer provider after.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::{
    BatchConfigBuilder as LogBatchConfigBuilder, BatchLogProcessor, SdkLoggerProvider,
    SimpleLogProcessor,
};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::resource::TelemetryResourceDetector;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SimpleSpanProcessor};

use crate::telemetry::loss::{Accounted, Counted, Ledger};
use wasmtime::component::{HasData, Linker};

use super::bindings::provider;
use crate::capabilities::tracer::key_value;
use crate::config::{ExportPolicy, Limits};
use crate::sandbox::host_call;
use crate::telemetry::export::logs::AnyLogExporter;
use crate::telemetry::export::metrics::MetricExporter;
use crate::telemetry::export::{
    self, AnyExporter, ExporterSpec, OtlpProtocol, PathVars, SpanFile, counted_batch_processor,
};

/// Which process a hook runs in.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkerInfo {
    /// `driver` in a submitting process, else the worker's id.
    pub worker_id: String,
    /// The node's id.
    pub node_id: String,
    /// The job (one `wtrace run`, or one cluster session).
    pub job_id: String,
}

/// A processor the hook added, its exporter (of spans or of log records)
/// already built, and the ledger its losses are counted in.
#[derive(Debug)]
pub enum ProcessorChoice<E> {
    /// Export each span or record as it ends.
    Simple(E, Arc<Ledger>),
    /// Export in batches from a background thread.
    Batch(E, Arc<Ledger>),
}

impl<E> ProcessorChoice<E> {
    fn ledger(&self) -> &Arc<Ledger> {
        match self {
            Self::Simple(_, ledger) | Self::Batch(_, ledger) => ledger,
        }
    }
}

/// Span processors, and log processors, a hook may add.
const MAX_PROCESSORS: usize = 8;

/// What the hook configured so far.
#[derive(Debug)]
pub struct ProviderState {
    info: WorkerInfo,
    policy: ExportPolicy,
    runtime: Option<tokio::runtime::Handle>,
    resource: Vec<KeyValue>,
    sampler: Option<Sampler>,
    processors: Vec<ProcessorChoice<AnyExporter>>,
    log_processors: Vec<ProcessorChoice<AnyLogExporter>>,
    /// Metric exporters, each with its export interval (zero: the default).
    metric_readers: Vec<(MetricExporter, Duration)>,
    instrumentations: Vec<String>,
}

impl ProviderState {
    /// Configuration for a hook running in the process described by `info`,
    /// whose exporters must obey `policy`. gRPC exporters are built inside
    /// `runtime`, which must outlive them.
    pub fn new(
        info: WorkerInfo,
        policy: ExportPolicy,
        runtime: Option<tokio::runtime::Handle>,
    ) -> Self {
        Self {
            info,
            policy,
            runtime,
            resource: Vec::new(),
            sampler: None,
            processors: Vec::new(),
            log_processors: Vec::new(),
            metric_readers: Vec::new(),
            instrumentations: Vec::new(),
        }
    }

    /// Builds the process's telemetry as the hook asked.
    pub fn build(mut self, limits: &Limits) -> crate::Telemetry {
        let ledgers = self
            .processors
            .iter()
            .map(ProcessorChoice::ledger)
            .chain(self.log_processors.iter().map(ProcessorChoice::ledger))
            .chain(self.metric_readers.iter().map(|(e, _)| e.ledger()))
            .cloned()
            .collect();
        let resource = self.resource();
        let logs = std::mem::take(&mut self.log_processors);
        let logger_provider = (!logs.is_empty()).then(|| logger_provider(logs, resource.clone()));
        let readers = std::mem::take(&mut self.metric_readers);
        let meter_provider =
            (!readers.is_empty()).then(|| meter_provider(readers, resource.clone()));
        let instrumentations = std::mem::take(&mut self.instrumentations);
        let (provider, files) = self.build_provider(resource, limits);
        crate::Telemetry::new(provider)
            .with_span_files(files)
            .with_ledgers(ledgers)
            .with_logs(logger_provider)
            .with_metrics(meter_provider)
            .with_instrumentations(instrumentations.iter().map(String::as_str))
    }

    /// Every span and log record's resource: who made it.
    fn resource(&mut self) -> Resource {
        let pid = std::process::id();
        let mut attributes = vec![
            KeyValue::new("service.name", "wtrace"),
            KeyValue::new(
                "service.instance.id",
                format!("{}/{}/{pid}", self.info.node_id, self.info.worker_id),
            ),
            KeyValue::new("process.pid", i64::from(pid)),
            KeyValue::new("host.name", host_name()),
            KeyValue::new("wtrace.worker_id", self.info.worker_id.clone()),
            KeyValue::new("wtrace.node_id", self.info.node_id.clone()),
        ];
        // Every process of a `wtrace run` or of one cluster session serves
        // one job.
        if !self.info.job_id.is_empty() {
            attributes.push(KeyValue::new("wtrace.job_id", self.info.job_id.clone()));
        }
        attributes.extend(std::mem::take(&mut self.resource));
        Resource::builder_empty()
            .with_detector(Box::new(TelemetryResourceDetector))
            .with_attributes(attributes)
            .build()
    }

    fn build_provider(
        self,
        resource: Resource,
        limits: &Limits,
    ) -> (SdkTracerProvider, Vec<SpanFile>) {
        let mut builder = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_id_generator(GuestIds::default())
            .with_sampler(
                self.sampler
                    .unwrap_or_else(|| Sampler::ParentBased(Box::new(Sampler::AlwaysOn))),
            )
            .with_max_attributes_per_span(limits.attributes_per_span)
            .with_max_events_per_span(limits.events_per_span);
        let mut files = Vec::new();
        for processor in self.processors {
            builder = match processor {
                ProcessorChoice::Simple(exporter, ledger) => {
                    let exporter = Counted::new(exporter, ledger.clone());
                    let processor = SimpleSpanProcessor::new(exporter);
                    builder.with_span_processor(Accounted::new(processor, ledger))
                }
                ProcessorChoice::Batch(exporter, ledger) => {
                    let processor = counted_batch_processor(exporter, Some(ledger.clone()));
                    files.extend(processor.file());
                    builder.with_span_processor(Accounted::new(processor, ledger))
                }
            };
        }
        (builder.build(), files)
    }

    fn exporter(&self, spec: provider::Exporter) -> Result<(AnyExporter, Arc<Ledger>), String> {
        let (spec, vars) = self.exporter_spec(spec)?;
        let _guard = self.runtime.as_ref().map(|rt| rt.enter());
        let ledger = Ledger::new(export::target(&spec, &vars, "traces"));
        export::build(&spec, &self.policy, &vars).map(|exporter| (exporter, ledger))
    }

    fn metric_exporter(&self, spec: provider::Exporter) -> Result<MetricExporter, String> {
        let (spec, vars) = self.exporter_spec(spec)?;
        let _guard = self.runtime.as_ref().map(|rt| rt.enter());
        export::metrics::build(&spec, &self.policy, &vars)
    }

    fn log_exporter(
        &self,
        spec: provider::Exporter,
    ) -> Result<(AnyLogExporter, Arc<Ledger>), String> {
        let (spec, vars) = self.exporter_spec(spec)?;
        let _guard = self.runtime.as_ref().map(|rt| rt.enter());
        let ledger = Ledger::for_logs(export::target(&spec, &vars, "logs"));
        export::logs::build(&spec, &self.policy, &vars).map(|exporter| (exporter, ledger))
    }

    /// What the hook asked for, checked for what this process can build.
    fn exporter_spec(
        &self,
        spec: provider::Exporter,
    ) -> Result<(ExporterSpec, PathVars<'_>), String> {
        let spec = match spec {
            provider::Exporter::Console => ExporterSpec::Console,
            provider::Exporter::File(file) => ExporterSpec::File { path: file.path },
            provider::Exporter::Otlp(otlp) => ExporterSpec::Otlp {
                endpoint: otlp.endpoint,
                protocol: match otlp.protocol {
                    provider::OtlpProtocol::Grpc => OtlpProtocol::Grpc,
                    provider::OtlpProtocol::HttpProtobuf => OtlpProtocol::HttpProtobuf,
                    provider::OtlpProtocol::HttpJson => OtlpProtocol::HttpJson,
                },
                headers: otlp.headers,
                timeout: (otlp.timeout_ms > 0)
                    .then(|| Duration::from_millis(u64::from(otlp.timeout_ms))),
            },
        };
        let vars = PathVars {
            pid: std::process::id(),
            worker_id: &self.info.worker_id,
            node_id: &self.info.node_id,
        };
        let grpc = matches!(
            spec,
            ExporterSpec::Otlp {
                protocol: OtlpProtocol::Grpc,
                ..
            }
        );
        if grpc && self.runtime.is_none() {
            return Err("OTLP over gRPC needs an async runtime, and this process gave its hook                         none; export with http/protobuf instead"
                .into());
        }
        Ok((spec, vars))
    }
}

/// The process's meter provider, with the hook's periodic readers.
fn meter_provider(
    readers: Vec<(MetricExporter, Duration)>,
    resource: Resource,
) -> SdkMeterProvider {
    let mut builder = SdkMeterProvider::builder().with_resource(resource);
    for (exporter, interval) in readers {
        builder = builder.with_reader(
            PeriodicReader::builder(exporter)
                .with_interval(interval)
                .build(),
        );
    }
    builder.build()
}

/// Records a batch log processor's queue holds, and records it exports at
/// once (the SDK's defaults, set here so the room below follows them).
const LOG_QUEUE_SIZE: usize = 2048;
const LOG_EXPORT_BATCH: usize = 512;
/// Records a batch log processor lets wait before emitting waits: its
/// queue less one export batch, as records taken into the batch being
/// exported count as queued until it is through.
const LOG_QUEUE_ROOM: u64 = (LOG_QUEUE_SIZE - LOG_EXPORT_BATCH) as u64;

/// The process's logger provider, with the hook's log processors.
fn logger_provider(
    processors: Vec<ProcessorChoice<AnyLogExporter>>,
    resource: Resource,
) -> SdkLoggerProvider {
    let mut builder = SdkLoggerProvider::builder().with_resource(resource);
    for processor in processors {
        builder = match processor {
            ProcessorChoice::Simple(exporter, ledger) => {
                let exporter = Counted::new(exporter, ledger.clone());
                builder
                    .with_log_processor(Accounted::new(SimpleLogProcessor::new(exporter), ledger))
            }
            ProcessorChoice::Batch(exporter, ledger) => {
                let exporter = Counted::new(exporter, ledger.clone());
                let config = LogBatchConfigBuilder::default()
                    .with_scheduled_delay(export::BATCH_DELAY)
                    .with_max_queue_size(LOG_QUEUE_SIZE)
                    .with_max_export_batch_size(LOG_EXPORT_BATCH)
                    .build();
                let processor = BatchLogProcessor::builder(exporter)
                    .with_batch_config(config)
                    .build();
                builder.with_log_processor(
                    Accounted::new(processor, ledger).waiting_for_room(LOG_QUEUE_ROOM),
                )
            }
        };
    }
    builder.build()
}

/// The provider interface as seen by host calls.
#[allow(missing_debug_implementations)]
pub struct Provider<'a> {
    /// The configuration being collected.
    pub state: &'a mut ProviderState,
}

impl provider::Host for Provider<'_> {
    fn current_worker(&mut self) -> wasmtime::Result<provider::WorkerInfo> {
        let _call = host_call("wtrace:tracing/provider#current-worker");
        Ok(provider::WorkerInfo {
            pid: std::process::id(),
            worker_id: self.state.info.worker_id.clone(),
            node_id: self.state.info.node_id.clone(),
            job_id: self.state.info.job_id.clone(),
        })
    }

    fn set_resource(
        &mut self,
        attributes: Vec<super::bindings::types::KeyValue>,
    ) -> wasmtime::Result<()> {
        let _call = host_call("wtrace:tracing/provider#set-resource");
        self.state
            .resource
            .extend(attributes.into_iter().map(|kv| key_value(kv, 4096)));
        Ok(())
    }

    fn set_sampler(&mut self, sampler: provider::Sampler) -> wasmtime::Result<()> {
        let _call = host_call("wtrace:tracing/provider#set-sampler");
        let ratio = |r: f64| if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) };
        self.state.sampler = Some(match sampler {
            provider::Sampler::AlwaysOn => Sampler::AlwaysOn,
            provider::Sampler::AlwaysOff => Sampler::AlwaysOff,
            provider::Sampler::TraceIdRatio(r) => Sampler::TraceIdRatioBased(ratio(r)),
            provider::Sampler::ParentBasedAlwaysOn => {
                Sampler::ParentBased(Box::new(Sampler::AlwaysOn))
            }
            provider::Sampler::ParentBasedAlwaysOff => {
                Sampler::ParentBased(Box::new(Sampler::AlwaysOff))
            }
            provider::Sampler::ParentBasedRatio(r) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio(r))))
            }
        });
        Ok(())
    }

    fn add_span_processor(
        &mut self,
        processor: provider::Processor,
    ) -> wasmtime::Result<Result<(), String>> {
        let _call = host_call("wtrace:tracing/provider#add-span-processor");
        if self.state.processors.len() >= MAX_PROCESSORS {
            return Ok(Err(format!(
                "a hook may add at most {MAX_PROCESSORS} span processors"
            )));
        }
        let choice = match processor {
            provider::Processor::Simple(spec) => self
                .state
                .exporter(spec)
                .map(|(e, ledger)| ProcessorChoice::Simple(e, ledger)),
            provider::Processor::Batch(spec) => self
                .state
                .exporter(spec)
                .map(|(e, ledger)| ProcessorChoice::Batch(e, ledger)),
        };
        Ok(choice.map(|choice| self.state.processors.push(choice)))
    }

    fn add_log_processor(
        &mut self,
        processor: provider::Processor,
    ) -> wasmtime::Result<Result<(), String>> {
        let _call = host_call("wtrace:tracing/provider#add-log-processor");
        if self.state.log_processors.len() >= MAX_PROCESSORS {
            return Ok(Err(format!(
                "a hook may add at most {MAX_PROCESSORS} log processors"
            )));
        }
        let choice = match processor {
            provider::Processor::Simple(spec) => self
                .state
                .log_exporter(spec)
                .map(|(e, ledger)| ProcessorChoice::Simple(e, ledger)),
            provider::Processor::Batch(spec) => self
                .state
                .log_exporter(spec)
                .map(|(e, ledger)| ProcessorChoice::Batch(e, ledger)),
        };
        Ok(choice.map(|choice| self.state.log_processors.push(choice)))
    }

    fn add_metric_reader(
        &mut self,
        reader: provider::MetricReader,
    ) -> wasmtime::Result<Result<(), String>> {
        let _call = host_call("wtrace:tracing/provider#add-metric-reader");
        if self.state.metric_readers.len() >= MAX_PROCESSORS {
            return Ok(Err(format!(
                "a hook may add at most {MAX_PROCESSORS} metric readers"
            )));
        }
        let interval = Duration::from_millis(u64::from(reader.interval_ms));
        Ok(self
            .state
            .metric_exporter(reader.exporter)
            .map(|exporter| self.state.metric_readers.push((exporter, interval))))
    }

    fn enable_instrumentation(&mut self, name: String) -> wasmtime::Result<Result<(), String>> {
        let _call = host_call("wtrace:tracing/provider#enable-instrumentation");
        if !crate::telemetry::INSTRUMENTATIONS.contains(&name.as_str()) {
            return Ok(Err(format!(
                "unknown instrumentation {name:?}; known: {}",
                crate::telemetry::INSTRUMENTATIONS.join(", ")
            )));
        }
        if !self.state.instrumentations.contains(&name) {
            self.state.instrumentations.push(name);
        }
        Ok(Ok(()))
    }
}

struct ProviderData;

impl HasData for ProviderData {
    type Data<'a> = Provider<'a>;
}

/// Adds `wtrace:tracing/provider` to `linker`.
pub fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> Provider<'_>,
) -> wasmtime::Result<()> {
    provider::add_to_linker::<T, ProviderData>(linker, view)
}

/// This machine's host name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Span and trace ids: random, except for spans a guest already identified
/// (through `wasi:otel`), which keep the guest's ids so the guest's own
/// children and propagated contexts stay valid.
///
/// [`with_guest_ids`] sets the ids for spans started on this thread inside
/// its closure; the SDK tracer asks the generator for each new span's id
/// (and, for a root span, trace id) as it builds it.
#[derive(Debug, Default)]
pub struct GuestIds {
    random: opentelemetry_sdk::trace::RandomIdGenerator,
}

thread_local! {
    static NEXT_IDS: std::cell::Cell<Option<(opentelemetry::trace::TraceId, opentelemetry::trace::SpanId)>> =
        const { std::cell::Cell::new(None) };
}

/// Runs `start` (which starts one span) with the ids that span must get.
pub fn with_guest_ids<T>(
    trace_id: opentelemetry::trace::TraceId,
    span_id: opentelemetry::trace::SpanId,
    start: impl FnOnce() -> T,
) -> T {
    NEXT_IDS.with(|ids| ids.set(Some((trace_id, span_id))));
    let started = start();
    NEXT_IDS.with(|ids| ids.set(None));
    started
}

impl opentelemetry_sdk::trace::IdGenerator for GuestIds {
    fn new_trace_id(&self) -> opentelemetry::trace::TraceId {
        NEXT_IDS
            .with(|ids| ids.get().map(|(trace, _)| trace))
            .unwrap_or_else(|| self.random.new_trace_id())
    }

    fn new_span_id(&self) -> opentelemetry::trace::SpanId {
        NEXT_IDS
            .with(|ids| ids.get().map(|(_, span)| span))
            .unwrap_or_else(|| self.random.new_span_id())
    }
}

//! A process's telemetry: the tracer and logger providers its startup hook
//! configured, the exporters it may choose, trace context across
//! processes, lost telemetry, and the SDK's own warnings.

pub mod context;
pub mod diagnostics;
pub mod export;
pub mod logs;
pub mod loss;
pub mod metrics;
pub mod task_span;

use opentelemetry::InstrumentationScope;
use opentelemetry::logs::LoggerProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::logs::{SdkLogger, SdkLoggerProvider};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use crate::error::{Error, Result};

/// The host instrumentations a hook may enable: `http-client` makes each
/// outgoing `wasi:http` request of a task a CLIENT span.
pub const INSTRUMENTATIONS: &[&str] = &["http-client"];

/// The tracer provider of this process, and the tracer wtrace's own spans
/// (submit, execute) and guest spans are made with.
#[derive(Debug, Clone)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    http_client: bool,
    /// The files batch processors write on demand.
    files: std::sync::Arc<[export::SpanFile]>,
    /// What became of the spans bound for each exporter.
    ledgers: std::sync::Arc<[std::sync::Arc<loss::Ledger>]>,
    /// The logger provider, when the hook added log processors, and the
    /// logger task output and guest records go to.
    logs: Option<(SdkLoggerProvider, std::sync::Arc<SdkLogger>)>,
    /// The meter provider, when the hook added metric readers, and the
    /// instruments tasks are recorded with.
    metrics: Option<(SdkMeterProvider, std::sync::Arc<metrics::TaskMetrics>)>,
}

impl Telemetry {
    /// Wraps a provider (the one a hook configured, or one built by hand, for
    /// instance with an in-memory exporter in tests).
    pub fn new(provider: SdkTracerProvider) -> Self {
        let scope = InstrumentationScope::builder("wtrace")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let tracer = provider.tracer_with_scope(scope);
        Self {
            provider,
            tracer,
            http_client: false,
            files: std::sync::Arc::new([]),
            ledgers: std::sync::Arc::new([]),
            logs: None,
            metrics: None,
        }
    }

    /// Adds the meter provider (none: nothing is measured). Call after
    /// [`Telemetry::with_ledgers`]: the exporters' ledgers are observed.
    pub fn with_metrics(mut self, provider: Option<SdkMeterProvider>) -> Self {
        self.metrics = provider.map(|provider| {
            let instruments = metrics::TaskMetrics::new(&provider, self.ledgers.clone());
            (provider, std::sync::Arc::new(instruments))
        });
        self
    }

    /// The instruments tasks are recorded with, when the hook chose a
    /// metric reader.
    pub fn metrics(&self) -> Option<&std::sync::Arc<metrics::TaskMetrics>> {
        self.metrics.as_ref().map(|(_, instruments)| instruments)
    }

    /// Adds the logger provider (none: log records are not made at all).
    pub fn with_logs(mut self, provider: Option<SdkLoggerProvider>) -> Self {
        self.logs = provider.map(|provider| {
            let scope = InstrumentationScope::builder("wtrace")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build();
            let logger = provider.logger_with_scope(scope);
            (provider, std::sync::Arc::new(logger))
        });
        self
    }

    /// The logger, when the hook chose where log records go (shared: each
    /// store's log holds it).
    pub fn logger(&self) -> Option<&std::sync::Arc<SdkLogger>> {
        self.logs.as_ref().map(|(_, logger)| logger)
    }

    /// Adds the ledgers of the provider's processors, for
    /// [`Telemetry::losses`].
    pub fn with_ledgers(mut self, ledgers: Vec<std::sync::Arc<loss::Ledger>>) -> Self {
        self.ledgers = ledgers.into();
        self
    }

    /// The spans lost so far, one entry per exporter that lost any: after
    /// [`Telemetry::shutdown`], every loss.
    pub fn losses(&self) -> Vec<loss::Loss> {
        self.ledgers.iter().filter_map(|l| l.loss()).collect()
    }

    /// Adds the files of the provider's file batch processors, for
    /// [`Telemetry::sync_files`].
    pub fn with_span_files(mut self, files: Vec<export::SpanFile>) -> Self {
        self.files = files.into();
        self
    }

    /// Writes every span ended so far to this process's span files, before
    /// returning: a worker calls it before results leave, so a delivered
    /// result implies its task's spans are on disk. Cheap when nothing waits;
    /// OTLP and console exporters are not touched.
    pub fn sync_files(&self) -> Result<()> {
        for file in self.files.iter() {
            file.sync().map_err(|e| {
                Error::Config(format!("writing spans to {}: {e}", file.path().display()))
            })?;
        }
        Ok(())
    }

    /// Turns on the host instrumentations named (see
    /// [`INSTRUMENTATIONS`]).
    pub fn with_instrumentations<'a>(mut self, names: impl IntoIterator<Item = &'a str>) -> Self {
        for name in names {
            if name == "http-client" {
                self.http_client = true;
            }
        }
        self
    }

    /// Whether outgoing HTTP requests of tasks are traced.
    pub fn traces_http_client(&self) -> bool {
        self.http_client
    }

    /// The tracer.
    pub fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }

    /// The provider.
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// Exports every finished span now.
    pub fn flush(&self) -> Result<()> {
        let spans = self
            .provider
            .force_flush()
            .map_err(|e| Error::Config(format!("flushing spans failed: {e}")));
        let logs = match &self.logs {
            Some((provider, _)) => provider
                .force_flush()
                .map_err(|e| Error::Config(format!("flushing log records failed: {e}"))),
            None => Ok(()),
        };
        let metrics = match &self.metrics {
            Some((provider, _)) => provider
                .force_flush()
                .map_err(|e| Error::Config(format!("flushing metrics failed: {e}"))),
            None => Ok(()),
        };
        spans.and(logs).and(metrics)
    }

    /// [`Telemetry::shutdown`] at the end of a process: a failure is said on
    /// standard error after `who` (losses were said already). Whether any
    /// spans were lost.
    pub fn shutdown_at_exit(&self, who: &str) -> bool {
        let shut = self.shutdown();
        let lost = !self.losses().is_empty();
        if let Err(error) = shut
            && !lost
        {
            diagnostics::say(format_args!("{who}: {error}"));
        }
        lost
    }

    /// Flushes and shuts down every processor and exporter. Spans that end
    /// afterwards are not exported. Then says on standard error, one line
    /// per exporter, what spans were lost, how many, where they were going
    /// and why ([`Telemetry::losses`]).
    pub fn shutdown(&self) -> Result<()> {
        let shut = self
            .provider
            .shutdown()
            .map_err(|e| Error::Config(format!("shutting down span export failed: {e}")));
        let shut = match &self.logs {
            Some((provider, _)) => shut.and(
                provider
                    .shutdown()
                    .map_err(|e| Error::Config(format!("shutting down log export failed: {e}"))),
            ),
            None => shut,
        };
        // Metrics last: their final export counts what the others delivered.
        let shut =
            match &self.metrics {
                Some((provider, _)) => shut.and(provider.shutdown().map_err(|e| {
                    Error::Config(format!("shutting down metric export failed: {e}"))
                })),
                None => shut,
            };
        // Said plainly, one line per exporter that lost spans.
        for loss in self.losses() {
            diagnostics::say(format_args!("wtrace (pid {}): {loss}", std::process::id()));
        }
        shut
    }
}

//! A tracing startup hook that sends spans and log records to an OTLP
//! receiver (an OpenTelemetry Collector, Jaeger, rotel…), configured the
//! OpenTelemetry way:
//!
//! - `OTEL_EXPORTER_OTLP_ENDPOINT` (default `http://127.0.0.1:4317`, or `:4318` for HTTP)
//! - `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc` (default), `http/protobuf` or `http/json`
//! - `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`
//! - `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`
//! - `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`
//! - `OTEL_EXPORTER_OTLP_TRACES_*` and `OTEL_EXPORTER_OTLP_LOGS_*` (endpoint,
//!   protocol) per signal, and `OTEL_EXPORTER_OTLP_METRICS_*`;
//!   `OTEL_LOGS_EXPORTER=none` and `OTEL_METRICS_EXPORTER=none` turn a
//!   signal off; `OTEL_METRIC_EXPORT_INTERVAL` (ms, default 60 000)

use wtrace_guest::hook::{self, Exporter, MetricReader, Processor};

fn setup_tracing() -> Result<(), String> {
    hook::set_resource(&hook::resource_from_env("wtrace"));
    if let Some(sampler) = hook::sampler_from_env()? {
        hook::set_sampler(sampler);
    }
    let exporter = hook::otlp_exporter_from_env()?;
    hook::add_span_processor(&Processor::Batch(Exporter::Otlp(exporter)))?;
    if let Some(exporter) = hook::otlp_log_exporter_from_env()? {
        hook::add_log_processor(&Processor::Batch(Exporter::Otlp(exporter)))?;
    }
    match hook::otlp_metric_exporter_from_env()? {
        Some(exporter) => hook::add_metric_reader(&MetricReader {
            exporter: Exporter::Otlp(exporter),
            interval_ms: 0,
        }),
        None => Ok(()),
    }
}

wtrace_guest::export_hook!(setup_tracing);

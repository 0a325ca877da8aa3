//! A tracing startup hook that sends spans to an OTLP receiver (an
//! OpenTelemetry Collector, Jaeger, rotel…), configured the OpenTelemetry way:
//!
//! - `OTEL_EXPORTER_OTLP_ENDPOINT` (default `http://127.0.0.1:4317`, or `:4318` for HTTP)
//! - `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc` (default), `http/protobuf` or `http/json`
//! - `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`
//! - `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`
//! - `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`

use wtrace_guest::hook::{self, Exporter, Processor};

fn setup_tracing() -> Result<(), String> {
    hook::set_resource(&hook::resource_from_env("wtrace"));
    if let Some(sampler) = hook::sampler_from_env()? {
        hook::set_sampler(sampler);
    }
    let exporter = hook::otlp_exporter_from_env()?;
    hook::add_span_processor(&Processor::Batch(Exporter::Otlp(exporter)))
}

wtrace_guest::export_hook!(setup_tracing);

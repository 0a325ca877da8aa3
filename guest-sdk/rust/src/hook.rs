//! Tracing startup hooks: configure where this process's spans and log
//! records go.
//!
//! A hook is a component exporting `setup-tracing`. wtrace runs it once in the
//! driver and once in every worker before any task; when it returns `Ok`, the
//! host builds that process's tracer provider from what the hook asked for.
//!
//! ```no_run
//! use wtrace_guest::hook::{self, Exporter, FileExporter, Processor};
//!
//! fn setup_tracing() -> Result<(), String> {
//!     hook::set_resource(&hook::resource_from_env("my-service"));
//!     hook::add_span_processor(&Processor::Batch(Exporter::File(FileExporter {
//!         path: "/tmp/spans/{pid}.json".into(),
//!     })))?;
//!     hook::add_log_processor(&Processor::Batch(Exporter::File(FileExporter {
//!         path: "/tmp/spans/{pid}.logs.json".into(),
//!     })))
//! }
//!
//! wtrace_guest::export_hook!(setup_tracing);
//! # fn main() {}
//! ```
//!
//! A hook sees only the `OTEL_*` and `WTRACE_*` environment variables of the
//! process that runs it; the `*_from_env` helpers read the OpenTelemetry ones.

pub use crate::wit::wtrace::tracing::provider::{
    Exporter, FileExporter, MetricReader, OtlpExporter, OtlpProtocol, Processor, Sampler,
    WorkerInfo, add_log_processor, add_metric_reader, add_span_processor, current_worker,
    enable_instrumentation, set_resource, set_sampler,
};

use crate::{KeyValue, kv};

/// Exports `$setup` (a `fn() -> Result<(), String>`) as this component's
/// `setup-tracing`, making it a wtrace tracing startup hook.
#[macro_export]
macro_rules! export_hook {
    ($setup:path) => {
        mod __wtrace_hook_export {
            $crate::__private::wit_bindgen::generate!({
                inline: "
                    package wtrace:hook-export;
                    world hook-export {
                        export setup-tracing: func() -> result<_, string>;
                    }
                ",
                runtime_path: "::wtrace_guest::__private::wit_bindgen::rt",
            });

            struct Hook;

            impl Guest for Hook {
                fn setup_tracing() -> ::core::result::Result<(), ::std::string::String> {
                    super::__wtrace_hook_setup()
                }
            }

            export!(Hook);
        }

        #[doc(hidden)]
        fn __wtrace_hook_setup() -> ::core::result::Result<(), ::std::string::String> {
            $setup()
        }
    };
}

/// Resource attributes from `OTEL_SERVICE_NAME` (else `default_service_name`)
/// and `OTEL_RESOURCE_ATTRIBUTES` (`key=value,key=value`).
pub fn resource_from_env(default_service_name: &str) -> Vec<KeyValue> {
    let mut attributes = Vec::new();
    if let Some(pairs) = env("OTEL_RESOURCE_ATTRIBUTES") {
        for pair in pairs.split(',') {
            if let Some((key, value)) = pair.split_once('=') {
                let key = key.trim();
                if !key.is_empty() && key != "service.name" {
                    attributes.push(kv(key, value.trim()));
                }
            }
        }
    }
    let service = env("OTEL_SERVICE_NAME").unwrap_or_else(|| default_service_name.to_owned());
    attributes.push(kv("service.name", service));
    attributes
}

/// The sampler named by `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`
/// (`always_on`, `always_off`, `traceidratio`, `parentbased_always_on`,
/// `parentbased_always_off`, `parentbased_traceidratio`); `None` when unset.
pub fn sampler_from_env() -> Result<Option<Sampler>, String> {
    let Some(name) = env("OTEL_TRACES_SAMPLER") else {
        return Ok(None);
    };
    let ratio = || -> Result<f64, String> {
        match env("OTEL_TRACES_SAMPLER_ARG") {
            None => Ok(1.0),
            Some(arg) => arg
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| {
                    format!("OTEL_TRACES_SAMPLER_ARG={arg:?} is not a ratio between 0 and 1")
                }),
        }
    };
    let sampler = match name.trim() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatio(ratio()?),
        "parentbased_always_on" => Sampler::ParentBasedAlwaysOn,
        "parentbased_always_off" => Sampler::ParentBasedAlwaysOff,
        "parentbased_traceidratio" => Sampler::ParentBasedRatio(ratio()?),
        other => {
            return Err(format!(
                "OTEL_TRACES_SAMPLER={other:?} is not supported; use always_on, always_off, \
                 traceidratio, parentbased_always_on, parentbased_always_off or \
                 parentbased_traceidratio"
            ));
        }
    };
    Ok(Some(sampler))
}

/// An OTLP exporter from `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` /
/// `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`,
/// `http/protobuf`, `http/json`; default `grpc`), `OTEL_EXPORTER_OTLP_HEADERS`
/// and `OTEL_EXPORTER_OTLP_TIMEOUT` (ms). The endpoint defaults to
/// `http://127.0.0.1:4317` for gRPC and `http://127.0.0.1:4318` for HTTP.
pub fn otlp_exporter_from_env() -> Result<OtlpExporter, String> {
    otlp_exporter_for("TRACES")
}

/// An OTLP exporter for log records, as [`otlp_exporter_from_env`] but
/// reading `OTEL_EXPORTER_OTLP_LOGS_ENDPOINT` and `…_LOGS_PROTOCOL` first;
/// none when `OTEL_LOGS_EXPORTER` is `none`.
pub fn otlp_log_exporter_from_env() -> Result<Option<OtlpExporter>, String> {
    if env("OTEL_LOGS_EXPORTER").is_some_and(|e| e.trim() == "none") {
        return Ok(None);
    }
    otlp_exporter_for("LOGS").map(Some)
}

/// An OTLP exporter for metrics, as [`otlp_exporter_from_env`] but reading
/// `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` and `…_METRICS_PROTOCOL` first;
/// none when `OTEL_METRICS_EXPORTER` is `none`.
pub fn otlp_metric_exporter_from_env() -> Result<Option<OtlpExporter>, String> {
    if env("OTEL_METRICS_EXPORTER").is_some_and(|e| e.trim() == "none") {
        return Ok(None);
    }
    otlp_exporter_for("METRICS").map(Some)
}

/// `signal` is `TRACES`, `LOGS` or `METRICS`: its own variables win over
/// the shared ones.
fn otlp_exporter_for(signal: &str) -> Result<OtlpExporter, String> {
    let protocol = match env(&format!("OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"))
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .as_deref()
        .map(str::trim)
    {
        None | Some("grpc") => OtlpProtocol::Grpc,
        Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
        Some("http/json") => OtlpProtocol::HttpJson,
        Some(other) => {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is not supported; use grpc, \
                 http/protobuf or http/json"
            ));
        }
    };
    let endpoint = env(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"))
        .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .unwrap_or_else(|| match protocol {
            OtlpProtocol::Grpc => "http://127.0.0.1:4317".into(),
            _ => "http://127.0.0.1:4318".into(),
        });
    let headers = env("OTEL_EXPORTER_OTLP_HEADERS")
        .map(|headers| {
            headers
                .split(',')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let timeout_ms = match env("OTEL_EXPORTER_OTLP_TIMEOUT") {
        None => 0,
        Some(ms) => ms
            .trim()
            .parse()
            .map_err(|_| format!("OTEL_EXPORTER_OTLP_TIMEOUT={ms:?} is not a number of ms"))?,
    };
    Ok(OtlpExporter {
        endpoint,
        protocol,
        headers,
        timeout_ms,
    })
}

/// An environment variable of the hook's process, if set and not empty.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

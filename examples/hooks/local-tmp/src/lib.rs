//! The default tracing startup hook (`--tracing-startup-hook=default`): every
//! process writes its spans to `/tmp/spans/<pid>.json`, one OTLP-JSON
//! `ExportTraceServiceRequest` per line, and its log records (task output,
//! joined to spans) beside them to `/tmp/spans/<pid>.logs.json`, and its
//! metrics to `/tmp/spans/<pid>.metrics.json` (every minute, and at exit).
//!
//! The counterpart of Ray's `ray.util.tracing.setup_local_tmp_tracing:setup_tracing`.

use wtrace_guest::hook::{self, Exporter, FileExporter, MetricReader, Processor};

fn setup_tracing() -> Result<(), String> {
    hook::set_resource(&hook::resource_from_env("wtrace"));
    if let Some(sampler) = hook::sampler_from_env()? {
        hook::set_sampler(sampler);
    }
    hook::add_span_processor(&Processor::Batch(Exporter::File(FileExporter {
        path: "/tmp/spans/{pid}.json".into(),
    })))?;
    hook::add_log_processor(&Processor::Batch(Exporter::File(FileExporter {
        path: "/tmp/spans/{pid}.logs.json".into(),
    })))?;
    hook::add_metric_reader(&MetricReader {
        exporter: Exporter::File(FileExporter {
            path: "/tmp/spans/{pid}.metrics.json".into(),
        }),
        interval_ms: 0,
    })
}

wtrace_guest::export_hook!(setup_tracing);

//! Test hook: spans to `$WTRACE_SPAN_DIR/{pid}.json` (simple processor unless
//! `WTRACE_TEST_BATCH` is set), log records to `{pid}.logs.json` (batch),
//! metrics to `{pid}.metrics.json` (at exit),
//! with the `OTEL_TRACES_SAMPLER` sampler. With `WTRACE_TEST_HOOK_SAYS`,
//! it prints that on stdout first. `WTRACE_TEST_NO_LOGS` and
//! `WTRACE_TEST_NO_METRICS` leave those out (the benchmark's cost split).

use wtrace_guest::hook::{self, Exporter, FileExporter, MetricReader, Processor};

fn setup_tracing() -> Result<(), String> {
    let dir = hook::env("WTRACE_SPAN_DIR").ok_or("WTRACE_SPAN_DIR is not set")?;
    if let Some(words) = hook::env("WTRACE_TEST_HOOK_SAYS") {
        println!("{words}");
    }
    hook::set_resource(&hook::resource_from_env("wtrace-tests"));
    if let Some(sampler) = hook::sampler_from_env()? {
        hook::set_sampler(sampler);
    }
    if let Some(name) = hook::env("WTRACE_TEST_INSTRUMENT") {
        hook::enable_instrumentation(&name)?;
    }
    let exporter = Exporter::File(FileExporter {
        path: format!("{dir}/{{pid}}.json"),
    });
    hook::add_span_processor(&if hook::env("WTRACE_TEST_BATCH").is_some() {
        Processor::Batch(exporter)
    } else {
        Processor::Simple(exporter)
    })?;
    if hook::env("WTRACE_TEST_NO_LOGS").is_none() {
        hook::add_log_processor(&Processor::Batch(Exporter::File(FileExporter {
            path: format!("{dir}/{{pid}}.logs.json"),
        })))?;
    }
    if hook::env("WTRACE_TEST_NO_METRICS").is_none() {
        hook::add_metric_reader(&MetricReader {
            exporter: Exporter::File(FileExporter {
                path: format!("{dir}/{{pid}}.metrics.json"),
            }),
            interval_ms: 0,
        })?;
    }
    Ok(())
}

wtrace_guest::export_hook!(setup_tracing);

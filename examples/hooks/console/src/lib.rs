//! A tracing startup hook that prints every span to the process's standard
//! error as it ends, and every log record as it is written.

use wtrace_guest::hook::{self, Exporter, Processor};

fn setup_tracing() -> Result<(), String> {
    hook::set_resource(&hook::resource_from_env("wtrace"));
    if let Some(sampler) = hook::sampler_from_env()? {
        hook::set_sampler(sampler);
    }
    hook::add_span_processor(&Processor::Simple(Exporter::Console))?;
    hook::add_log_processor(&Processor::Simple(Exporter::Console))
}

wtrace_guest::export_hook!(setup_tracing);

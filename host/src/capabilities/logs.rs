//! The host side of `wtrace:tracing/logs`: records a task emits, joined to
//! the span it names or else its current span, and carrying the task's
//! function and id. They go where the hook's log processors send them;
//! without one, `emit` does nothing.

use opentelemetry::logs::{AnyValue, Severity};
use wasmtime::component::{HasData, Linker, Resource};

use super::bindings::logs;
use crate::capabilities::tracer::{Bridge, GuestSpan, key_value};
use crate::sandbox::host_call;
use crate::telemetry::logs::{GuestRecord, any_value};

impl logs::Host for Bridge<'_> {
    fn emit(
        &mut self,
        entry: logs::LogRecord,
        span: Option<Resource<GuestSpan>>,
    ) -> wasmtime::Result<()> {
        let _call = host_call("wtrace:tracing/logs#emit");
        let Some(log) = self.state.log().cloned() else {
            return Ok(());
        };
        let span = match span {
            Some(handle) => Some(self.table.get(&handle)?.context().clone()),
            None => None,
        };
        let max = self.state.attribute_value_length();
        log.emit(GuestRecord {
            time: None,
            severity: Some(severity(entry.severity)),
            body: Some(AnyValue::String(entry.body.into())),
            attributes: entry
                .attributes
                .into_iter()
                .map(|kv| {
                    let kv = key_value(kv, max);
                    (kv.key, any_value(&kv.value))
                })
                .collect(),
            span,
        });
        Ok(())
    }
}

fn severity(severity: logs::Severity) -> Severity {
    match severity {
        logs::Severity::Trace => Severity::Trace,
        logs::Severity::Debug => Severity::Debug,
        logs::Severity::Info => Severity::Info,
        logs::Severity::Warn => Severity::Warn,
        logs::Severity::Error => Severity::Error,
        logs::Severity::Fatal => Severity::Fatal,
    }
}

struct LogsData;

impl HasData for LogsData {
    type Data<'a> = Bridge<'a>;
}

/// Adds `wtrace:tracing/logs` to `linker`.
pub fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> Bridge<'_>,
) -> wasmtime::Result<()> {
    logs::add_to_linker::<T, LogsData>(linker, view)
}

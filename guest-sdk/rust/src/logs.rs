//! Log records joined to traces: what a task logs here becomes an
//! OpenTelemetry log record carrying the trace and span id of its current
//! span (or of the span given), the task's function and id, and the
//! process's resource; the hook chooses where records go.
//!
//! ```no_run
//! use wtrace_guest::logs::{self, Severity};
//!
//! logs::info("loaded the table");
//! logs::emit(Severity::Warn, "slow disk", &[wtrace_guest::kv("ms", 250)]);
//! ```
//!
//! Lines written to stdout and stderr become records too (INFO and WARN,
//! unless the line starts with a level such as `ERROR`); these functions
//! add a severity of your choosing and attributes.

use crate::wit::wtrace::tracing::logs as raw;
pub use crate::wit::wtrace::tracing::logs::Severity;
use crate::{KeyValue, Span};

/// Emits a record joined to the current span.
pub fn emit(severity: Severity, body: &str, attributes: &[KeyValue]) {
    raw::emit(&record(severity, body, attributes), None);
}

/// Emits a record joined to `span`.
pub fn emit_in(span: &Span, severity: Severity, body: &str, attributes: &[KeyValue]) {
    raw::emit(&record(severity, body, attributes), Some(span.raw()));
}

/// Emits an INFO record joined to the current span.
pub fn info(body: &str) {
    emit(Severity::Info, body, &[]);
}

/// Emits a WARN record joined to the current span.
pub fn warn(body: &str) {
    emit(Severity::Warn, body, &[]);
}

/// Emits an ERROR record joined to the current span.
pub fn error(body: &str) {
    emit(Severity::Error, body, &[]);
}

fn record(severity: Severity, body: &str, attributes: &[KeyValue]) -> raw::LogRecord {
    raw::LogRecord {
        severity,
        body: body.to_owned(),
        attributes: attributes.to_vec(),
    }
}

//! Spans as human-readable lines on standard error.

use std::io::Write as _;

use opentelemetry::trace::Status;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// Prints one line per span to standard error as spans are exported:
/// `[span] name kind=… trace=… span=… parent=… 1.2ms status attrs…`.
#[derive(Debug, Default)]
pub struct ConsoleExporter {
    pid: u32,
}

impl ConsoleExporter {
    /// A console exporter for this process.
    pub fn new() -> Self {
        Self {
            pid: std::process::id(),
        }
    }
}

impl SpanExporter for ConsoleExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut out = String::new();
        for span in batch {
            let duration = span
                .end_time
                .duration_since(span.start_time)
                .unwrap_or_default();
            let status = match &span.status {
                Status::Unset => String::new(),
                Status::Ok => " status=OK".into(),
                Status::Error { description } => format!(" status=ERROR({description})"),
            };
            let parent = if span.parent_span_id == opentelemetry::trace::SpanId::INVALID {
                "none".to_owned()
            } else {
                span.parent_span_id.to_string()
            };
            out.push_str(&format!(
                "[span pid={}] {} kind={:?} trace={} span={} parent={} {:.3}ms{}",
                self.pid,
                span.name,
                span.span_kind,
                span.span_context.trace_id(),
                span.span_context.span_id(),
                parent,
                duration.as_secs_f64() * 1000.0,
                status,
            ));
            for kv in &span.attributes {
                out.push_str(&format!(" {}={}", kv.key, kv.value));
            }
            out.push('\n');
        }
        let _ = std::io::stderr().lock().write_all(out.as_bytes());
        Ok(())
    }
}

//! Log exporters a hook can choose, to the same three places as spans: the
//! console, a file of OTLP-JSON lines (the collector's format, one
//! `ExportLogsServiceRequest` per line) and an OTLP receiver.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use opentelemetry::logs::AnyValue;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::logs::tonic::group_logs_by_resource_and_scope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::logs::{LogBatch, LogExporter};

use super::{ExporterSpec, PathVars};
use crate::config::ExportPolicy;
use crate::sync::lock;

/// One of the log exporters wtrace supports.
#[derive(Debug)]
pub enum AnyLogExporter {
    /// See [`ConsoleLogExporter`].
    Console(ConsoleLogExporter),
    /// See [`LogFileExporter`].
    File(LogFileExporter),
    /// The OpenTelemetry OTLP exporter.
    Otlp(Box<opentelemetry_otlp::LogExporter>),
}

impl LogExporter for AnyLogExporter {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        match self {
            Self::Console(e) => e.export(batch).await,
            Self::File(e) => e.export(batch).await,
            Self::Otlp(e) => e.export(batch).await,
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        match self {
            Self::Console(_) => Ok(()),
            Self::File(e) => e.shutdown_with_timeout(timeout),
            Self::Otlp(e) => e.shutdown_with_timeout(timeout),
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        match self {
            Self::Console(_) => {}
            Self::File(e) => e.set_resource(resource),
            Self::Otlp(e) => e.set_resource(resource),
        }
    }
}

/// Checks `spec` against `policy` and builds a log exporter, as
/// [`super::build`] does for spans (same rules, same errors); an OTLP
/// endpoint gets `/v1/logs` where spans get `/v1/traces`.
pub fn build(
    spec: &ExporterSpec,
    policy: &ExportPolicy,
    vars: &PathVars<'_>,
) -> Result<AnyLogExporter, String> {
    match spec {
        ExporterSpec::Console => Ok(AnyLogExporter::Console(ConsoleLogExporter::new())),
        ExporterSpec::File { path } => {
            let path = super::allowed_path(path, vars, policy)?;
            LogFileExporter::open(&path)
                .map(AnyLogExporter::File)
                .map_err(|e| format!("cannot open log file {}: {e}", path.display()))
        }
        ExporterSpec::Otlp {
            endpoint,
            protocol,
            headers,
            timeout,
        } => build_otlp!(
            opentelemetry_otlp::LogExporter,
            "logs",
            endpoint,
            protocol,
            headers,
            timeout,
            policy
        )
        .map(|e| AnyLogExporter::Otlp(Box::new(e))),
    }
}

/// Prints one line per log record on standard error:
/// `[log pid=…] INFO trace=… span=… body attrs…`.
#[derive(Debug)]
pub struct ConsoleLogExporter {
    pid: u32,
}

impl ConsoleLogExporter {
    /// A console exporter for this process.
    pub fn new() -> Self {
        Self {
            pid: std::process::id(),
        }
    }
}

impl Default for ConsoleLogExporter {
    fn default() -> Self {
        Self::new()
    }
}

impl LogExporter for ConsoleLogExporter {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        use std::fmt::Write as _;
        let mut out = String::new();
        for (record, _scope) in batch.iter() {
            let severity = record
                .severity_text()
                .or_else(|| record.severity_number().map(|s| s.name()))
                .unwrap_or("-");
            let _ = write!(out, "[log pid={}] {severity}", self.pid);
            if let Some(cx) = record.trace_context() {
                let _ = write!(out, " trace={} span={}", cx.trace_id, cx.span_id);
            }
            match record.body() {
                Some(AnyValue::String(text)) => {
                    let _ = write!(out, " {text}");
                }
                Some(other) => {
                    let _ = write!(out, " {other:?}");
                }
                None => {}
            }
            for (key, value) in record.attributes_iter() {
                let _ = match value {
                    AnyValue::String(text) => write!(out, " {key}={text}"),
                    AnyValue::Int(n) => write!(out, " {key}={n}"),
                    AnyValue::Double(x) => write!(out, " {key}={x}"),
                    AnyValue::Boolean(b) => write!(out, " {key}={b}"),
                    other => write!(out, " {key}={other:?}"),
                };
            }
            out.push('\n');
        }
        let _ = std::io::stderr().lock().write_all(out.as_bytes());
        Ok(())
    }
}

/// Appends each exported batch of log records to a file as one JSON line,
/// with a single `write` to a file opened for appending (a process killed
/// mid-export leaves every complete line valid).
#[derive(Debug)]
pub struct LogFileExporter {
    path: PathBuf,
    file: Mutex<File>,
    resource: ResourceAttributesWithSchema,
}

impl LogFileExporter {
    /// Opens `path` for appending under the span files' rules (a private
    /// directory, no symbolic link).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            file: Mutex::new(super::file::open_private(path)?),
            resource: ResourceAttributesWithSchema::default(),
        })
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl LogExporter for LogFileExporter {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        let request = ExportLogsServiceRequest {
            resource_logs: group_logs_by_resource_and_scope(&batch, &self.resource),
        };
        let mut line = serde_json::to_vec(&request)
            .map_err(|e| OTelSdkError::InternalFailure(format!("encoding log records: {e}")))?;
        line.push(b'\n');
        lock(&self.file).write_all(&line).map_err(|e| {
            OTelSdkError::InternalFailure(format!("writing {}: {e}", self.path.display()))
        })
    }

    /// Nothing to do: each export is one `write` into the kernel, so the
    /// records survive the process, as spans do (not an `fsync`, which at
    /// every exit can wait behind other writes to the same disk).
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource.into();
    }
}

#[cfg(test)]
mod tests {
    use super::super::http_signal_endpoint;

    #[test]
    fn http_log_endpoints_follow_the_otlp_convention() {
        assert_eq!(
            http_signal_endpoint("http://h:4318", "logs"),
            "http://h:4318/v1/logs"
        );
        assert_eq!(
            http_signal_endpoint("http://h:4318/v1/traces", "logs"),
            "http://h:4318/v1/logs"
        );
        assert_eq!(
            http_signal_endpoint("http://h:4318/v1/logs/", "logs"),
            "http://h:4318/v1/logs"
        );
    }
}

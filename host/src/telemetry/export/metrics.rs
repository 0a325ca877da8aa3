//! Metric exporters a hook can choose, pushed by a periodic reader: the
//! console, a file of OTLP-JSON lines (one `ExportMetricsServiceRequest`
//! per line, the collector's format) and an OTLP receiver.

use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;

use super::{ExporterSpec, PathVars};
use crate::config::ExportPolicy;
use crate::sync::lock;
use crate::telemetry::loss::Ledger;

/// One of the metric exporters wtrace supports, its exports counted in a
/// ledger (a failed export is lost).
#[derive(Debug)]
pub struct MetricExporter {
    inner: Inner,
    ledger: Arc<Ledger>,
}

#[derive(Debug)]
enum Inner {
    Console,
    File { path: PathBuf, file: Mutex<File> },
    Otlp(Box<opentelemetry_otlp::MetricExporter>),
}

impl MetricExporter {
    /// The ledger its exports are counted in.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }
}

impl PushMetricExporter for MetricExporter {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = match &self.inner {
            Inner::Console => {
                print_metrics(&ExportMetricsServiceRequest::from(metrics));
                Ok(())
            }
            Inner::File { path, file } => {
                let request = ExportMetricsServiceRequest::from(metrics);
                let mut line = serde_json::to_vec(&request)
                    .map_err(|e| OTelSdkError::InternalFailure(format!("encoding metrics: {e}")))?;
                line.push(b'\n');
                lock(file).write_all(&line).map_err(|e| {
                    OTelSdkError::InternalFailure(format!("writing {}: {e}", path.display()))
                })
            }
            Inner::Otlp(exporter) => exporter.export(metrics).await,
        };
        self.ledger.attempted(1);
        self.ledger.exported(1, &result);
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        match &self.inner {
            Inner::Otlp(exporter) => exporter.force_flush(),
            _ => Ok(()),
        }
    }

    /// A file needs nothing: each export is one `write` into the kernel, so
    /// the metrics survive the process, as spans do (not an `fsync`, which
    /// at every exit can wait behind other writes to the same disk).
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        match &self.inner {
            Inner::Otlp(exporter) => exporter.shutdown_with_timeout(timeout),
            Inner::File { .. } | Inner::Console => Ok(()),
        }
    }

    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

/// Checks `spec` against `policy` and builds a metric exporter, as
/// [`super::build`] does for spans; an OTLP endpoint gets `/v1/metrics`.
pub fn build(
    spec: &ExporterSpec,
    policy: &ExportPolicy,
    vars: &PathVars<'_>,
) -> Result<MetricExporter, String> {
    let inner = match spec {
        ExporterSpec::Console => Inner::Console,
        ExporterSpec::File { path } => {
            let path = super::allowed_path(path, vars, policy)?;
            let file = super::file::open_private(&path)
                .map_err(|e| format!("cannot open metrics file {}: {e}", path.display()))?;
            Inner::File {
                path,
                file: Mutex::new(file),
            }
        }
        ExporterSpec::Otlp {
            endpoint,
            protocol,
            headers,
            timeout,
        } => Inner::Otlp(Box::new(build_otlp!(
            opentelemetry_otlp::MetricExporter,
            "metrics",
            endpoint,
            protocol,
            headers,
            timeout,
            policy
        )?)),
    };
    Ok(MetricExporter {
        inner,
        ledger: Ledger::for_metrics(super::target(spec, vars, "metrics")),
    })
}

/// One line per data point on standard error:
/// `[metric pid=…] name{attrs} value` (a histogram's count and sum).
fn print_metrics(request: &ExportMetricsServiceRequest) {
    use std::fmt::Write as _;
    let pid = std::process::id();
    let mut out = String::new();
    let attrs = |list: &[opentelemetry_proto::tonic::common::v1::KeyValue]| -> String {
        list.iter()
            .map(|kv| {
                let value = kv
                    .value
                    .as_ref()
                    .map(crate::spans::any_value_text)
                    .unwrap_or_default();
                format!("{}={value}", kv.key)
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let number =
        |point: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint| match point.value {
            Some(number_data_point::Value::AsInt(n)) => n.to_string(),
            Some(number_data_point::Value::AsDouble(x)) => x.to_string(),
            None => "-".into(),
        };
    for resource in &request.resource_metrics {
        for scope in &resource.scope_metrics {
            for m in &scope.metrics {
                let numbers = match &m.data {
                    Some(metric::Data::Sum(sum)) => Some(&sum.data_points),
                    Some(metric::Data::Gauge(gauge)) => Some(&gauge.data_points),
                    _ => None,
                };
                for p in numbers.into_iter().flatten() {
                    let _ = writeln!(
                        out,
                        "[metric pid={pid}] {}{{{}}} {}",
                        m.name,
                        attrs(&p.attributes),
                        number(p)
                    );
                }
                if let Some(metric::Data::Histogram(histogram)) = &m.data {
                    for p in &histogram.data_points {
                        let _ = writeln!(
                            out,
                            "[metric pid={pid}] {}{{{}}} count={} sum={}",
                            m.name,
                            attrs(&p.attributes),
                            p.count,
                            p.sum.unwrap_or_default()
                        );
                    }
                }
            }
        }
    }
    let _ = std::io::stderr().lock().write_all(out.as_bytes());
}

//! Spans as OTLP-JSON lines in a file: the OpenTelemetry Collector's file
//! exporter format, one `ExportTraceServiceRequest` per line.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::Resource as SdkResource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// Appends each exported batch to a file as one JSON line.
///
/// Each line is written with a single `write` to a file opened for appending,
/// so a process killed mid-export leaves every complete line valid.
#[derive(Debug)]
pub struct FileExporter {
    path: PathBuf,
    file: Mutex<File>,
    resource: ResourceAttributesWithSchema,
}

impl FileExporter {
    /// Opens (creating it and its directory if needed) `path` for appending.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            path: path.to_owned(),
            file: Mutex::new(file),
            resource: ResourceAttributesWithSchema::default(),
        })
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// One OTLP-JSON line (with its newline) for `batch`.
pub fn encode_line(batch: Vec<SpanData>, resource: &ResourceAttributesWithSchema) -> Vec<u8> {
    let request = ExportTraceServiceRequest {
        resource_spans: resource_spans(batch, resource),
    };
    let mut line = serde_json::to_vec(&request).expect("OTLP messages serialize to JSON");
    line.push(b'\n');
    line
}

/// Groups spans by instrumentation scope under the resource. wtrace's spans
/// nearly always share one scope: then there is nothing to group, and the
/// per-span hashing of scopes is skipped.
fn resource_spans(
    batch: Vec<SpanData>,
    resource: &ResourceAttributesWithSchema,
) -> Vec<ResourceSpans> {
    let one_scope = batch.first().is_some_and(|first| {
        batch
            .iter()
            .all(|s| s.instrumentation_scope == first.instrumentation_scope)
    });
    if !one_scope {
        return group_spans_by_resource_and_scope(batch, resource);
    }
    let scope = batch[0].instrumentation_scope.clone();
    vec![ResourceSpans {
        resource: Some(Resource {
            attributes: resource.attributes.0.clone(),
            dropped_attributes_count: 0,
            entity_refs: Vec::new(),
        }),
        scope_spans: vec![ScopeSpans {
            schema_url: scope
                .schema_url()
                .map(ToOwned::to_owned)
                .unwrap_or_default(),
            scope: Some((&scope, None).into()),
            spans: batch.into_iter().map(Into::into).collect(),
        }],
        schema_url: resource.schema_url.clone().unwrap_or_default(),
    }]
}

impl SpanExporter for FileExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if batch.is_empty() {
            return Ok(());
        }
        let line = encode_line(batch, &self.resource);
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(&line).map_err(|e| {
            OTelSdkError::InternalFailure(format!("writing {}: {e}", self.path.display()))
        })
    }

    fn force_flush(&self) -> OTelSdkResult {
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.sync_data()
            .map_err(|e| OTelSdkError::InternalFailure(format!("{}: {e}", self.path.display())))
    }

    fn shutdown_with_timeout(&self, _timeout: std::time::Duration) -> OTelSdkResult {
        self.force_flush()
    }

    fn set_resource(&mut self, resource: &SdkResource) {
        self.resource = resource.into();
    }
}

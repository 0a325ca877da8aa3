//! Spans as OTLP-JSON lines in a file: the OpenTelemetry Collector's file
//! exporter format, one `ExportTraceServiceRequest` per line.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_sdk::Resource as SdkResource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

use super::otlp_json::LineEncoder;

/// Appends each exported batch to a file as one JSON line.
///
/// Each line is written with a single `write` to a file opened for appending,
/// so a process killed mid-export leaves every complete line valid.
#[derive(Debug)]
pub struct FileExporter {
    path: PathBuf,
    output: Mutex<Output>,
    resource: ResourceAttributesWithSchema,
}

/// The open file and the encoder, which keeps its buffers between exports.
#[derive(Debug)]
struct Output {
    file: File,
    encoder: LineEncoder,
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
            output: Mutex::new(Output {
                file,
                encoder: LineEncoder::new(),
            }),
            resource: ResourceAttributesWithSchema::default(),
        })
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl SpanExporter for FileExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if batch.is_empty() {
            return Ok(());
        }
        let mut output = self.output.lock().unwrap_or_else(|e| e.into_inner());
        let Output { file, encoder } = &mut *output;
        let line = encoder.encode(batch, &self.resource);
        file.write_all(line).map_err(|e| {
            OTelSdkError::InternalFailure(format!("writing {}: {e}", self.path.display()))
        })
    }

    /// Nothing to do: every export hands its line to the kernel in one
    /// `write`, so no span waits in this process. (Not `fsync`: spans must
    /// survive the process, not a power cut, and an `fsync` at every exit
    /// can wait seconds behind other writes to the same disk.)
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: std::time::Duration) -> OTelSdkResult {
        self.force_flush()
    }

    fn set_resource(&mut self, resource: &SdkResource) {
        self.resource = resource.into();
    }
}

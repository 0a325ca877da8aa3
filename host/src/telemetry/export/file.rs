//! Spans as OTLP-JSON lines in a file: the OpenTelemetry Collector's file
//! exporter format, one `ExportTraceServiceRequest` per line.
//!
//! Two ways to feed a file: [`FileExporter`], an ordinary SDK exporter (for
//! the simple processor, which writes each span as it ends), and
//! [`FileBatchProcessor`], which batches spans in memory and writes them on
//! the thread that asks, with no background queue. A worker asks
//! ([`SpanFile::sync`]) before a batch of its results leaves, so a delivered
//! result implies the task's spans are in the file: a worker killed the
//! next moment takes no span with it.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use opentelemetry_sdk::Resource as SdkResource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter, SpanProcessor};

use super::otlp_json::LineEncoder;
use crate::sync::{lock, wait_timeout};
use crate::telemetry::loss::Ledger;

/// Opens (creating it and its directory if needed) `path` for appending, in
/// a directory that is the user's own and writable by no one else, and not
/// through a symbolic link: another local user could otherwise read the
/// telemetry, or point the writes at a file of the user's.
pub(super) fn open_private(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        crate::private::ensure_private_dir(dir, 0o755, "the span directory")
            .map_err(std::io::Error::other)?;
    }
    crate::private::open_append(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            std::io::Error::other("it is a symbolic link; telemetry is not written through links")
        } else {
            e
        }
    })
}

/// Appends each exported batch to a file as one JSON line.
///
/// Each line is written with a single `write` to a file opened for appending,
/// so a process killed mid-export leaves every complete line valid.
#[derive(Debug)]
pub struct FileExporter {
    path: PathBuf,
    output: Mutex<Output>,
    /// Where its writes are counted, if anywhere.
    ledger: Option<Arc<Ledger>>,
}

/// The open file and the encoder, which keeps its buffer and the resource
/// between writes.
#[derive(Debug)]
struct Output {
    file: File,
    encoder: LineEncoder,
}

impl FileExporter {
    /// Opens (creating it and its directory if needed) `path` for appending.
    /// The directory must be the user's own and writable by no one else,
    /// and the file not a symbolic link: another local user could otherwise
    /// read the spans, or point the writes at a file of the user's.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = open_private(path)?;
        Ok(Self {
            path: path.to_owned(),
            output: Mutex::new(Output {
                file,
                encoder: LineEncoder::new(),
            }),
            ledger: None,
        })
    }

    /// This exporter, its writes counted in `ledger`.
    pub fn counted(mut self, ledger: Option<Arc<Ledger>>) -> Self {
        self.ledger = ledger;
        self
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `batch` as one line, now, on this thread.
    pub fn write(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut output = lock(&self.output);
        for data in &batch {
            output.encoder.add(data);
        }
        self.write_encoded(&mut output)
    }

    /// Writes the spans added to `output`'s encoder as one line.
    fn write_encoded(&self, output: &mut Output) -> OTelSdkResult {
        if output.encoder.is_empty() {
            return Ok(());
        }
        let spans = output.encoder.len();
        let line = output.encoder.finish();
        let result = output.file.write_all(line).map_err(|e| {
            OTelSdkError::InternalFailure(format!("writing {}: {e}", self.path.display()))
        });
        if let Some(ledger) = &self.ledger {
            ledger.exported(spans, &result);
        }
        result
    }

    fn set_resource_shared(&self, resource: &SdkResource) {
        lock(&self.output).encoder.set_resource(resource);
    }
}

impl SpanExporter for FileExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.write(batch)
    }

    /// Nothing to do: every export hands its line to the kernel in one
    /// `write`, so no span waits in this process. (Not `fsync`: spans must
    /// survive the process, not a power cut, and an `fsync` at every exit
    /// can wait seconds behind other writes to the same disk.)
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.force_flush()
    }

    fn set_resource(&mut self, resource: &SdkResource) {
        self.set_resource_shared(resource);
    }
}

/// Encoded spans held in memory before a write: past this many bytes, the
/// thread ending a span has the flusher write them, and past twice this
/// many (the flusher behind), writes them itself. A few hundred spans a write;
/// small enough that the line being built stays in the core's cache and
/// its buffer is not regrown into fresh pages (at 2048 spans, 1.6 MB,
/// regrowing a driver's lines took about 1 400 page faults a run).
const HIGH_WATER_BYTES: usize = 256 << 10;

/// The longest ended spans wait in memory when no one asks for a write.
pub const IDLE_FLUSH: Duration = Duration::from_millis(100);

/// A batch processor for a file: each span is encoded as it ends, on the
/// thread that ended it, and the encoded spans wait in memory until they are
/// written as one line: when [`SpanFile::sync`] asks, when [`HIGH_WATER_BYTES`]
/// of them wait, or after [`IDLE_FLUSH`] at most. At the high water the
/// processor's flusher thread writes the line, so the thread making spans
/// goes on encoding the next one meanwhile (the write, the kernel copying
/// the line into the page cache, took as long as the encoding). No span is
/// ever dropped: there is no queue to overflow, and no span waits for a
/// background thread that the tasks' own work starves of CPU: past twice
/// the high water, the ending thread writes itself. Encoding at the end, rather than
/// at the write, keeps the span data on the core and in the allocator arena
/// that made it: queued for the writing thread, it cost that thread cache
/// misses and cross-arena frees, more than the encoding itself.
#[derive(Debug)]
pub struct FileBatchProcessor {
    shared: Arc<Shared>,
    flusher: Option<std::thread::JoinHandle<()>>,
}

/// A handle on a [`FileBatchProcessor`]'s file, to write what waits.
#[derive(Debug, Clone)]
pub struct SpanFile {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    exporter: FileExporter,
    /// The spans ended since the last write, encoded. At a write it trades
    /// places with the exporter's encoder (both carry the resource), so
    /// spans can end while the line is written.
    pending: Mutex<LineEncoder>,
    /// What the flusher is asked to do; `wake` tells it.
    asked: Mutex<Asked>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct Asked {
    /// The high water was reached: write now.
    write: bool,
    stopped: bool,
}

impl Shared {
    /// Writes every span ended so far. The output lock is taken first, so a
    /// write of spans taken earlier by another thread has finished too.
    fn sync(&self) -> OTelSdkResult {
        let mut output = lock(&self.exporter.output);
        std::mem::swap(&mut output.encoder, &mut *lock(&self.pending));
        self.exporter.write_encoded(&mut output)
    }

    fn set_resource(&self, resource: &SdkResource) {
        self.exporter.set_resource_shared(resource);
        lock(&self.pending).set_resource(resource);
    }
}

impl FileBatchProcessor {
    /// Batches spans for `exporter`.
    pub fn new(exporter: FileExporter) -> Self {
        let shared = Arc::new(Shared {
            exporter,
            pending: Mutex::new(LineEncoder::new()),
            asked: Mutex::new(Asked::default()),
            wake: Condvar::new(),
        });
        let flusher = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("wtrace-span-file".into())
                .spawn(move || {
                    let mut asked = lock(&shared.asked);
                    while !asked.stopped {
                        if !asked.write {
                            asked = wait_timeout(&shared.wake, asked, IDLE_FLUSH).0;
                        }
                        let full = std::mem::take(&mut asked.write);
                        drop(asked);
                        if !lock(&shared.pending).is_empty() {
                            // An idle write's error is counted as a loss and
                            // said at shutdown; a full one's is said now,
                            // as the ending thread would have.
                            if let Err(error) = shared.sync()
                                && full
                            {
                                say_write_error(&error);
                            }
                        }
                        asked = lock(&shared.asked);
                    }
                })
                .ok()
        };
        Self { shared, flusher }
    }

    /// A handle to write what waits, from anywhere.
    pub fn file(&self) -> SpanFile {
        SpanFile {
            shared: self.shared.clone(),
        }
    }
}

impl SpanFile {
    /// Writes every span ended so far, as one line, before returning.
    pub fn sync(&self) -> OTelSdkResult {
        self.shared.sync()
    }

    /// The file.
    pub fn path(&self) -> &Path {
        self.shared.exporter.path()
    }
}

impl SpanProcessor for FileBatchProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        let waiting = {
            let mut pending = lock(&self.shared.pending);
            pending.add(&span);
            pending.encoded_len()
        };
        // Freed here, outside the lock, on the thread that made it; its
        // attribute list is kept for the thread's next task span.
        crate::attrs::recycle(span.attributes);
        if waiting < HIGH_WATER_BYTES {
            return;
        }
        if waiting < 2 * HIGH_WATER_BYTES && self.flusher.is_some() {
            let mut asked = lock(&self.shared.asked);
            if !asked.write {
                asked.write = true;
                self.shared.wake.notify_one();
            }
        } else if let Err(error) = self.shared.sync() {
            say_write_error(&error);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.shared.sync()
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        lock(&self.shared.asked).stopped = true;
        self.shared.wake.notify_all();
        self.shared.sync()
    }

    fn set_resource(&mut self, resource: &SdkResource) {
        self.shared.set_resource(resource);
    }
}

impl Drop for FileBatchProcessor {
    fn drop(&mut self) {
        lock(&self.shared.asked).stopped = true;
        self.shared.wake.notify_all();
        let _ = self.shared.sync();
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

/// Says on standard error that a line of spans could not be written (the
/// ledger counts them as lost, and shutdown says so again with the total).
fn say_write_error(error: &OTelSdkError) {
    crate::telemetry::diagnostics::say(format_args!(
        "wtrace (pid {}): {error}",
        std::process::id()
    ));
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;

    use super::*;

    fn lines(path: &Path) -> usize {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .count()
    }

    #[test]
    fn spans_wait_for_a_sync_then_are_one_line_and_idle_ones_are_written_soon() {
        let (dir, path, file, provider) = batched_file();
        let tracer = provider.tracer("t");
        for _ in 0..10 {
            tracer.start("one").end();
        }
        file.sync().unwrap();
        assert_eq!(lines(&path), 1, "ten spans, one write");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches("\"name\":\"one\"").count(), 10);

        // Nobody syncs: the spans still reach the file within the idle flush.
        tracer.start("idle").end();
        std::thread::sleep(IDLE_FLUSH * 4);
        assert_eq!(lines(&path), 2);
        provider.shutdown().unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A burst nobody syncs is written as it grows, in lines of about
    /// [`HIGH_WATER_BYTES`] (twice that at most, when the flusher is
    /// behind), and none of it is lost.
    #[test]
    fn a_burst_is_written_as_it_grows_in_lines_of_bounded_size() {
        let dir = tempfile_dir();
        let path = dir.join("spans.json");
        let processor = FileBatchProcessor::new(FileExporter::open(&path).unwrap());
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .build();
        let tracer = provider.tracer("t");
        let n = 5_000;
        for _ in 0..n {
            tracer.start("burst").end();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.lines().count() >= 2,
            "a burst of {n} spans is written as it grows"
        );
        for line in text.lines() {
            assert!(
                line.len() < 2 * HIGH_WATER_BYTES + 1024,
                "a line of {} bytes, past twice the high water of {HIGH_WATER_BYTES}",
                line.len()
            );
        }
        provider.shutdown().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches("\"name\":\"burst\"").count(), n);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The plain exporter, as the simple processor drives it: every span is
    /// its own line, in the file as soon as the span ends.
    #[test]
    fn the_exporter_writes_each_batch_it_is_given_as_one_line() {
        let dir = tempfile_dir();
        let path = dir.join("spans.json");
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(FileExporter::open(&path).unwrap())
            .build();
        let tracer = provider.tracer("t");
        for name in ["one", "two", "three"] {
            tracer.start(name).end();
        }
        assert_eq!(lines(&path), 3, "one line per span, before any flush");
        let text = std::fs::read_to_string(&path).unwrap();
        for name in ["one", "two", "three"] {
            assert_eq!(text.matches(&format!("\"name\":\"{name}\"")).count(), 1);
        }
        provider.shutdown().unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Spans of two scopes, ended in turn on two threads: encoded as each
    /// ends, the line is still what `opentelemetry-proto` makes of them, in
    /// the order they ended.
    #[test]
    fn spans_encoded_as_they_end_make_the_reference_line() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
        use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
        use opentelemetry_sdk::trace::{InMemorySpanExporter, SimpleSpanProcessor};

        let dir = tempfile_dir();
        let path = dir.join("spans.json");
        let processor = FileBatchProcessor::new(FileExporter::open(&path).unwrap());
        let file = processor.file();
        let memory = InMemorySpanExporter::default();
        let resource = SdkResource::builder()
            .with_service_name("wtrace")
            .with_attribute(opentelemetry::KeyValue::new("process.pid", 7_i64))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_span_processor(processor)
            .with_span_processor(SimpleSpanProcessor::new(memory.clone()))
            .build();
        let (host, guest) = (provider.tracer("wtrace"), provider.tracer("guest"));
        let ended = Mutex::new(());
        std::thread::scope(|threads| {
            for thread in 0..2 {
                let (host, guest, ended) = (&host, &guest, &ended);
                threads.spawn(move || {
                    for i in 0..50 {
                        let tracer = if i % 3 == thread { guest } else { host };
                        let mut span = tracer.start(format!("t{thread} s{i} \"quoted\""));
                        span.set_attribute(opentelemetry::KeyValue::new("i", i as i64));
                        // One span ends at a time, so the in-memory order is
                        // the order the file processor saw.
                        let _one = lock(ended);
                        span.end();
                    }
                });
            }
        });
        file.sync().unwrap();
        host.start("after").end();
        file.sync().unwrap();
        // The idle flusher may have written a line mid-way: each line must
        // be the reference encoding of the spans that ended since the last.
        let mut spans = memory.get_finished_spans().unwrap().into_iter();
        assert_eq!(spans.len(), 101);
        let attributes: ResourceAttributesWithSchema = (&resource).into();
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            let parsed: serde_json::Value = serde_json::from_str(line).unwrap();
            let count: usize = parsed["resourceSpans"][0]["scopeSpans"]
                .as_array()
                .unwrap()
                .iter()
                .map(|scope| scope["spans"].as_array().unwrap().len())
                .sum();
            let request = ExportTraceServiceRequest {
                resource_spans: group_spans_by_resource_and_scope(
                    spans.by_ref().take(count).collect(),
                    &attributes,
                ),
            };
            assert_eq!(line, serde_json::to_string(&request).unwrap());
        }
        assert_eq!(spans.len(), 0, "every span is in the file");
        assert!(
            text.lines().count() >= 2,
            "a sync writes what ended before it"
        );
        provider.shutdown().unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A task span's attribute list goes back to the thread that ended
    /// it once the span is encoded, and its next task span takes the same
    /// list: no allocation for it per span, and every span still whole in
    /// the file.
    #[test]
    fn an_encoded_span_gives_its_attribute_list_to_the_next() {
        let (dir, path, file, provider) = batched_file();
        let tracer = provider.tracer("t");
        let mut lists = Vec::new();
        // Allocations of a list's size held between spans: a list freed
        // rather than kept would be handed to one of them.
        let mut others: Vec<Vec<opentelemetry::KeyValue>> = Vec::new();
        for i in 0..50_i64 {
            let mut list = crate::attrs::attribute_list();
            list.push(opentelemetry::KeyValue::new("i", i));
            lists.push(list.as_ptr());
            tracer
                .span_builder("task")
                .with_attributes(list)
                .start(&tracer)
                .end();
            others.push(Vec::with_capacity(16));
        }
        assert!(
            lists[1..].iter().all(|list| *list == lists[1]),
            "after the first, every span reuses one list"
        );
        file.sync().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        for i in 0..50 {
            assert!(text.contains(&format!(r#""key":"i","value":{{"intValue":"{i}"}}"#)));
        }
        provider.shutdown().unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A provider whose spans go through a [`FileBatchProcessor`] to
    /// `spans.json` in a new directory: the directory, the file, its handle.
    fn batched_file() -> (PathBuf, PathBuf, SpanFile, SdkTracerProvider) {
        let dir = tempfile_dir();
        let path = dir.join("spans.json");
        let processor = FileBatchProcessor::new(FileExporter::open(&path).unwrap());
        let file = processor.file();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .build();
        (dir, path, file, provider)
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "wtrace-file-test-{}-{}",
            std::process::id(),
            crate::ids::random_hex(4)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

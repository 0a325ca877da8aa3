//! Reading OTLP-JSON span files (and the log files beside them) back, and
//! printing traces as trees, each span with the log lines written in it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};

use crate::error::{Error, Result};

mod chrome;
mod html;

/// What a process is called in the viewers: its role and pid.
fn process_name(span: &SpanRecord, pid: i64) -> String {
    let resource = &span.resource;
    let service = resource
        .get("service.name")
        .map_or("wtrace", String::as_str);
    match resource.get("wtrace.worker_id").map(String::as_str) {
        Some("driver") | None => format!("{service} driver (pid {pid})"),
        Some(worker) => format!("{service} worker {worker} (pid {pid})"),
    }
}

/// One span read from a file, flattened.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    /// Trace id, hex.
    pub trace_id: String,
    /// Span id, hex.
    pub span_id: String,
    /// Parent span id, hex; empty for a root.
    pub parent_span_id: String,
    /// Span name.
    pub name: String,
    /// `INTERNAL`, `SERVER`, `CLIENT`, `PRODUCER` or `CONSUMER`.
    pub kind: &'static str,
    /// Start, ns since the epoch.
    pub start: u64,
    /// End, ns since the epoch.
    pub end: u64,
    /// Error description when the status is ERROR.
    pub error: Option<String>,
    /// `process.pid` of the resource.
    pub pid: Option<i64>,
    /// Span attributes, values rendered as text.
    pub attributes: BTreeMap<String, String>,
    /// Resource attributes, values rendered as text (shared by the spans of
    /// one resource).
    pub resource: Arc<BTreeMap<String, String>>,
    /// Names of the span's events.
    pub events: Vec<String>,
    /// The spans it links to: (trace id, span id), hex.
    pub links: Vec<(String, String)>,
    /// Which file it came from.
    pub file: PathBuf,
}

/// One log record read from a file, flattened.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// Trace id, hex; empty when the record belongs to no span.
    pub trace_id: String,
    /// Span id, hex; empty when the record belongs to no span.
    pub span_id: String,
    /// When it was written, ns since the epoch.
    pub time: u64,
    /// `INFO`, `WARN`… (empty when unspecified).
    pub severity: String,
    /// The body, as text.
    pub body: String,
    /// Record attributes, values rendered as text.
    pub attributes: BTreeMap<String, String>,
    /// `process.pid` of the resource.
    pub pid: Option<i64>,
}

/// Spans read, and what was skipped and why.
#[derive(Debug, Default)]
pub struct SpanFiles {
    /// Keep only spans whose trace id starts with this (lowercase hex).
    only: Option<String>,
    /// Every span read.
    pub spans: Vec<SpanRecord>,
    /// Every log record read (from `<pid>.logs.json` files).
    pub logs: Vec<LogLine>,
    /// Lines skipped, with the reason (a torn last line of a killed process, say).
    pub warnings: Vec<String>,
    /// Files read.
    pub files: Vec<PathBuf>,
}

impl SpanFiles {
    /// Reads each path: a directory means its `*.json` files, `-` standard input.
    pub fn read(paths: &[PathBuf]) -> Result<Self> {
        Self::read_trace(paths, None)
    }

    /// Like [`SpanFiles::read`], keeping only the spans of traces whose id
    /// starts with `trace`: files are read a line at a time, so a large span
    /// directory can be searched in little memory.
    pub fn read_trace(paths: &[PathBuf], trace: Option<&str>) -> Result<Self> {
        let mut out = Self {
            only: trace.map(str::to_ascii_lowercase),
            ..Self::default()
        };
        for path in paths {
            if path == Path::new("-") {
                out.add_lines(path, std::io::stdin().lock())
                    .map_err(|e| Error::io("cannot read standard input", e))?;
            } else if path.is_dir() {
                let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                    .map_err(|e| Error::io(format!("cannot list {}", path.display()), e))?
                    .filter_map(|entry| entry.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "json" || e == "jsonl"))
                    .collect();
                files.sort();
                for file in files {
                    out.add_file(&file)?;
                }
            } else {
                out.add_file(path)?;
            }
        }
        Ok(out)
    }

    fn add_file(&mut self, path: &Path) -> Result<()> {
        let file = std::fs::File::open(path)
            .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
        self.add_lines(path, std::io::BufReader::new(file))
            .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))
    }

    /// Parses OTLP-JSON lines (one `ExportTraceServiceRequest` per line).
    pub fn add_text(&mut self, file: &Path, text: &str) {
        let _ = self.add_lines(file, text.as_bytes());
    }

    fn add_lines(&mut self, file: &Path, mut reader: impl std::io::BufRead) -> std::io::Result<()> {
        self.files.push(file.to_owned());
        let mut line = String::new();
        let mut number = 0;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            number += 1;
            if line.trim().is_empty() {
                continue;
            }
            if let Some(only) = &self.only
                && !line.contains(only.as_str())
            {
                continue;
            }
            // Log files (and metric files) sit beside span files; a line
            // says which it is by its first key.
            let head = line.trim_start();
            if head.starts_with("{\"resourceMetrics\"") {
                continue;
            }
            if head.starts_with("{\"resourceLogs\"") {
                match serde_json::from_str::<ExportLogsServiceRequest>(&line) {
                    Ok(request) => self.add_logs(request),
                    Err(error) => self.warnings.push(format!(
                        "{}: line {number} is not OTLP JSON: {error}",
                        file.display()
                    )),
                }
                continue;
            }
            match serde_json::from_str::<ExportTraceServiceRequest>(&line) {
                Ok(request) => self.add_request(file, request),
                Err(error) => {
                    // Only a last line can lack its newline: a torn write.
                    let torn = !line.ends_with('\n');
                    self.warnings.push(if torn {
                        format!(
                            "{}: skipped a torn last line (line {number}): the process was probably killed while writing it",
                            file.display()
                        )
                    } else {
                        format!("{}: line {number} is not OTLP JSON: {error}", file.display())
                    });
                }
            }
        }
    }

    fn add_request(&mut self, file: &Path, request: ExportTraceServiceRequest) {
        for resource_spans in request.resource_spans {
            let resource: Arc<BTreeMap<String, String>> = Arc::new(
                resource_spans
                    .resource
                    .map(|r| attributes(&r.attributes))
                    .unwrap_or_default(),
            );
            let pid = resource.get("process.pid").and_then(|p| p.parse().ok());
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    if let Some(only) = &self.only
                        && !hex::encode(&span.trace_id).starts_with(only.as_str())
                    {
                        continue;
                    }
                    let error = (span.status.as_ref().is_some_and(|s| s.code == 2)).then(|| {
                        span.status
                            .as_ref()
                            .map(|s| s.message.clone())
                            .unwrap_or_default()
                    });
                    self.spans.push(SpanRecord {
                        trace_id: hex::encode(&span.trace_id),
                        span_id: hex::encode(&span.span_id),
                        parent_span_id: hex::encode(&span.parent_span_id),
                        name: span.name,
                        kind: kind_name(span.kind),
                        start: span.start_time_unix_nano,
                        end: span.end_time_unix_nano,
                        error,
                        pid,
                        attributes: attributes(&span.attributes),
                        resource: resource.clone(),
                        events: span.events.into_iter().map(|e| e.name).collect(),
                        links: span
                            .links
                            .iter()
                            .map(|l| (hex::encode(&l.trace_id), hex::encode(&l.span_id)))
                            .collect(),
                        file: file.to_owned(),
                    });
                }
            }
        }
    }

    fn add_logs(&mut self, request: ExportLogsServiceRequest) {
        for resource_logs in request.resource_logs {
            let pid = resource_logs
                .resource
                .map(|r| attributes(&r.attributes))
                .and_then(|r| r.get("process.pid").and_then(|p| p.parse().ok()));
            for scope in resource_logs.scope_logs {
                for record in scope.log_records {
                    let trace_id = hex::encode(&record.trace_id);
                    if let Some(only) = &self.only
                        && !trace_id.starts_with(only.as_str())
                    {
                        continue;
                    }
                    self.logs.push(LogLine {
                        trace_id,
                        span_id: hex::encode(&record.span_id),
                        time: if record.time_unix_nano > 0 {
                            record.time_unix_nano
                        } else {
                            record.observed_time_unix_nano
                        },
                        severity: record.severity_text,
                        body: record.body.as_ref().map(any_value_text).unwrap_or_default(),
                        attributes: attributes(&record.attributes),
                        pid,
                    });
                }
            }
        }
    }

    /// The log lines of each span, by span id, oldest first.
    fn logs_by_span(&self) -> HashMap<&str, Vec<&LogLine>> {
        let mut by_span: HashMap<&str, Vec<&LogLine>> = HashMap::new();
        for line in &self.logs {
            if !line.span_id.is_empty() {
                by_span.entry(&line.span_id).or_default().push(line);
            }
        }
        for lines in by_span.values_mut() {
            lines.sort_by_key(|l| l.time);
        }
        by_span
    }

    /// The trace ids, oldest trace first.
    pub fn trace_ids(&self) -> Vec<String> {
        self.traces()
            .into_iter()
            .map(|(id, _)| id.to_owned())
            .collect()
    }

    /// The spans of each trace, oldest trace first (by its earliest span).
    fn traces(&self) -> Vec<(&str, Vec<&SpanRecord>)> {
        let mut by_trace: HashMap<&str, Vec<&SpanRecord>> = HashMap::new();
        for span in &self.spans {
            by_trace.entry(&span.trace_id).or_default().push(span);
        }
        let mut traces: Vec<(&str, Vec<&SpanRecord>)> = by_trace.into_iter().collect();
        traces.sort_by_cached_key(|(id, spans)| {
            (spans.iter().map(|s| s.start).min().unwrap_or(u64::MAX), *id)
        });
        traces
    }

    /// Renders every trace (or those whose id starts with `only`) as trees.
    pub fn render(&self, only: Option<&str>) -> String {
        let only = only.map(str::to_ascii_lowercase);
        let logs = self.logs_by_span();
        let mut out = String::new();
        for (trace_id, spans) in self.traces() {
            if only
                .as_deref()
                .is_some_and(|prefix| !trace_id.starts_with(prefix))
            {
                continue;
            }
            render_trace(&mut out, trace_id, &spans, &logs);
        }
        out
    }
}

/// Log lines by span id.
type Logs<'a> = HashMap<&'a str, Vec<&'a LogLine>>;

fn render_trace(out: &mut String, trace_id: &str, spans: &[&SpanRecord], logs: &Logs<'_>) {
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: HashMap<&str, Vec<&SpanRecord>> = HashMap::new();
    let mut roots = Vec::new();
    for span in spans {
        if !span.parent_span_id.is_empty() && ids.contains(span.parent_span_id.as_str()) {
            children.entry(&span.parent_span_id).or_default().push(span);
        } else {
            roots.push(*span);
        }
    }
    for list in children.values_mut() {
        list.sort_by_key(|s| s.start);
    }
    roots.sort_by_key(|s| s.start);
    let start = spans.iter().map(|s| s.start).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.end).max().unwrap_or(0);
    let pids: HashSet<Option<i64>> = spans.iter().map(|s| s.pid).collect();
    let _ = writeln!(
        out,
        "trace {trace_id}  {} span{}, {} process{}, {}",
        spans.len(),
        if spans.len() == 1 { "" } else { "s" },
        pids.len(),
        if pids.len() == 1 { "" } else { "es" },
        duration(end.saturating_sub(start))
    );
    for (i, root) in roots.iter().enumerate() {
        render_span(out, root, &children, logs, "", i + 1 == roots.len());
    }
    out.push('\n');
}

fn render_span(
    out: &mut String,
    span: &SpanRecord,
    children: &HashMap<&str, Vec<&SpanRecord>>,
    logs: &Logs<'_>,
    prefix: &str,
    last: bool,
) {
    let branch = if last { "└─ " } else { "├─ " };
    let pid = span
        .pid
        .map(|p| format!("pid {p}"))
        .unwrap_or_else(|| "pid ?".into());
    let mut line = format!(
        "{prefix}{branch}{}  {}  {}  {pid}",
        span.name,
        span.kind,
        duration(span.end.saturating_sub(span.start))
    );
    if let Some(error) = &span.error {
        let _ = write!(line, "  ERROR: {error}");
    }
    if span
        .attributes
        .get("wtrace.unended")
        .is_some_and(|v| v == "true")
    {
        line.push_str("  (never ended by the guest)");
    }
    if !span.parent_span_id.is_empty() && prefix.is_empty() {
        let _ = write!(
            line,
            "  (parent {} not in these files)",
            &span.parent_span_id
        );
    }
    out.push_str(&line);
    out.push('\n');
    let child_prefix = format!("{prefix}{}", if last { "   " } else { "│  " });
    let kids = children.get(span.span_id.as_str());
    for line in logs.get(span.span_id.as_str()).into_iter().flatten() {
        let bar = if kids.is_some() { "│" } else { " " };
        let _ = writeln!(
            out,
            "{child_prefix}{bar} {:<5} {}",
            line.severity,
            line.body.trim_end()
        );
    }
    if let Some(list) = kids {
        for (i, child) in list.iter().enumerate() {
            render_span(
                out,
                child,
                children,
                logs,
                &child_prefix,
                i + 1 == list.len(),
            );
        }
    }
}

fn duration(ns: u64) -> String {
    let ms = ns as f64 / 1e6;
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 1.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{:.1} µs", ns as f64 / 1e3)
    }
}

fn kind_name(kind: i32) -> &'static str {
    match kind {
        1 => "INTERNAL",
        2 => "SERVER",
        3 => "CLIENT",
        4 => "PRODUCER",
        5 => "CONSUMER",
        _ => "UNSPECIFIED",
    }
}

fn attributes(list: &[KeyValue]) -> BTreeMap<String, String> {
    list.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(any_value_text).unwrap_or_default(),
            )
        })
        .collect()
}

/// An attribute value as text: strings bare, others as JSON would show them.
pub fn any_value_text(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::ArrayValue(array)) => format!(
            "[{}]",
            array
                .values
                .iter()
                .map(any_value_text)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(any_value::Value::BytesValue(bytes)) => hex::encode(bytes),
        Some(any_value::Value::KvlistValue(list)) => format!("{:?}", attributes(&list.values)),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A span of process 1 in `1.json`, named `span <id>`.
    pub(super) fn record(trace: &str, id: &str, parent: &str, start: u64, end: u64) -> SpanRecord {
        SpanRecord {
            trace_id: trace.to_owned(),
            span_id: id.to_owned(),
            parent_span_id: parent.to_owned(),
            name: format!("span {id}"),
            kind: "INTERNAL",
            start,
            end,
            error: None,
            pid: Some(1),
            attributes: BTreeMap::new(),
            resource: Arc::default(),
            events: Vec::new(),
            links: Vec::new(),
            file: PathBuf::from("1.json"),
        }
    }

    const LINE: &str = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"process.pid","value":{"intValue":"42"}}]},"scopeSpans":[{"scope":{"name":"wtrace"},"spans":[{"traceId":"0af7651916cd43dd8448eb211c80319c","spanId":"b7ad6b7169203331","parentSpanId":"","name":"root","kind":4,"startTimeUnixNano":"1000","endTimeUnixNano":"3000000","status":{}},{"traceId":"0af7651916cd43dd8448eb211c80319c","spanId":"00f067aa0ba902b7","parentSpanId":"b7ad6b7169203331","name":"child","kind":5,"startTimeUnixNano":"2000","endTimeUnixNano":"4000","status":{"code":2,"message":"boom"}}]}]}]}"#;

    #[test]
    fn a_torn_last_line_is_skipped_with_a_warning() {
        let mut files = SpanFiles::default();
        let text = format!("{LINE}\n{}", &LINE[..40]);
        files.add_text(Path::new("42.json"), &text);
        assert_eq!(files.spans.len(), 2);
        assert_eq!(files.warnings.len(), 1);
        assert!(
            files.warnings[0].contains("torn last line"),
            "{:?}",
            files.warnings
        );

        let mut files = SpanFiles::default();
        files.add_text(Path::new("42.json"), &format!("not json\n{LINE}\n"));
        assert_eq!(files.spans.len(), 2);
        assert!(
            files.warnings[0].contains("line 1 is not OTLP JSON"),
            "{:?}",
            files.warnings
        );
    }

    #[test]
    fn traces_come_oldest_first_with_their_own_spans_however_files_interleave_them() {
        let span = |trace: &str, id: &str, parent: &str, start: u64| {
            record(trace, id, parent, start, start + 1_000)
        };
        let files = SpanFiles {
            spans: vec![
                span("cc", "c1", "", 300),
                span("aa", "a2", "a1", 150),
                span("bb", "b1", "", 200),
                span("cc", "c2", "c1", 310),
                span("aa", "a1", "", 100),
                span("bb", "b2", "b1", 50),
            ],
            ..SpanFiles::default()
        };
        assert_eq!(files.trace_ids(), ["bb", "aa", "cc"]);
        let tree = files.render(None);
        let headers: Vec<&str> = tree.lines().filter(|l| l.starts_with("trace ")).collect();
        assert_eq!(headers.len(), 3, "{tree}");
        for (header, id) in headers.iter().zip(["bb", "aa", "cc"]) {
            assert!(
                header.starts_with(&format!("trace {id}  2 spans")),
                "{tree}"
            );
        }
        assert!(
            tree.contains("└─ span a1  INTERNAL  1.0 µs  pid 1\n   └─ span a2"),
            "{tree}"
        );
    }

    #[test]
    fn traces_render_as_trees() {
        let mut files = SpanFiles::default();
        files.add_text(Path::new("42.json"), &format!("{LINE}\n"));
        let tree = files.render(None);
        assert!(
            tree.starts_with("trace 0af7651916cd43dd8448eb211c80319c  2 spans, 1 process"),
            "{tree}"
        );
        assert!(
            tree.contains("└─ root  PRODUCER  3.00 ms  pid 42"),
            "{tree}"
        );
        assert!(
            tree.contains("   └─ child  CONSUMER  2.0 µs  pid 42  ERROR: boom"),
            "{tree}"
        );
        assert!(files.render(Some("ffff")).is_empty());
        assert!(!files.render(Some("0AF765")).is_empty());
    }
}

//! Log records joined to traces: every line a task or hook writes, and every
//! record a guest emits (`wtrace:tracing/logs`, `wasi:otel/logs`), becomes an
//! OpenTelemetry log record carrying the trace and span id of the span that
//! was current when it was written, `wtrace.function` and `wtrace.task_id`,
//! and the process's resource. The hook chooses where records go, as for
//! spans; without a log processor none of this costs anything.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, Severity};
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use opentelemetry::{Key, StringValue, Value};
use opentelemetry_sdk::logs::SdkLogger;

use crate::sync::lock;

/// Which standard stream a line was written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output: INFO unless the line says otherwise.
    Stdout,
    /// Standard error: WARN unless the line says otherwise.
    Stderr,
}

impl Stream {
    /// The `log.iostream` attribute's value (OpenTelemetry semantic
    /// conventions).
    pub fn name(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The severity a line of output declares in its first word (or second,
/// after a timestamp): `ERROR …`, `[warn] …`, `error: …`,
/// `2026-12-06T10:00:00Z DEBUG …`. A lowercase word counts only when marked
/// as a level (`error:`, `[debug]`), so "error handling done" stays plain
/// output. Otherwise the stream's default.
pub fn severity_of_line(line: &str, stream: Stream) -> Severity {
    let mut words = line.split_whitespace();
    let declared = |word: &str| {
        // `WARNING:root:slow` (Python's logging) and `error:` alike.
        let head = word.split(':').next().unwrap_or_default();
        let bare = head.trim_matches(|c: char| matches!(c, '[' | ']' | '(' | ')' | '<' | '>'));
        let marked = bare.len() != word.len();
        let upper = bare.chars().all(|c| c.is_ascii_uppercase());
        if !(marked || upper) || bare.is_empty() {
            return None;
        }
        match bare.to_ascii_uppercase().as_str() {
            "TRACE" => Some(Severity::Trace),
            "DEBUG" => Some(Severity::Debug),
            "INFO" | "NOTICE" => Some(Severity::Info),
            "WARN" | "WARNING" => Some(Severity::Warn),
            "ERROR" | "ERR" => Some(Severity::Error),
            "FATAL" | "CRITICAL" | "CRIT" | "PANIC" => Some(Severity::Fatal),
            _ => None,
        }
    };
    let first = words.next().unwrap_or_default();
    let found = declared(first).or_else(|| {
        // A timestamp first: `2026-12-06T… ERROR …`, `12:00:01 WARN …`.
        first
            .starts_with(|c: char| c.is_ascii_digit())
            .then(|| words.next().and_then(declared))
            .flatten()
    });
    found.unwrap_or(match stream {
        Stream::Stdout => Severity::Info,
        Stream::Stderr => Severity::Warn,
    })
}

/// The log records of one store (a task, an actor's calls, a hook run):
/// turns its output into records line by line, each joined to the span
/// current when the line began, and emits the records guests hand over.
///
/// The span bridge tells it which span is current ([`TaskLog::set_span`]);
/// the sandbox's output pipes hand it what the guest writes
/// ([`TaskLog::write`]).
#[derive(Debug)]
pub struct TaskLog {
    logger: Arc<SdkLogger>,
    /// Longest body, in bytes; longer ones are truncated.
    body_limit: usize,
    /// The current span, set at every guest span start and end.
    span: CurrentSpan,
    state: Mutex<State>,
}

/// A span's ids and flags (all a log record takes of it) in atomics: the
/// bridge sets them twice a guest span, so without a lock.
#[derive(Debug, Default)]
struct CurrentSpan {
    trace_id: [AtomicU64; 2],
    span_id: AtomicU64,
    flags: AtomicU8,
}

impl CurrentSpan {
    // The store's thread sets and reads them; Relaxed is enough.
    fn set(&self, span: &SpanContext) {
        let trace_id = u128::from_be_bytes(span.trace_id().to_bytes());
        self.trace_id[0].store((trace_id >> 64) as u64, Ordering::Relaxed);
        self.trace_id[1].store(trace_id as u64, Ordering::Relaxed);
        self.span_id.store(
            u64::from_be_bytes(span.span_id().to_bytes()),
            Ordering::Relaxed,
        );
        self.flags
            .store(span.trace_flags().to_u8(), Ordering::Relaxed);
    }

    fn get(&self) -> SpanContext {
        let trace_id = (u128::from(self.trace_id[0].load(Ordering::Relaxed)) << 64)
            | u128::from(self.trace_id[1].load(Ordering::Relaxed));
        SpanContext::new(
            TraceId::from_bytes(trace_id.to_be_bytes()),
            SpanId::from_bytes(self.span_id.load(Ordering::Relaxed).to_be_bytes()),
            TraceFlags::new(self.flags.load(Ordering::Relaxed)),
            false,
            TraceState::NONE,
        )
    }
}

/// Who wrote a store's records: the attributes each record carries, made
/// only when one is.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A task or an actor call: `wtrace.function` and `wtrace.task_id`.
    Task {
        /// The function called, shared from task to task.
        function: StringValue,
        /// The task's id.
        task_id: String,
    },
    /// A hook: `wtrace.hook`, the export run.
    Hook(String),
}

impl Origin {
    /// A task's (or actor call's) origin.
    pub fn task(function: &str, task_id: &str) -> Self {
        Self::of_task(crate::attrs::shared_string(function), task_id)
    }

    /// [`Origin::task`], for a function name shared already.
    pub fn of_task(function: StringValue, task_id: &str) -> Self {
        Self::Task {
            function,
            task_id: task_id.to_owned(),
        }
    }

    /// Adds the attributes to `record`.
    fn add_to(&self, record: &mut impl opentelemetry::logs::LogRecord) {
        match self {
            Self::Task { function, task_id } => {
                record.add_attribute("wtrace.function", function.clone());
                record.add_attribute(crate::attrs::TASK_ID, task_id.clone());
            }
            Self::Hook(export) => record.add_attribute("wtrace.hook", export.clone()),
        }
    }
}

#[derive(Debug)]
struct State {
    origin: Origin,
    /// The unfinished last line of each stream, with the span current when
    /// it began.
    partial: [Option<(Vec<u8>, SpanContext)>; 2],
}

/// A record a guest emits, before the host joins it to the task.
#[derive(Debug, Default)]
pub struct GuestRecord {
    /// When it happened; none: now.
    pub time: Option<SystemTime>,
    /// Its severity; none: unspecified.
    pub severity: Option<Severity>,
    /// The body.
    pub body: Option<AnyValue>,
    /// Its own attributes.
    pub attributes: Vec<(Key, AnyValue)>,
    /// The span it belongs to; none: the current span.
    pub span: Option<SpanContext>,
}

impl TaskLog {
    /// Records to `logger`, bodies cut at `body_limit` bytes, with the
    /// `origin` attributes (who wrote them) and under `span` until told
    /// otherwise.
    pub fn new(
        logger: Arc<SdkLogger>,
        body_limit: usize,
        origin: Origin,
        span: SpanContext,
    ) -> Self {
        let current = CurrentSpan::default();
        current.set(&span);
        Self {
            logger,
            body_limit,
            span: current,
            state: Mutex::new(State {
                origin,
                partial: [None, None],
            }),
        }
    }

    /// The span now current: what later lines and records are joined to.
    pub fn set_span(&self, span: &SpanContext) {
        self.span.set(span);
    }

    /// Another run in the same store (an actor's next call): its origin and
    /// root span. Unfinished lines of the last run are emitted first.
    pub fn rearm(&self, origin: Origin, span: SpanContext) {
        self.finish();
        lock(&self.state).origin = origin;
        self.span.set(&span);
    }

    /// Bytes the guest wrote to `stream`: each line they complete becomes a
    /// record.
    pub fn write(&self, stream: Stream, mut bytes: &[u8]) {
        let mut lines = Vec::new();
        let origin = {
            let current = self.span.get();
            let mut state = lock(&self.state);
            let partial = &mut state.partial[stream.index()];
            while let Some(end) = bytes.iter().position(|b| *b == b'\n') {
                let (line, rest) = (&bytes[..end], &bytes[end + 1..]);
                match partial.take() {
                    Some((mut start, span)) => {
                        start.extend_from_slice(line);
                        lines.push((Cow::Owned(start), span));
                    }
                    None => lines.push((Cow::Borrowed(line), current.clone())),
                }
                bytes = rest;
            }
            if !bytes.is_empty() {
                let (pending, _) = partial.get_or_insert_with(|| (Vec::new(), current.clone()));
                // A line past the body limit is cut there anyway.
                let room = (self.body_limit + 1).saturating_sub(pending.len());
                pending.extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
            if lines.is_empty() {
                return;
            }
            state.origin.clone()
        };
        for (line, span) in lines {
            self.emit_line(stream, &line, &span, &origin);
        }
    }

    /// Emits what is left of unfinished lines (output that did not end with
    /// a newline).
    pub fn finish(&self) {
        let (pending, origin) = {
            let mut state = lock(&self.state);
            // Most runs leave nothing: then nothing is copied.
            if state.partial.iter().all(Option::is_none) {
                return;
            }
            let pending: Vec<_> = [Stream::Stdout, Stream::Stderr]
                .into_iter()
                .filter_map(|s| state.partial[s.index()].take().map(|p| (s, p)))
                .collect();
            (pending, state.origin.clone())
        };
        for (stream, (line, span)) in pending {
            self.emit_line(stream, &line, &span, &origin);
        }
    }

    fn emit_line(&self, stream: Stream, line: &[u8], span: &SpanContext, origin: &Origin) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = String::from_utf8_lossy(line);
        if text.trim().is_empty() {
            return;
        }
        let severity = severity_of_line(&text, stream);
        let mut record = self.logger.create_log_record();
        let now = SystemTime::now();
        record.set_timestamp(now);
        record.set_observed_timestamp(now);
        record.set_severity_number(severity);
        record.set_severity_text(severity.name());
        record.set_body(AnyValue::String(self.cut(text).into()));
        origin.add_to(&mut record);
        record.add_attribute("log.iostream", stream.name());
        if span.is_valid() {
            record.set_trace_context(span.trace_id(), span.span_id(), Some(span.trace_flags()));
        }
        self.logger.emit(record);
    }

    /// Emits a record a guest handed over, joined to its span (else the
    /// current one) and carrying the task's origin.
    pub fn emit(&self, guest: GuestRecord) {
        let span = guest.span.unwrap_or_else(|| self.span.get());
        let mut record = self.logger.create_log_record();
        let now = SystemTime::now();
        record.set_timestamp(guest.time.unwrap_or(now));
        record.set_observed_timestamp(now);
        if let Some(severity) = guest.severity {
            record.set_severity_number(severity);
            record.set_severity_text(severity.name());
        }
        if let Some(body) = guest.body {
            record.set_body(match body {
                AnyValue::String(text) => AnyValue::String(self.cut(text.as_str().into()).into()),
                other => other,
            });
        }
        lock(&self.state).origin.add_to(&mut record);
        for (key, value) in guest.attributes {
            record.add_attribute(key, value);
        }
        if span.is_valid() {
            record.set_trace_context(span.trace_id(), span.span_id(), Some(span.trace_flags()));
        }
        self.logger.emit(record);
    }

    fn cut(&self, text: Cow<'_, str>) -> String {
        if text.len() <= self.body_limit {
            return text.into_owned();
        }
        let mut end = self.body_limit;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text[..end].to_owned()
    }
}

/// An attribute value as a log record's value.
pub fn any_value(value: &Value) -> AnyValue {
    match value {
        Value::Bool(b) => AnyValue::Boolean(*b),
        Value::I64(n) => AnyValue::Int(*n),
        Value::F64(x) => AnyValue::Double(*x),
        Value::String(s) => AnyValue::String(s.clone()),
        Value::Array(array) => {
            let list: Vec<AnyValue> = match array {
                opentelemetry::Array::Bool(v) => v.iter().map(|b| AnyValue::Boolean(*b)).collect(),
                opentelemetry::Array::I64(v) => v.iter().map(|n| AnyValue::Int(*n)).collect(),
                opentelemetry::Array::F64(v) => v.iter().map(|x| AnyValue::Double(*x)).collect(),
                opentelemetry::Array::String(v) => {
                    v.iter().map(|s| AnyValue::String(s.clone())).collect()
                }
                _ => Vec::new(),
            };
            AnyValue::ListAny(Box::new(list))
        }
        _ => AnyValue::String(value.to_string().into()),
    }
}

/// A severity number (1–24) as the SDK's severity.
pub fn severity_from_number(number: u8) -> Option<Severity> {
    use Severity::*;
    const ALL: [Severity; 24] = [
        Trace, Trace2, Trace3, Trace4, Debug, Debug2, Debug3, Debug4, Info, Info2, Info3, Info4,
        Warn, Warn2, Warn3, Warn4, Error, Error2, Error3, Error4, Fatal, Fatal2, Fatal3, Fatal4,
    ];
    ALL.get(usize::from(number).checked_sub(1)?).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_declares_its_severity_in_its_first_word_else_its_stream_decides() {
        let of = |line| severity_of_line(line, Stream::Stdout);
        assert_eq!(of("hello"), Severity::Info);
        assert_eq!(severity_of_line("hello", Stream::Stderr), Severity::Warn);
        assert_eq!(of("ERROR disk full"), Severity::Error);
        assert_eq!(of("error: disk full"), Severity::Error);
        assert_eq!(of("[warn] slow"), Severity::Warn);
        assert_eq!(of("WARNING:root:slow"), Severity::Warn, "Python's logging");
        assert_eq!(of("http://example.com is up"), Severity::Info);
        assert_eq!(of("DEBUG x=1"), Severity::Debug);
        assert_eq!(of("2026-12-06T10:00:00Z  INFO loaded"), Severity::Info);
        assert_eq!(
            severity_of_line("2026-12-06T10:00:00Z ERROR failed", Stream::Stdout),
            Severity::Error
        );
        assert_eq!(
            of("error handling done"),
            Severity::Info,
            "not marked as a level"
        );
        assert_eq!(of("Traceback (most recent call last):"), Severity::Info);
        assert_eq!(
            severity_of_line("fatal: not a repository", Stream::Stderr),
            Severity::Fatal
        );
        assert_eq!(of(""), Severity::Info);
    }

    #[test]
    fn severity_numbers_map_onto_the_sdk_severities() {
        assert_eq!(severity_from_number(0), None);
        assert_eq!(severity_from_number(1), Some(Severity::Trace));
        assert_eq!(severity_from_number(9), Some(Severity::Info));
        assert_eq!(severity_from_number(13), Some(Severity::Warn));
        assert_eq!(severity_from_number(24), Some(Severity::Fatal4));
        assert_eq!(severity_from_number(25), None);
    }
}

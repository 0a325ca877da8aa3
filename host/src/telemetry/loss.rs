//! Lost telemetry said plainly: each span or log processor keeps a
//! [`Ledger`] of the spans (or log records) that ended, those handed to its
//! exporter, and those the exporter failed to deliver with the reason, so
//! that at exit a process says, one line per exporter, what was lost, how
//! much, where it was going and why
//! (an OTLP receiver answering 415 to `http/json`, a refused connection, a
//! full disk), rather than leaving it to the SDK's internal warnings.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::{Context, InstrumentationScope};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogBatch, LogExporter, LogProcessor, SdkLogRecord};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};

use crate::sync::lock;

/// What became of the spans (or log records) bound for one exporter.
#[derive(Debug)]
pub struct Ledger {
    /// `spans` or `log records`.
    what: &'static str,
    /// Where they were going: `file /tmp/spans/42.json`, `OTLP http/json
    /// to http://…`.
    target: String,
    ended: AtomicU64,
    handed: AtomicU64,
    failed: AtomicU64,
    /// The last reason an export failed.
    why: Mutex<Option<String>>,
}

/// Spans (or log records) lost on their way to one exporter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    /// `spans` or `log records`.
    pub what: &'static str,
    /// Where they were going.
    pub target: String,
    /// Spans lost.
    pub lost: u64,
    /// Spans that ended, bound for it.
    pub ended: u64,
    /// Why, as the exporter said; none when spans never reached it (a queue
    /// full, or still queued at exit).
    pub why: Option<String>,
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "lost {} of {} {} bound for {}: ",
            self.lost, self.ended, self.what, self.target
        )?;
        match &self.why {
            Some(why) => {
                f.write_str(why)?;
                match what_to_do(why) {
                    Some(hint) => write!(f, " ({hint})"),
                    None => Ok(()),
                }
            }
            None => f.write_str(
                "they never reached the exporter (its queue was full, or it was still busy at exit)",
            ),
        }
    }
}

/// What a user can do about the usual reasons an OTLP export fails, read
/// from the exporter's error text (the SDK's errors carry no codes).
fn what_to_do(why: &str) -> Option<&'static str> {
    let why = why.to_ascii_lowercase();
    let has = |needle: &str| why.contains(needle);
    if has("status code: 404") {
        Some(
            "the receiver has nothing at that path: OTEL_EXPORTER_OTLP_ENDPOINT is the base \
             URL, to which /v1/traces is added; OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is used as it is",
        )
    } else if has("status code: 415") {
        Some(
            "the receiver does not take this encoding: set OTEL_EXPORTER_OTLP_PROTOCOL to one it \
             takes, such as http/protobuf",
        )
    } else if has("status code: 401") || has("status code: 403") || has("unauthenticated") {
        Some("the receiver refused the credentials: check OTEL_EXPORTER_OTLP_HEADERS")
    } else if has("timed out") || has("timeout") || has("deadline") {
        Some(
            "the receiver did not answer in time: is it overloaded? OTEL_EXPORTER_OTLP_TIMEOUT sets the wait",
        )
    } else if has("network error")
        || has("connection refused")
        || has("connect error")
        || has("transport error")
        || has("unavailable")
    {
        Some("nothing answered there: is the receiver running, and is the endpoint right?")
    } else {
        None
    }
}

impl Ledger {
    /// A ledger for spans going to `target`.
    pub fn new(target: impl Into<String>) -> Arc<Self> {
        Self::of("spans", target)
    }

    /// A ledger for metric exports going to `target`.
    pub fn for_metrics(target: impl Into<String>) -> Arc<Self> {
        Self::of("metric exports", target)
    }

    /// Where they go.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// `spans`, `log records` or `metric exports`.
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// How many were delivered.
    pub fn delivered(&self) -> u64 {
        let handed = self.handed.load(Ordering::Relaxed);
        handed.saturating_sub(self.failed.load(Ordering::Relaxed))
    }

    /// `n` more were made, bound for the exporter (for exporters without a
    /// processor in front that counts them).
    pub fn attempted(&self, n: u64) {
        self.ended.fetch_add(n, Ordering::Relaxed);
    }

    /// A ledger for log records going to `target`.
    pub fn for_logs(target: impl Into<String>) -> Arc<Self> {
        Self::of("log records", target)
    }

    fn of(what: &'static str, target: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            what,
            target: target.into(),
            ended: AtomicU64::new(0),
            handed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            why: Mutex::new(None),
        })
    }

    /// Spans (or records) ended and not yet through their exporter: those
    /// in its processor's queue and in the batch it is exporting.
    pub fn queued(&self) -> u64 {
        let ended = self.ended.load(Ordering::Relaxed);
        ended.saturating_sub(self.handed.load(Ordering::Relaxed))
    }

    /// `n` spans were handed to the exporter; `result` is what it said.
    pub fn exported<T, E: std::fmt::Display>(&self, n: usize, result: &Result<T, E>) {
        self.handed.fetch_add(n as u64, Ordering::Relaxed);
        if let Err(error) = result {
            self.failed.fetch_add(n as u64, Ordering::Relaxed);
            *lock(&self.why) = Some(error.to_string());
        }
    }

    /// The spans lost so far (all of them counted once the processor shut
    /// down): failed exports, and spans that never reached the exporter.
    pub fn loss(&self) -> Option<Loss> {
        let ended = self.ended.load(Ordering::Relaxed);
        let handed = self.handed.load(Ordering::Relaxed);
        let failed = self.failed.load(Ordering::Relaxed);
        let lost = failed + ended.saturating_sub(handed);
        (lost > 0).then(|| Loss {
            what: self.what,
            target: self.target.clone(),
            lost,
            ended,
            why: (failed > 0).then(|| lock(&self.why).clone()).flatten(),
        })
    }
}

/// The longest one span end (or log record) waits for room in a queue.
pub const MAX_WAIT: Duration = Duration::from_millis(100);

/// Waits while `full()`, for at most [`MAX_WAIT`]: a producer slowed to
/// what its exporter takes rather than a span or record dropped. Past that
/// wait (an exporter that is stuck) the queue drops, and the ledger says so.
pub(crate) fn wait_for_room(full: impl Fn() -> bool) {
    if full() {
        let deadline = std::time::Instant::now() + MAX_WAIT;
        while full() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// A span (or log) processor whose ended spans (or emitted records) are
/// counted in a ledger.
#[derive(Debug)]
pub struct Accounted<P> {
    inner: P,
    ledger: Arc<Ledger>,
    /// Records a log processor may hold queued before emitting waits.
    room: Option<u64>,
}

impl<P> Accounted<P> {
    /// `inner`, its ended spans counted in `ledger`.
    pub fn new(inner: P, ledger: Arc<Ledger>) -> Self {
        Self {
            inner,
            ledger,
            room: None,
        }
    }

    /// The same, for a batch log processor whose queue holds `room` records
    /// (less one export batch): emitting waits while that many are queued,
    /// as [`crate::telemetry::export::Backpressure`] makes span ends wait.
    pub fn waiting_for_room(mut self, room: u64) -> Self {
        self.room = Some(room);
        self
    }
}

impl<P: SpanProcessor> SpanProcessor for Accounted<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        // Only sampled spans are exported, and so only they can be lost.
        if span.span_context.is_sampled() {
            self.ledger.ended.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<P: LogProcessor> LogProcessor for Accounted<P> {
    fn emit(&self, record: &mut SdkLogRecord, scope: &InstrumentationScope) {
        if let Some(room) = self.room {
            wait_for_room(|| self.ledger.queued() >= room);
        }
        self.ledger.ended.fetch_add(1, Ordering::Relaxed);
        self.inner.emit(record, scope);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// A span (or log) exporter whose exports are counted in a ledger.
#[derive(Debug)]
pub struct Counted<E> {
    inner: E,
    ledger: Arc<Ledger>,
}

impl<E> Counted<E> {
    /// `inner`, its exports counted in `ledger`.
    pub fn new(inner: E, ledger: Arc<Ledger>) -> Self {
        Self { inner, ledger }
    }
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        self.ledger.exported(n, &result);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: LogExporter> LogExporter for Counted<E> {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        let n = batch.iter().count();
        let result = self.inner.export(batch).await;
        self.ledger.exported(n, &result);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_counts_failed_exports_and_spans_that_never_reached_the_exporter() {
        let ledger = Ledger::new("OTLP http/json to http://127.0.0.1:4318/v1/traces");
        assert_eq!(ledger.loss(), None);
        ledger.ended.fetch_add(10, Ordering::Relaxed);
        ledger.exported::<(), String>(4, &Ok(()));
        ledger.exported::<(), _>(3, &Err("Status Code: 415"));
        let loss = ledger.loss().unwrap();
        assert_eq!(
            (loss.lost, loss.ended),
            (6, 10),
            "3 failed, 3 never handed over"
        );
        assert_eq!(
            loss.to_string(),
            "lost 6 of 10 spans bound for OTLP http/json to http://127.0.0.1:4318/v1/traces: \
             Status Code: 415 (the receiver does not take this encoding: set \
             OTEL_EXPORTER_OTLP_PROTOCOL to one it takes, such as http/protobuf)"
        );
    }
}

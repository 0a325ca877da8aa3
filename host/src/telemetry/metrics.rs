//! What every process counts and measures, as OpenTelemetry metrics: tasks
//! started, finished and failed (by function and error type), how long
//! tasks took and how long their instances took to make, guest spans
//! started and dropped, telemetry exported and lost per exporter, and the
//! process's memory. The hook chooses a metric reader; without one, no
//! instrument exists and recording costs nothing.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _};
use opentelemetry_sdk::metrics::SdkMeterProvider;

use super::loss::Ledger;

/// Bucket bounds for task and instantiation times, in seconds: from 100 µs
/// (a trivial task) to a minute.
const SECONDS_BOUNDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 10.0, 60.0,
];

/// The instruments tasks are recorded with.
#[derive(Debug)]
pub struct TaskMetrics {
    started: Counter<u64>,
    finished: Counter<u64>,
    failed: Counter<u64>,
    duration: Histogram<f64>,
    instantiate: Histogram<f64>,
    guest_spans_started: Counter<u64>,
    guest_spans_dropped: Counter<u64>,
}

/// How one run of a task (or actor method) ended.
#[derive(Debug)]
pub struct TaskEnd<'a> {
    /// The export that ran.
    pub function: &'a str,
    /// The error's type (`wtrace.Trap`…), if it failed.
    pub error_type: Option<&'static str>,
    /// From the store's making to the end.
    pub duration: Duration,
    /// Spans the guest started, and those dropped at a limit.
    pub spans_started: u32,
    /// See `spans_started`.
    pub spans_dropped: u32,
}

impl TaskMetrics {
    /// The instruments, on `provider`; observes each ledger's exported and
    /// lost counts and the process's memory at every collection.
    pub fn new(provider: &SdkMeterProvider, ledgers: Arc<[Arc<Ledger>]>) -> Self {
        let meter = provider.meter("wtrace");
        observe_telemetry(&meter, ledgers);
        meter
            .u64_observable_gauge("process.memory.usage")
            .with_unit("By")
            .with_description("The process's resident memory")
            .with_callback(|gauge| {
                if let Some(bytes) = resident_bytes() {
                    gauge.observe(bytes, &[]);
                }
            })
            .build();
        let counter = |name: &'static str, description: &'static str| {
            meter
                .u64_counter(name)
                .with_unit("{task}")
                .with_description(description)
                .build()
        };
        let seconds = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(SECONDS_BOUNDS.to_vec())
                .build()
        };
        Self {
            started: counter("wtrace.tasks.started", "Tasks (and actor calls) started"),
            finished: counter(
                "wtrace.tasks.finished",
                "Tasks (and actor calls) that returned",
            ),
            failed: counter(
                "wtrace.tasks.failed",
                "Tasks (and actor calls) that failed, by error.type",
            ),
            duration: seconds("wtrace.task.duration", "How long a task ran"),
            instantiate: seconds(
                "wtrace.task.instantiate.duration",
                "How long a task's instance took to make",
            ),
            guest_spans_started: meter
                .u64_counter("wtrace.guest_spans.started")
                .with_unit("{span}")
                .with_description("Spans guests started")
                .build(),
            guest_spans_dropped: meter
                .u64_counter("wtrace.guest_spans.dropped")
                .with_unit("{span}")
                .with_description("Spans guests started past a limit, not recorded")
                .build(),
        }
    }

    /// A task (or actor call) of `function` started.
    pub fn started(&self, function: &str) {
        self.started.add(1, &[function_attribute(function)]);
    }

    /// Its instance took `took` to make.
    pub fn instantiated(&self, function: &str, took: Duration) {
        self.instantiate
            .record(took.as_secs_f64(), &[function_attribute(function)]);
    }

    /// A task (or actor call) ended.
    pub fn ended(&self, end: TaskEnd<'_>) {
        let function = function_attribute(end.function);
        match end.error_type {
            None => self.finished.add(1, std::slice::from_ref(&function)),
            Some(error) => self
                .failed
                .add(1, &[function.clone(), KeyValue::new("error.type", error)]),
        }
        self.duration
            .record(end.duration.as_secs_f64(), std::slice::from_ref(&function));
        if end.spans_started > 0 {
            self.guest_spans_started.add(
                u64::from(end.spans_started),
                std::slice::from_ref(&function),
            );
        }
        if end.spans_dropped > 0 {
            self.guest_spans_dropped
                .add(u64::from(end.spans_dropped), &[function]);
        }
    }
}

/// `wtrace.function`, its text shared from task to task when it can be.
fn function_attribute(function: &str) -> KeyValue {
    match crate::attrs::interned(function) {
        Some(kept) => KeyValue::new("wtrace.function", kept),
        None => KeyValue::new("wtrace.function", function.to_owned()),
    }
}

/// `wtrace.telemetry.exported` and `wtrace.telemetry.lost`, per exporter
/// (`wtrace.exporter`, where it sends) and signal (`wtrace.signal`).
fn observe_telemetry(meter: &Meter, ledgers: Arc<[Arc<Ledger>]>) {
    let attributes = |ledger: &Ledger| {
        [
            KeyValue::new("wtrace.exporter", ledger.target().to_owned()),
            KeyValue::new("wtrace.signal", ledger.what()),
        ]
    };
    let exported = ledgers.clone();
    meter
        .u64_observable_counter("wtrace.telemetry.exported")
        .with_description("Spans, log records or metric exports delivered, per exporter")
        .with_callback(move |counter| {
            for ledger in exported.iter() {
                counter.observe(ledger.delivered(), &attributes(ledger));
            }
        })
        .build();
    meter
        .u64_observable_counter("wtrace.telemetry.lost")
        .with_description("Spans, log records or metric exports lost, per exporter")
        .with_callback(move |counter| {
            for ledger in ledgers.iter() {
                let lost = ledger.loss().map_or(0, |loss| loss.lost);
                counter.observe(lost, &attributes(ledger));
            }
        })
        .build();
}

/// The process's resident set size, from `/proc/self/statm`.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    #[allow(unsafe_code)]
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

//! What every process counts and measures, as OpenTelemetry metrics: tasks
//! started, finished and failed (by function and error type), how long
//! tasks took and how long their instances took to make, guest spans
//! started and dropped, telemetry exported and lost per exporter, and the
//! process's memory. The hook chooses a metric reader; without one, no
//! instrument exists and recording costs nothing.
//!
//! The counts are kept per function in atomics of wtrace's own and read by
//! observable counters at each collection: a task adds to them without the
//! SDK's per-measurement work (a lock, hashing the attributes, a lookup).
//! The durations go through the SDK's histograms, bound to each function's
//! attribute once: a record is then the bucket update alone, without
//! hashing the attribute set (two SipHashes a task, a sixth of what
//! tracing cost a worker per task).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{BoundHistogram, Histogram, Meter, MeterProvider as _};
use opentelemetry_sdk::metrics::SdkMeterProvider;

use super::loss::Ledger;
use crate::sync::lock;

/// Bucket bounds for task and instantiation times, in seconds: from 100 µs
/// (a trivial task) to a minute.
const SECONDS_BOUNDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 10.0, 60.0,
];

/// The instruments tasks are recorded with.
#[derive(Debug)]
pub struct TaskMetrics {
    /// Which `TaskMetrics` this is, for the threads' last-used tally.
    id: usize,
    tallies: Arc<Tallies>,
}

/// Most functions counted apart; later ones are counted together under
/// `otel.metric.overflow`, as the SDK does past its cardinality limit.
const MAX_FUNCTIONS: usize = 2000;

/// The counts of every function, by name, and the histograms their
/// durations are bound to.
#[derive(Debug)]
struct Tallies {
    by_function: Mutex<rustc_hash::FxHashMap<Box<str>, Arc<Tally>>>,
    overflow: Mutex<Option<Arc<Tally>>>,
    duration: Histogram<f64>,
    instantiate: Histogram<f64>,
}

/// One function's counts since the process began (cumulative, as the
/// counters report them).
#[derive(Debug)]
struct Tally {
    /// The function's name, as asked for: the key of the thread's cache.
    name: Box<str>,
    /// `wtrace.function` (or the overflow attribute), shared.
    attribute: KeyValue,
    /// Indexed by [`STARTED`] and the others, as [`COUNTERS`] name them.
    counts: [AtomicU64; 4],
    /// By error type: few, and only when tasks fail.
    failed: Mutex<Vec<(&'static str, u64)>>,
    /// `wtrace.task.duration` and `wtrace.task.instantiate.duration`,
    /// bound to `attribute` at the first record: a bound histogram reports
    /// a point, of count zero, from the moment it is bound.
    duration: OnceLock<BoundHistogram<f64>>,
    instantiate: OnceLock<BoundHistogram<f64>>,
}

const STARTED: usize = 0;
const FINISHED: usize = 1;
const SPANS_STARTED: usize = 2;
const SPANS_DROPPED: usize = 3;

/// The counters read from [`Tally::counts`], in its order: name, unit,
/// description.
const COUNTERS: [(&str, &str, &str); 4] = [
    (
        "wtrace.tasks.started",
        "{task}",
        "Tasks (and actor calls) started",
    ),
    (
        "wtrace.tasks.finished",
        "{task}",
        "Tasks (and actor calls) that returned",
    ),
    (
        "wtrace.guest_spans.started",
        "{span}",
        "Spans guests started",
    ),
    (
        "wtrace.guest_spans.dropped",
        "{span}",
        "Spans guests started past a limit, not recorded",
    ),
];

impl Tallies {
    fn tally(&self, name: &str, attribute: KeyValue) -> Tally {
        Tally {
            name: name.into(),
            duration: OnceLock::new(),
            instantiate: OnceLock::new(),
            attribute,
            counts: Default::default(),
            failed: Mutex::new(Vec::new()),
        }
    }

    fn get(&self, function: &str) -> Arc<Tally> {
        let mut by_function = lock(&self.by_function);
        if let Some(tally) = by_function.get(function) {
            return tally.clone();
        }
        if by_function.len() >= MAX_FUNCTIONS {
            drop(by_function);
            let mut overflow = lock(&self.overflow);
            return overflow
                .get_or_insert_with(|| {
                    Arc::new(self.tally(function, KeyValue::new("otel.metric.overflow", true)))
                })
                .clone();
        }
        let tally = Arc::new(self.tally(function, function_attribute(function)));
        by_function.insert(function.into(), tally.clone());
        tally
    }

    /// Every tally, the overflow last.
    fn all(&self) -> Vec<Arc<Tally>> {
        let mut all: Vec<_> = lock(&self.by_function).values().cloned().collect();
        all.extend(lock(&self.overflow).clone());
        all
    }
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// The tally this thread used last, and whose: a task's three updates,
    /// and the next task of the same function, find it without a lock.
    static LAST: RefCell<Option<(usize, Arc<Tally>)>> = const { RefCell::new(None) };
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
        let seconds = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(SECONDS_BOUNDS.to_vec())
                .build()
        };
        let tallies = Arc::new(Tallies {
            by_function: Mutex::default(),
            overflow: Mutex::default(),
            duration: seconds("wtrace.task.duration", "How long a task ran"),
            instantiate: seconds(
                "wtrace.task.instantiate.duration",
                "How long a task's instance took to make",
            ),
        });
        observe_tallies(&meter, &tallies);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            tallies,
        }
    }

    /// Runs `f` on `function`'s tally.
    fn with_tally<R>(&self, function: &str, f: impl FnOnce(&Tally) -> R) -> R {
        LAST.with_borrow_mut(|last| match last {
            Some((id, tally)) if *id == self.id && *tally.name == *function => f(tally),
            _ => {
                let tally = self.tallies.get(function);
                let result = f(&tally);
                *last = Some((self.id, tally));
                result
            }
        })
    }

    /// A task (or actor call) of `function` started.
    pub fn started(&self, function: &str) {
        self.with_tally(function, |tally| {
            tally.counts[STARTED].fetch_add(1, Ordering::Relaxed);
        });
    }

    /// Its instance took `took` to make.
    pub fn instantiated(&self, function: &str, took: Duration) {
        self.with_tally(function, |tally| {
            let attribute = std::slice::from_ref(&tally.attribute);
            tally
                .instantiate
                .get_or_init(|| self.tallies.instantiate.bind(attribute))
                .record(took.as_secs_f64());
        });
    }

    /// A task (or actor call) ended.
    pub fn ended(&self, end: TaskEnd<'_>) {
        self.with_tally(end.function, |tally| {
            match end.error_type {
                None => {
                    tally.counts[FINISHED].fetch_add(1, Ordering::Relaxed);
                }
                Some(error) => {
                    let mut failed = lock(&tally.failed);
                    match failed.iter_mut().find(|(kind, _)| *kind == error) {
                        Some((_, count)) => *count += 1,
                        None => failed.push((error, 1)),
                    }
                }
            }
            let attribute = std::slice::from_ref(&tally.attribute);
            tally
                .duration
                .get_or_init(|| self.tallies.duration.bind(attribute))
                .record(end.duration.as_secs_f64());
            if end.spans_started > 0 {
                tally.counts[SPANS_STARTED]
                    .fetch_add(u64::from(end.spans_started), Ordering::Relaxed);
            }
            if end.spans_dropped > 0 {
                tally.counts[SPANS_DROPPED]
                    .fetch_add(u64::from(end.spans_dropped), Ordering::Relaxed);
            }
        });
    }
}

/// The task counters, read from the tallies at each collection. A count
/// still at zero is not reported, as a counter never added to is not.
fn observe_tallies(meter: &Meter, tallies: &Arc<Tallies>) {
    for (which, (name, unit, description)) in COUNTERS.into_iter().enumerate() {
        let tallies = tallies.clone();
        meter
            .u64_observable_counter(name)
            .with_unit(unit)
            .with_description(description)
            .with_callback(move |counter| {
                for tally in tallies.all() {
                    let count = tally.counts[which].load(Ordering::Relaxed);
                    if count > 0 {
                        counter.observe(count, std::slice::from_ref(&tally.attribute));
                    }
                }
            })
            .build();
    }
    let tallies = tallies.clone();
    meter
        .u64_observable_counter("wtrace.tasks.failed")
        .with_unit("{task}")
        .with_description("Tasks (and actor calls) that failed, by error.type")
        .with_callback(move |counter| {
            for tally in tallies.all() {
                for (kind, count) in lock(&tally.failed).iter() {
                    counter.observe(
                        *count,
                        &[tally.attribute.clone(), KeyValue::new("error.type", *kind)],
                    );
                }
            }
        })
        .build();
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

#[cfg(test)]
mod tests {
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader};

    use super::*;

    /// What `read` makes of metric `name` in the last export; nothing
    /// when it is not there.
    fn points_of<T>(
        exporter: &InMemoryMetricExporter,
        name: &str,
        read: impl FnOnce(&AggregatedMetrics) -> Vec<T>,
    ) -> Vec<T> {
        let exports = exporter.get_finished_metrics().unwrap();
        let last = exports.last().expect("an export");
        last.scope_metrics()
            .flat_map(|scope| scope.metrics())
            .find(|metric| metric.name() == name)
            .map_or_else(Vec::new, |metric| read(metric.data()))
    }

    /// The points of the u64 sum `name` in the last export: each point's
    /// attributes as `key=value` text, sorted, with its value.
    fn sums(exporter: &InMemoryMetricExporter, name: &str) -> Vec<(String, u64)> {
        points_of(exporter, name, |data| {
            let AggregatedMetrics::U64(MetricData::Sum(sum)) = data else {
                panic!("{name} is not a u64 sum");
            };
            assert!(sum.is_monotonic(), "{name} is a counter");
            let mut points: Vec<_> = sum
                .data_points()
                .map(|point| {
                    let mut attributes: Vec<_> = point
                        .attributes()
                        .map(|kv| format!("{}={}", kv.key, kv.value))
                        .collect();
                    attributes.sort();
                    (attributes.join(","), point.value())
                })
                .collect();
            points.sort();
            points
        })
    }

    /// Task metrics on a provider whose exports are kept in memory.
    fn recorded() -> (InMemoryMetricExporter, SdkMeterProvider, TaskMetrics) {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        let metrics = TaskMetrics::new(&provider, Arc::from(Vec::new()));
        (exporter, provider, metrics)
    }

    fn task<'a>(function: &'a str, error_type: Option<&'static str>, spans: u32) -> TaskEnd<'a> {
        TaskEnd {
            function,
            error_type,
            duration: Duration::from_micros(50),
            spans_started: spans,
            spans_dropped: 0,
        }
    }

    #[test]
    fn counts_are_per_function_and_error_type_and_zero_counts_are_not_reported() {
        let (exporter, provider, metrics) = recorded();
        for (function, error, spans) in [
            ("add", None, 2),
            ("add", None, 0),
            ("fails", Some("wtrace.GuestError"), 0),
            ("fails", Some("wtrace.Trap"), 1),
            ("fails", Some("wtrace.Trap"), 0),
        ] {
            metrics.started(function);
            metrics.ended(task(function, error, spans));
        }
        // Another thread, and another provider's metrics on this thread:
        // neither mixes with these counts.
        std::thread::scope(|s| {
            s.spawn(|| {
                metrics.started("add");
                metrics.ended(task("add", None, 0));
            });
        });
        let other = SdkMeterProvider::builder().build();
        let others = TaskMetrics::new(&other, Arc::from(Vec::new()));
        others.started("add");
        provider.force_flush().unwrap();

        let f = |name: &str| format!("wtrace.function={name}");
        assert_eq!(
            sums(&exporter, "wtrace.tasks.started"),
            [(f("add"), 3), (f("fails"), 3)]
        );
        assert_eq!(sums(&exporter, "wtrace.tasks.finished"), [(f("add"), 3)]);
        assert_eq!(
            sums(&exporter, "wtrace.tasks.failed"),
            [
                (format!("error.type=wtrace.GuestError,{}", f("fails")), 1),
                (format!("error.type=wtrace.Trap,{}", f("fails")), 2),
            ]
        );
        assert_eq!(
            sums(&exporter, "wtrace.guest_spans.started"),
            [(f("add"), 2), (f("fails"), 1)]
        );
        assert_eq!(sums(&exporter, "wtrace.guest_spans.dropped"), []);
    }

    /// The points of the f64 histogram `name` in the last export: each
    /// point's attributes as text, with its count and sum.
    fn histograms(exporter: &InMemoryMetricExporter, name: &str) -> Vec<(String, u64, f64)> {
        points_of(exporter, name, |data| {
            let AggregatedMetrics::F64(MetricData::Histogram(histogram)) = data else {
                panic!("{name} is not an f64 histogram");
            };
            let mut points: Vec<_> = histogram
                .data_points()
                .map(|point| {
                    let attributes: Vec<_> = point
                        .attributes()
                        .map(|kv| format!("{}={}", kv.key, kv.value))
                        .collect();
                    (attributes.join(","), point.count(), point.sum())
                })
                .collect();
            points.sort_by(|a, b| a.0.cmp(&b.0));
            points
        })
    }

    #[test]
    fn durations_are_per_function_from_every_thread_and_past_the_limit_in_overflow() {
        let (exporter, provider, metrics) = recorded();
        let ms = Duration::from_millis;
        metrics.instantiated("add", ms(1));
        metrics.ended(TaskEnd {
            duration: ms(2),
            ..task("add", None, 0)
        });
        metrics.instantiated("mul", ms(4));
        std::thread::scope(|s| {
            s.spawn(|| {
                metrics.instantiated("add", ms(8));
                metrics.ended(TaskEnd {
                    duration: ms(16),
                    ..task("add", Some("wtrace.Trap"), 0)
                });
            });
        });
        for i in 0..MAX_FUNCTIONS {
            metrics.started(&format!("f{i}"));
        }
        metrics.ended(TaskEnd {
            duration: ms(32),
            ..task("past-the-limit", None, 0)
        });
        provider.force_flush().unwrap();

        let close = |points: Vec<(String, u64, f64)>, expected: &[(&str, u64, f64)]| {
            assert_eq!(points.len(), expected.len(), "{points:?}");
            for ((attributes, count, sum), (want, want_count, want_sum)) in
                points.iter().zip(expected)
            {
                assert_eq!((attributes.as_str(), *count), (*want, *want_count));
                assert!((sum - want_sum).abs() < 1e-9, "{attributes}: sum {sum}");
            }
        };
        close(
            histograms(&exporter, "wtrace.task.instantiate.duration"),
            &[
                ("wtrace.function=add", 2, 0.009),
                ("wtrace.function=mul", 1, 0.004),
            ],
        );
        close(
            histograms(&exporter, "wtrace.task.duration"),
            &[
                ("otel.metric.overflow=true", 1, 0.032),
                ("wtrace.function=add", 2, 0.018),
            ],
        );
    }

    #[test]
    fn past_the_function_limit_counts_go_to_one_overflow_point() {
        let (exporter, provider, metrics) = recorded();
        for i in 0..MAX_FUNCTIONS + 5 {
            metrics.started(&format!("f{i}"));
        }
        provider.force_flush().unwrap();
        let started = sums(&exporter, "wtrace.tasks.started");
        assert_eq!(started.len(), MAX_FUNCTIONS + 1);
        assert!(started.contains(&("wtrace.function=f0".into(), 1)));
        assert!(started.contains(&("otel.metric.overflow=true".into(), 5)));
    }
}

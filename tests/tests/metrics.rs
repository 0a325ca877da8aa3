//! Metrics: every process counts its tasks (started, finished, failed by
//! error type), measures their durations and instantiation, counts guest
//! spans and the telemetry each exporter delivered, and reports its memory;
//! the hook's metric reader pushes them to a file (checked here line by
//! line) or an OTLP receiver (checked against rotel in `otlp.rs`).

use serde_json::Value;
use wtrace_tests::{file_hooked_run, guests, span_dir};

/// The last line of each `<pid>.metrics.json` in `dir` (the export made at
/// exit holds every total), by pid.
fn last_exports(dir: &std::path::Path) -> Vec<(u32, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let Some(pid) = name.strip_suffix(".metrics.json") else {
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap();
        let last = text
            .lines()
            .last()
            .unwrap_or_else(|| panic!("{name} is empty"));
        let value: Value = serde_json::from_str(last).expect("each line is JSON");
        out.push((pid.parse().unwrap(), value));
    }
    out
}

/// A data point of metric `name` whose attributes include `attributes`.
fn point<'a>(export: &'a Value, name: &str, attributes: &[(&str, &str)]) -> Option<&'a Value> {
    let metrics = export["resourceMetrics"][0]["scopeMetrics"]
        .as_array()?
        .iter()
        .flat_map(|scope| scope["metrics"].as_array().into_iter().flatten());
    let metric = metrics.into_iter().find(|m| m["name"] == name)?;
    let data = ["sum", "gauge", "histogram"]
        .iter()
        .find_map(|kind| metric.get(*kind))?;
    data["dataPoints"].as_array()?.iter().find(|p| {
        attributes.iter().all(|(key, value)| {
            p["attributes"].as_array().is_some_and(|list| {
                list.iter()
                    .any(|kv| kv["key"] == *key && kv["value"]["stringValue"] == *value)
            })
        })
    })
}

/// A number that OTLP-JSON may write as a string (64-bit integers).
fn number(value: &Value) -> f64 {
    match value {
        Value::String(s) => s.parse().unwrap(),
        other => other
            .as_f64()
            .unwrap_or_else(|| panic!("not a number: {other}")),
    }
}

#[test]
fn each_process_writes_its_task_counts_durations_spans_and_memory() {
    let dir = span_dir();
    let run = file_hooked_run(
        dir.path(),
        &[
            guests::SPAN_EDGES,
            "add(1, 2)",
            "add(3, 4)",
            "nested-three()",
            "fails(\"no\")",
        ],
    )
    .run();
    assert_eq!(run.status, Some(1), "one task failed: {}", run.stderr);

    let exports = last_exports(dir.path());
    assert_eq!(exports.len(), 2, "the driver and the worker each write one");
    let (worker, export) = exports
        .iter()
        .find(|(_, e)| point(e, "wtrace.tasks.started", &[]).is_some())
        .unwrap_or_else(|| panic!("no process counted tasks: {exports:?}"));
    let value = |name: &str, attributes: &[(&str, &str)]| -> f64 {
        let p = point(export, name, attributes)
            .unwrap_or_else(|| panic!("no {name} {attributes:?} in {export}"));
        number(
            p.get("asInt")
                .or_else(|| p.get("asDouble"))
                .unwrap_or(&p["count"]),
        )
    };
    let add = [("wtrace.function", "add")];
    assert_eq!(value("wtrace.tasks.started", &add), 2.0);
    assert_eq!(value("wtrace.tasks.finished", &add), 2.0);
    assert_eq!(
        value(
            "wtrace.tasks.failed",
            &[
                ("wtrace.function", "fails"),
                ("error.type", "wtrace.GuestError")
            ]
        ),
        1.0
    );
    assert!(
        point(
            export,
            "wtrace.tasks.finished",
            &[("wtrace.function", "fails")]
        )
        .is_none()
    );
    assert_eq!(
        value("wtrace.task.duration", &add),
        2.0,
        "a duration per task"
    );
    assert_eq!(value("wtrace.task.instantiate.duration", &add), 2.0);
    let durations = point(export, "wtrace.task.duration", &add).unwrap();
    assert!(number(&durations["sum"]) > 0.0, "{durations}");
    assert_eq!(
        value(
            "wtrace.guest_spans.started",
            &[("wtrace.function", "nested-three")]
        ),
        3.0
    );
    assert!(
        value("process.memory.usage", &[]) > 1e6,
        "a worker's memory, in bytes"
    );
    assert!(
        value("wtrace.telemetry.exported", &[("wtrace.signal", "spans")]) >= 5.0,
        "the worker's spans so far: 4 execute spans and guest spans"
    );
    let resource = &export["resourceMetrics"][0]["resource"]["attributes"];
    assert!(
        resource
            .as_array()
            .unwrap()
            .iter()
            .any(|kv| kv["key"] == "process.pid"
                && number(&kv["value"]["intValue"]) == f64::from(*worker)),
        "the process's resource: {resource}"
    );
}

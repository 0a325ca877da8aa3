//! Ways to look at traces besides the terminal tree: `wtrace spans --format
//! chrome`, the trace-event JSON that Perfetto and chrome://tracing open.

use std::collections::{HashMap, HashSet};

use wtrace_tests::{Spans, Wtrace, guests, span_dir};

/// A traced fan-out (13 tasks over two workers), its span directory kept.
fn fan_out() -> (tempfile::TempDir, u32) {
    let dir = span_dir();
    let run = Wtrace::new([
        "run".to_owned(),
        format!("--tracing-startup-hook={}", guests::FILE_HOOK),
        format!("--allow-span-dir={}", dir.path().display()),
        "--num-workers=2".to_owned(),
        guests::FANOUT.to_owned(),
        "tree(2, 3)".to_owned(),
    ])
    .env("WTRACE_SPAN_DIR", dir.path())
    .run();
    assert!(run.success().ends_with("ok(9)\n"), "{}", run.stdout);
    (dir, run.pid)
}

#[test]
fn chrome_format_has_every_span_a_track_per_process_and_an_arrow_per_submission() {
    let (dir, driver) = fan_out();
    let spans = Spans::read(dir.path());
    let out = dir.path().join("trace.chrome.json");
    Wtrace::new([
        "spans".to_owned(),
        "--format".to_owned(),
        "chrome".to_owned(),
        "-o".to_owned(),
        out.display().to_string(),
        dir.path().display().to_string(),
    ])
    .run()
    .success();
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let events = doc["traceEvents"].as_array().unwrap();
    let of =
        |ph: &str| -> Vec<&serde_json::Value> { events.iter().filter(|e| e["ph"] == ph).collect() };

    // Every span, as a complete slice at its own time, in its own process.
    let slices = of("X");
    assert_eq!(slices.len(), spans.all().len());
    for span in spans.all() {
        let slice = slices
            .iter()
            .find(|e| e["args"]["span_id"] == span.span_id.as_str())
            .unwrap_or_else(|| panic!("{} missing", span.name));
        assert_eq!(slice["name"], span.name.as_str());
        assert_eq!(slice["pid"].as_i64(), span.pid);
        let ts = slice["ts"].as_f64().unwrap();
        assert!((ts - span.start as f64 / 1000.0).abs() < 0.01, "{slice}");
        let dur = slice["dur"].as_f64().unwrap();
        assert!((dur - (span.end - span.start) as f64 / 1000.0).abs() < 0.01);
        assert_eq!(slice["args"]["trace_id"], span.trace_id.as_str());
    }

    // A named process per pid: the driver and the two workers.
    let names: HashMap<i64, String> = of("M")
        .iter()
        .filter(|e| e["name"] == "process_name")
        .map(|e| {
            (
                e["pid"].as_i64().unwrap(),
                e["args"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let pids: HashSet<i64> = spans.all().iter().filter_map(|s| s.pid).collect();
    assert_eq!(names.keys().copied().collect::<HashSet<_>>(), pids);
    assert!(names[&i64::from(driver)].contains("driver"), "{names:?}");
    assert_eq!(
        names.values().filter(|n| n.contains("worker")).count(),
        2,
        "{names:?}"
    );

    // On a track, slices nest or follow each other, never half-overlap.
    let mut tracks: HashMap<(i64, i64), Vec<(f64, f64)>> = HashMap::new();
    for slice in &slices {
        let key = (
            slice["pid"].as_i64().unwrap(),
            slice["tid"].as_i64().unwrap(),
        );
        let ts = slice["ts"].as_f64().unwrap();
        tracks
            .entry(key)
            .or_default()
            .push((ts, ts + slice["dur"].as_f64().unwrap()));
    }
    for (track, slices) in &tracks {
        for a in slices {
            for b in slices {
                let nested = (a.0 <= b.0 && b.1 <= a.1) || (b.0 <= a.0 && a.1 <= b.1);
                let apart = a.1 <= b.0 || b.1 <= a.0;
                assert!(nested || apart, "{track:?}: {a:?} and {b:?} half-overlap");
            }
        }
    }

    // An arrow from each submit span to its execute span, across processes.
    let executes = spans.named("tree execute");
    assert_eq!(executes.len(), 13);
    let (starts, ends) = (of("s"), of("f"));
    assert_eq!(starts.len(), executes.len());
    assert_eq!(ends.len(), executes.len());
    for execute in executes {
        let submit = spans
            .all()
            .iter()
            .find(|s| s.span_id == execute.parent_span_id)
            .unwrap();
        let end = ends
            .iter()
            .find(|e| {
                e["pid"].as_i64() == execute.pid
                    && (e["ts"].as_f64().unwrap() - execute.start as f64 / 1000.0).abs() < 0.01
            })
            .expect("an arrow ends at each execute span");
        let start = starts.iter().find(|e| e["id"] == end["id"]).unwrap();
        assert_eq!(
            start["pid"].as_i64(),
            submit.pid,
            "the arrow starts at the submit"
        );
        assert!((start["ts"].as_f64().unwrap() - submit.start as f64 / 1000.0).abs() < 0.01);
    }

    // One trace only, with --trace; nothing to show is an error.
    let trace = &spans.all()[0].trace_id;
    let one = Wtrace::new([
        "spans".to_owned(),
        "--format=chrome".to_owned(),
        "--trace".to_owned(),
        trace[..8].to_owned(),
        dir.path().display().to_string(),
    ])
    .run();
    let doc: serde_json::Value = serde_json::from_str(one.success()).unwrap();
    let count = doc["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "X")
        .count();
    assert_eq!(count, spans.all().len(), "the fan-out is one trace");
    let empty = span_dir();
    let none = Wtrace::new([
        "spans".to_owned(),
        "--format=chrome".to_owned(),
        empty.path().display().to_string(),
    ])
    .run();
    assert_eq!(none.status, Some(1));
    assert!(none.stderr.contains("no spans"), "{}", none.stderr);
}

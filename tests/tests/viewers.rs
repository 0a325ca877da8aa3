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

/// Headless Chromium (`$WTRACE_CHROMIUM`, else `chromium`), started as the
/// closed network here wants: no background connections, a fresh profile.
fn chromium(profile: &std::path::Path) -> std::process::Command {
    let bin = std::env::var_os("WTRACE_CHROMIUM").unwrap_or_else(|| "chromium".into());
    let mut command = std::process::Command::new(bin);
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,900",
    ]);
    command.arg(format!("--user-data-dir={}", profile.display()));
    command
}

/// The page's DOM once its script ran, showing the trace whose id starts
/// with `trace`.
fn rendered(page: &std::path::Path, trace: &str, profile: &std::path::Path) -> String {
    let output = chromium(profile)
        .arg("--dump-dom")
        .arg(format!("file://{}#trace={trace}", page.display()))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run chromium ({e}): run the tests with scripts/test.sh, which installs it"
            )
        });
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let dom = String::from_utf8(output.stdout).unwrap();
    assert!(
        dom.contains(r#"data-ready="true""#),
        "the page's script ran to its end"
    );
    assert!(
        !dom.contains("data-refused"),
        "the page tried to fetch something"
    );
    dom
}

/// The names on the page's rows, in order.
fn row_names(dom: &str) -> Vec<String> {
    dom.split(r#"<div class="name""#)
        .skip(1)
        .map(|row| {
            let text = &row[row.find('>').unwrap() + 1..];
            text[..text.find('<').unwrap()]
                .replace("&gt;", ">")
                .replace("⚠ ", "")
        })
        .collect()
}

#[test]
fn the_html_page_shows_the_seed_a_fan_out_and_10000_spans_and_fetches_nothing() {
    let dir = span_dir();
    let run = |guest: &str, call: &str, extra: &[&str]| {
        let mut args = vec![
            "run".to_owned(),
            format!("--tracing-startup-hook={}", guests::FILE_HOOK),
            format!("--allow-span-dir={}", dir.path().display()),
            "--num-workers=2".to_owned(),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        args.extend([guest.to_owned(), call.to_owned()]);
        Wtrace::new(args)
            .env("WTRACE_SPAN_DIR", dir.path())
            .run()
            .success()
            .to_owned()
    };
    run(guests::HELLO, "my-func()", &[]);
    run(guests::FANOUT, "tree(2, 3)", &[]);
    run(
        guests::SPAN_EDGES,
        "many-spans(10000)",
        &["--max-spans=20000", "--max-open-spans=20000"],
    );
    let spans = Spans::read(dir.path());
    let trace_of = |name: &str| spans.named(name)[0].trace_id.clone();
    let (seed, fan, many) = (
        trace_of("my-func execute"),
        trace_of("tree execute"),
        trace_of("many-spans execute"),
    );

    let out = tempfile::tempdir().unwrap();
    let page = out.path().join("traces.html");
    Wtrace::new([
        "spans".to_owned(),
        "--html".to_owned(),
        page.display().to_string(),
        dir.path().display().to_string(),
    ])
    .run()
    .success();
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("default-src 'none'"),
        "a policy that refuses every fetch"
    );
    for reference in [
        "src=\"http",
        "href=\"http",
        "src='http",
        "@import",
        "url(http",
    ] {
        assert!(!html.contains(reference), "the page references {reference}");
    }

    let profile = out.path().join("profile");
    // The seed: submit, execute and the guest's span, nested in that order.
    let dom = rendered(&page, &seed[..12], &profile);
    assert_eq!(
        row_names(&dom),
        ["my-func submit", "my-func execute", "foo"]
    );
    assert!(
        dom.contains("3 processes") || dom.contains("2 processes"),
        "a legend of processes"
    );
    // The fan-out: 13 tasks over two workers, one tree.
    let dom = rendered(&page, &fan[..12], &profile);
    let names = row_names(&dom);
    assert_eq!(names.iter().filter(|n| *n == "tree execute").count(), 13);
    assert_eq!(names.iter().filter(|n| *n == "leaf").count(), 9);
    assert_eq!(names[0], "tree submit");
    // 10 000 guest spans under one execute span, every one a row.
    let dom = rendered(&page, &many[..12], &profile);
    let names = row_names(&dom);
    assert_eq!(names.iter().filter(|n| *n == "many").count(), 10_000);
    assert_eq!(names[..2], ["many-spans submit", "many-spans execute"]);
    // Every trace is listed, with a search box.
    assert!(dom.contains("3 of 3 traces"), "the trace list");
    assert!(dom.contains(r#"id="search""#));

    // A span's details: its attributes, events and links.
    let foo = spans.one("foo");
    let execute = spans.one("my-func execute");
    let dom = rendered(
        &page,
        &format!("{}&span={}", &seed[..12], foo.span_id),
        &profile,
    );
    let details = &dom[dom.find(r#"id="details""#).unwrap()..];
    assert!(details.contains("<h2>foo</h2>"), "{details}");
    assert!(details.contains(&execute.span_id), "its parent's id");
    assert!(details.contains("attributes") && details.contains("log lines"));

    // A screenshot of the seed, read back: the span names are on it.
    let shot = out.path().join("seed.png");
    let output = chromium(&profile)
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!(
            "file://{}#trace={}&span={}",
            page.display(),
            &seed[..12],
            execute.span_id
        ))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let read = std::process::Command::new("tesseract")
        .arg(&shot)
        .arg("stdout")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run tesseract ({e}): run the tests with scripts/test.sh, which installs it"
            )
        });
    let text = String::from_utf8_lossy(&read.stdout);
    for name in ["my-func submit", "my-func execute", "foo"] {
        assert!(
            text.contains(name),
            "{name} not on the screenshot; it reads:\n{text}"
        );
    }
    if let Ok(keep) = std::env::var("WTRACE_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
}

//! Guests from the wider ecosystem: code instrumented with the `tracing`
//! crate or the OpenTelemetry API, and guests built for the WASI
//! OpenTelemetry proposal (`wasi:otel/tracing@0.2.0-rc.2`), whose spans the
//! host samples and limits like its own.

use wtrace_tests::{Spans, Wtrace, assert_child_of, guests, span_dir};

fn traced_run(
    component: &str,
    invocations: &[&str],
    extra: &[&str],
    env: &[(&str, &str)],
) -> Spans {
    let dir = span_dir();
    let mut args = vec![
        "run".to_owned(),
        format!("--tracing-startup-hook={}", guests::FILE_HOOK),
        format!("--allow-span-dir={}", dir.path().display()),
        "-n1".to_owned(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(component.to_owned());
    args.extend(invocations.iter().map(|s| s.to_string()));
    let mut command = Wtrace::new(args).env("WTRACE_SPAN_DIR", dir.path());
    for (key, value) in env {
        command = command.env(key, value);
    }
    command.run().success();
    Spans::read(dir.path())
}

#[test]
fn tracing_crate_spans_become_guest_spans() {
    let spans = traced_run(guests::ECOSYSTEM, &["with-tracing()"], &[], &[]);
    let execute = spans.one("with-tracing execute");
    let outer = spans.one("outer");
    let load = spans.one("load");
    let parse = spans.one("parse");
    assert_child_of(outer, execute);
    assert_child_of(load, outer);
    assert_child_of(parse, load);
    assert_eq!(outer.attributes["job"], "nightly");
    assert_eq!(load.attributes["rows"], "3");
    assert_eq!(
        load.attributes["table"], "users",
        "#[instrument] records arguments"
    );
    let loaded = spans.log("loaded");
    assert_eq!(
        (&loaded.span_id, loaded.severity.as_str()),
        (&load.span_id, "INFO"),
        "tracing events become log records in their span"
    );
    assert_eq!(loaded.attributes["table"], "users");
}

#[test]
fn the_opentelemetry_api_works_inside_a_guest() {
    let spans = traced_run(guests::ECOSYSTEM, &["with-otel-api()"], &[], &[]);
    let execute = spans.one("with-otel-api execute");
    let outer = spans.one("otel-outer");
    let inner = spans.one("otel-inner");
    assert_child_of(outer, execute);
    assert_child_of(inner, outer);
    assert_eq!(outer.attributes["answer"], "42");
    assert_eq!(inner.kind, "CLIENT");
    assert_eq!(inner.events, vec!["sent".to_owned()]);
    assert_eq!(inner.error.as_deref(), Some("upstream said no"));
}

#[test]
fn wasi_otel_guests_run_unchanged_and_nest_under_the_execute_span() {
    let spans = traced_run(guests::WASI_OTEL, &["traced(3)"], &[], &[]);
    let execute = spans.one("traced execute");
    let outer = spans.one("wasi-otel-outer");
    assert_child_of(outer, execute);
    assert_eq!(
        outer.attributes["answer"], "42",
        "JSON-encoded values arrive typed"
    );
    assert_eq!(outer.attributes["mood"], "fine");
    let children = spans.named("wasi-otel-child");
    assert_eq!(children.len(), 3);
    for child in &children {
        assert_child_of(child, outer);
        assert_eq!(child.kind, "CLIENT");
        assert_eq!(child.events, vec!["halfway".to_owned()]);
        assert_eq!(child.pid, execute.pid);
    }
    // The guest's own span ids are kept: its children point at them.
    let mut indexes: Vec<&str> = children
        .iter()
        .map(|c| c.attributes["index"].as_str())
        .collect();
    indexes.sort_unstable();
    assert_eq!(indexes, ["0", "1", "2"]);
    assert_eq!(execute.attributes["wtrace.spans_started"], "4");
}

#[test]
fn the_host_sampler_applies_to_wasi_otel_spans() {
    // The guest's own sampler records everything; the host's says no.
    let spans = traced_run(
        guests::WASI_OTEL,
        &["traced(3)"],
        &[],
        &[("OTEL_TRACES_SAMPLER", "always_off")],
    );
    assert!(spans.all().is_empty(), "{:?}", spans.names());
}

#[test]
fn the_host_span_limits_apply_to_wasi_otel_spans() {
    let spans = traced_run(guests::WASI_OTEL, &["traced(10)"], &["--max-spans=4"], &[]);
    let execute = spans.one("traced execute");
    assert_eq!(spans.named("wasi-otel-child").len(), 4);
    assert_eq!(execute.attributes["wtrace.spans_dropped"], "7");
}

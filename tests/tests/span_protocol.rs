//! The span protocol, guest → host → exporter with real components, asserted
//! against the OpenTelemetry SDK's in-memory exporter: every started span is
//! exported and correctly parented, whatever the guest does.

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use wtrace::exec::task::{self, TaskContext, TaskErrorKind, TaskLinker, TaskOutput};
use wtrace::{Limits, Runtime, Telemetry};
use wtrace_tests::guests;

struct Outcome {
    output: TaskOutput,
    spans: Vec<SpanData>,
}

impl Outcome {
    fn span(&self, name: &str) -> &SpanData {
        let found: Vec<&SpanData> = self.spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(
            found.len(),
            1,
            "exactly one {name:?} among {:?}",
            self.names()
        );
        found[0]
    }

    fn names(&self) -> Vec<String> {
        self.spans.iter().map(|s| s.name.to_string()).collect()
    }

    fn execute(&self) -> &SpanData {
        self.spans
            .iter()
            .find(|s| s.name.ends_with(" execute"))
            .expect("an execute span")
    }
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn assert_parent(child: &SpanData, parent: &SpanData) {
    assert_eq!(
        child.span_context.trace_id(),
        parent.span_context.trace_id()
    );
    assert_eq!(
        child.parent_span_id,
        parent.span_context.span_id(),
        "{} should be a child of {}",
        child.name,
        parent.name
    );
}

fn run_with(
    limits: Limits,
    parent: Option<SpanContext>,
    traced: bool,
    invocation: &str,
) -> Outcome {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let telemetry = Telemetry::new(provider);
    let runtime = Runtime::new(limits, None).unwrap();
    let linker = TaskLinker::new(&runtime).unwrap();
    let bytes = std::fs::read(guests::SPAN_EDGES).unwrap();
    let component = linker.load("span-edges.wasm", &bytes).unwrap();
    let call: wtrace::runtime::wave::Invocation = invocation.parse().unwrap();
    let cx = TaskContext {
        parent,
        ..TaskContext::new("t-1")
    };
    let output = task::execute(
        &linker,
        traced.then_some(&telemetry),
        &component,
        &call.function,
        &call.text,
        &cx,
    );
    Outcome {
        output,
        spans: exporter.get_finished_spans().unwrap(),
    }
}

fn run(invocation: &str) -> Outcome {
    run_with(Limits::default(), None, true, invocation)
}

#[test]
fn spans_nest_three_deep_under_the_execute_span() {
    let out = run("nested-three()");
    assert_eq!(out.output.result, Ok(String::new()));
    let (l1, l2, l3) = (
        out.span("level-1"),
        out.span("level-2"),
        out.span("level-3"),
    );
    assert_parent(l1, out.execute());
    assert_parent(l2, l1);
    assert_parent(l3, l2);
    assert_eq!(attr(l3, "depth"), Some(&Value::I64(3)));
    for span in [l1, l2, l3] {
        assert_eq!(span.span_kind, SpanKind::Internal);
        assert_eq!(
            attr(span, "wtrace.unended"),
            None,
            "{} was ended by the guest",
            span.name
        );
    }
    assert_eq!(
        attr(out.execute(), "wtrace.spans_started"),
        Some(&Value::I64(3))
    );
}

#[test]
fn a_span_never_ended_is_ended_by_the_host_and_marked() {
    let out = run("never-ended()");
    let span = out.span("never-ended");
    assert_parent(span, out.execute());
    assert_eq!(attr(span, "wtrace.unended"), Some(&Value::Bool(true)));
    assert!(span.end_time <= out.execute().end_time);
}

#[test]
fn a_child_outliving_its_parent_keeps_its_parent_and_is_marked() {
    let out = run("child-outlives-parent()");
    let (parent, child) = (out.span("parent"), out.span("child"));
    assert_parent(parent, out.execute());
    assert_parent(child, parent);
    assert_eq!(
        attr(child, "wtrace.outlived_parent"),
        Some(&Value::Bool(true))
    );
    assert_eq!(attr(parent, "wtrace.unended"), None);
    assert_eq!(attr(child, "wtrace.unended"), None);
}

#[test]
fn ending_a_span_twice_is_an_error_for_the_guest_not_the_host() {
    let out = run("double-end()");
    let message = out.output.result.clone().expect("the task itself succeeds");
    assert!(message.contains("already ended"), "{message}");
    assert!(message.contains("ended-twice"), "{message}");
    assert_parent(out.span("ended-twice"), out.execute());
}

#[test]
fn finish_span_sets_attributes_ends_and_releases_in_one_call() {
    let out = run("finish-in-one-call()");
    let message = out.output.result.clone().expect("the task itself succeeds");
    assert!(message.contains("already ended"), "{message}");
    assert!(message.contains("finished-after-end"), "{message}");
    let finished = out.span("finished");
    assert_parent(finished, out.execute());
    assert_eq!(attr(finished, "at.end"), Some(&Value::I64(7)));
    assert_eq!(attr(finished, "wtrace.unended"), None);
    let late = out.span("finished-after-end");
    assert_eq!(
        attr(late, "ignored"),
        None,
        "a finished span changes no more"
    );
    assert_eq!(attr(late, "wtrace.unended"), None);
    // Neither is current any more.
    assert_parent(out.span("after-finish"), out.execute());
}

#[test]
fn a_handle_dropped_without_end_ends_the_span_and_it_stops_being_current() {
    let out = run("dropped-handle()");
    let dropped = out.span("dropped-handle");
    assert_eq!(attr(dropped, "wtrace.unended"), Some(&Value::Bool(true)));
    assert_parent(dropped, out.execute());
    assert_parent(out.span("after-drop"), out.execute());
}

#[test]
fn a_trap_inside_open_spans_exports_them_all_and_fails_the_task() {
    let out = run("trap-in-span()");
    let error = out.output.result.clone().unwrap_err();
    assert_eq!(error.kind, TaskErrorKind::Trap);
    assert!(error.message.contains("trapped"), "{}", error.message);
    let stderr = String::from_utf8_lossy(&out.output.stderr);
    assert!(
        stderr.contains("trapping with two spans open"),
        "the panic message is captured: {stderr}"
    );

    let (outer, inner) = (out.span("outer"), out.span("inner"));
    assert_parent(outer, out.execute());
    assert_parent(inner, outer);
    for span in [outer, inner] {
        assert_eq!(attr(span, "wtrace.unended"), Some(&Value::Bool(true)));
        assert!(
            matches!(span.status, Status::Error { .. }),
            "{} marked failed",
            span.name
        );
    }
    let execute = out.execute();
    assert!(
        matches!(&execute.status, Status::Error { description } if description.contains("trapped"))
    );
    let exception = execute
        .events
        .iter()
        .find(|e| e.name == "exception")
        .expect("an exception event");
    let has = |key: &str| exception.attributes.iter().any(|kv| kv.key.as_str() == key);
    assert!(has("exception.type") && has("exception.message") && has("exception.stacktrace"));
    assert!(
        exception
            .attributes
            .contains(&KeyValue::new("exception.type", "wasm.Trap"))
    );
}

#[test]
fn a_returned_error_fails_the_task_with_its_message() {
    let out = run(r#"fails("disk full")"#);
    let error = out.output.result.clone().unwrap_err();
    assert_eq!(error.kind, TaskErrorKind::Returned);
    assert_eq!(error.message, "returned an error: disk full");
    assert!(
        matches!(&out.execute().status, Status::Error { description } if description.contains("disk full"))
    );
    assert_eq!(out.span("doomed-work").status, Status::Unset);
}

#[test]
fn attributes_kinds_events_and_status_cross_the_bridge_typed() {
    let out = run("attributes()");
    let span = out.span("attributed");
    assert_eq!(span.span_kind, SpanKind::Client);
    assert_eq!(attr(span, "at.start"), Some(&Value::from("yes")));
    assert_eq!(attr(span, "text"), Some(&Value::from("hello")));
    assert_eq!(attr(span, "count"), Some(&Value::I64(42)));
    assert_eq!(attr(span, "ratio"), Some(&Value::F64(0.5)));
    assert_eq!(attr(span, "flag"), Some(&Value::Bool(true)));
    assert_eq!(
        attr(span, "tags"),
        Some(&Value::Array(opentelemetry::Array::String(vec![
            "a".into(),
            "b".into()
        ])))
    );
    let event = &span.events.events[0];
    assert_eq!(event.name, "checkpoint");
    assert_eq!(event.attributes, vec![KeyValue::new("step", 1_i64)]);
    assert_eq!(span.status, Status::error("went wrong on purpose"));

    use opentelemetry::Array;
    let all = out.span("all-types");
    assert_eq!(all.span_kind, SpanKind::Producer);
    assert_parent(all, span); // "attributed" is still open, so current
    for (key, value) in [
        ("s", Value::from("text")),
        ("b", Value::Bool(true)),
        ("i", Value::I64(-3)),
        ("f", Value::F64(0.25)),
        (
            "sl",
            Value::Array(Array::String(vec!["x".into(), "ÿ".into()])),
        ),
        ("il", Value::Array(Array::I64(vec![1, -2]))),
        ("fl", Value::Array(Array::F64(vec![0.5, 1.5]))),
        ("bl", Value::Array(Array::Bool(vec![true, false]))),
    ] {
        assert_eq!(attr(all, key), Some(&value), "{key}");
    }
    assert!(attr(all, "wtrace.unended").is_none(), "ended by its guard");
}

#[test]
fn the_execute_span_continues_a_remote_parent() {
    let remote = SpanContext::new(
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let out = run_with(Limits::default(), Some(remote.clone()), true, "add(1, 2)");
    assert_eq!(out.output.result, Ok("3".into()));
    let execute = out.execute();
    assert_eq!(execute.name, "add execute");
    assert_eq!(execute.span_kind, SpanKind::Consumer);
    assert_eq!(execute.span_context.trace_id(), remote.trace_id());
    assert_eq!(execute.parent_span_id, remote.span_id());
    assert!(execute.parent_span_is_remote);
    assert_eq!(attr(execute, "wtrace.task_id"), Some(&Value::from("t-1")));
}

#[test]
fn spans_past_the_limit_are_dropped_and_counted() {
    let limits = Limits {
        spans_per_task: 10,
        ..Limits::default()
    };
    let out = run_with(limits, None, true, "many-spans(50)");
    assert_eq!(out.output.result, Ok("50".into()));
    assert_eq!(out.spans.iter().filter(|s| s.name == "many").count(), 10);
    assert_eq!(
        attr(out.execute(), "wtrace.spans_dropped"),
        Some(&Value::I64(40))
    );
}

#[test]
fn without_a_hook_tasks_run_and_nothing_is_traced() {
    let out = run_with(Limits::default(), None, false, "nested-three()");
    assert_eq!(out.output.result, Ok(String::new()));
    assert!(out.spans.is_empty());
}

#[test]
fn bad_arguments_and_unknown_exports_name_the_signature() {
    let out = run(r#"add("one", 2)"#);
    let error = out.output.result.clone().unwrap_err();
    assert_eq!(error.kind, TaskErrorKind::InvalidArguments);
    assert!(
        error.message.contains("func(a: u32, b: u32) -> u32"),
        "{}",
        error.message
    );

    let out = run("subtract(1, 2)");
    let error = out.output.result.clone().unwrap_err();
    assert_eq!(error.kind, TaskErrorKind::UnknownExport);
    assert!(
        error.message.contains("no exported function `subtract`"),
        "{}",
        error.message
    );
    assert!(error.message.contains("`add`"), "{}", error.message);
}

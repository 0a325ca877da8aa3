//! Actors in one process: an instance of an exported resource kept between
//! calls, its creation and calls traced (each call linked to the creation),
//! and what a failing call does to it. Real components, the SDK's in-memory
//! exporter.

use std::time::Duration;

use opentelemetry::Value;
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use wtrace::exec::actor::{Actor, ActorIdentity};
use wtrace::exec::task::{TaskComponent, TaskContext, TaskErrorKind, TaskLinker, TaskOutput};
use wtrace::runtime::check::actor_classes;
use wtrace::{Limits, Runtime, Telemetry};
use wtrace_tests::guests;

struct Host {
    exporter: InMemorySpanExporter,
    telemetry: Telemetry,
    linker: TaskLinker,
    component: TaskComponent,
}

impl Host {
    fn new(limits: Limits, guest: &str) -> Self {
        let exporter = InMemorySpanExporter::default();
        let telemetry = Telemetry::new(
            SdkTracerProvider::builder()
                .with_simple_exporter(exporter.clone())
                .build(),
        );
        let runtime = Runtime::new(limits, None).unwrap();
        let linker = TaskLinker::new(&runtime).unwrap();
        let name = std::path::Path::new(guest).file_name().unwrap();
        let component = linker
            .load(name.to_str().unwrap(), &std::fs::read(guest).unwrap())
            .unwrap();
        Self {
            exporter,
            telemetry,
            linker,
            component,
        }
    }

    fn create(&self, id: &str, invocation: &str) -> Result<Actor, Box<TaskOutput>> {
        let (actor, output) = Actor::create(
            &self.linker,
            Some(&self.telemetry),
            &self.component,
            &invocation.parse().unwrap(),
            ActorIdentity { id, restarts: 0 },
            &TaskContext::new(id),
        );
        actor.ok_or(Box::new(output))
    }

    fn call(&self, actor: &mut Actor, invocation: &str) -> TaskOutput {
        let id = actor.id().to_owned();
        actor.call(
            &self.linker,
            Some(&self.telemetry),
            &self.component,
            &invocation.parse().unwrap(),
            &TaskContext::new(&id),
        )
    }

    fn spans(&self) -> Vec<SpanData> {
        self.exporter.get_finished_spans().unwrap()
    }
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn result(output: &TaskOutput) -> &str {
    output.result.as_deref().expect("the call succeeds")
}

#[test]
fn a_counter_keeps_its_state_from_call_to_call() {
    let host = Host::new(Limits::default(), guests::COUNTER);
    let mut counter = host.create("a-1", "counter(5)").unwrap();
    assert_eq!(result(&host.call(&mut counter, "incr(2)")), "7");
    assert_eq!(result(&host.call(&mut counter, "incr(3)")), "10");
    assert_eq!(result(&host.call(&mut counter, "get()")), "10");
    assert_eq!(counter.calls(), 3);
    // A second actor of the same class has its own state.
    let mut other = host.create("a-2", "counter(100)").unwrap();
    assert_eq!(result(&host.call(&mut other, "incr(1)")), "101");
    assert_eq!(result(&host.call(&mut counter, "get()")), "10");
}

#[test]
fn creation_and_calls_are_traced_and_every_call_links_to_the_creation() {
    let host = Host::new(Limits::default(), guests::COUNTER);
    let mut counter = host.create("a-7", "counter(5)").unwrap();
    host.call(&mut counter, "incr(2)");
    host.call(&mut counter, "get()");
    let spans = host.spans();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
    assert_eq!(
        names,
        [
            "counter.new execute",
            "add",
            "counter.incr execute",
            "counter.get execute"
        ]
    );
    let creation = &spans[0];
    assert_eq!(creation.span_kind, SpanKind::Consumer);
    assert_eq!(attr(creation, "wtrace.actor_id"), Some(&Value::from("a-7")));
    assert_eq!(
        attr(creation, "wtrace.actor_class"),
        Some(&Value::from("counter"))
    );
    assert_eq!(
        attr(creation, "wtrace.actor_method"),
        Some(&Value::from("new"))
    );
    assert_eq!(
        attr(creation, "wtrace.function"),
        Some(&Value::from("counter.new"))
    );
    assert!(creation.links.is_empty(), "a creation links to nothing");
    for call in &spans[2..] {
        assert_eq!(attr(call, "wtrace.actor_id"), Some(&Value::from("a-7")));
        assert_eq!(
            attr(call, "wtrace.actor_class"),
            Some(&Value::from("counter"))
        );
        assert_eq!(
            call.links.links.len(),
            1,
            "{} links to the creation",
            call.name
        );
        assert_eq!(
            call.links.links[0].span_context.span_id(),
            creation.span_context.span_id()
        );
        assert!(
            attr(call, "wtrace.wasm.memory_peak_bytes")
                .is_some_and(|v| matches!(v, Value::I64(n) if *n > 0)),
            "the instance's memory is on every call"
        );
    }
    assert_eq!(
        attr(&spans[2], "wtrace.actor_method"),
        Some(&Value::from("incr"))
    );
    // The guest's span is a child of the call it ran in.
    assert_eq!(spans[1].parent_span_id, spans[2].span_context.span_id());
    assert_eq!(attr(&spans[1], "counter.by"), Some(&Value::I64(2)));
}

#[test]
fn a_call_that_traps_kills_the_actor_and_later_calls_say_why() {
    let host = Host::new(Limits::default(), guests::ACTORS);
    let mut counter = host.create("a-3", "counter(4)").unwrap();
    let boom = host.call(&mut counter, "boom()");
    let error = boom.result.unwrap_err();
    assert_eq!(error.kind, TaskErrorKind::Trap);
    assert!(
        String::from_utf8_lossy(&boom.stderr).contains("boom at 4"),
        "the panic message reaches stderr"
    );
    assert!(counter.dead().is_some());
    let after = host.call(&mut counter, "get()").result.unwrap_err();
    assert_eq!(after.kind, TaskErrorKind::ActorDead);
    assert!(
        after.message.contains("actor a-3 is dead") && after.message.contains("trapped"),
        "{}",
        after.message
    );
    let spans = host.spans();
    let dead = spans
        .iter()
        .find(|s| s.name == "counter.get execute")
        .unwrap();
    assert!(matches!(
        dead.status,
        opentelemetry::trace::Status::Error { .. }
    ));
    assert_eq!(counter.calls(), 1, "the refused call did not run");
}

#[test]
fn an_error_result_or_a_bad_call_leaves_the_actor_alive() {
    let host = Host::new(Limits::default(), guests::ACTORS);
    let mut counter = host.create("a-4", "counter(1)").unwrap();
    let refused = host.call(&mut counter, "refuse(\"no\")");
    assert_eq!(refused.result.unwrap_err().kind, TaskErrorKind::Returned);
    let unknown = host.call(&mut counter, "nope()").result.unwrap_err();
    assert_eq!(unknown.kind, TaskErrorKind::UnknownExport);
    assert!(
        unknown.message.contains("no method `nope`") && unknown.message.contains("`incr`"),
        "{}",
        unknown.message
    );
    let bad = host.call(&mut counter, "incr(\"x\")").result.unwrap_err();
    assert_eq!(bad.kind, TaskErrorKind::InvalidArguments);
    assert!(counter.dead().is_none());
    assert_eq!(result(&host.call(&mut counter, "incr(1)")), "2");
}

#[test]
fn each_call_returns_only_its_own_output() {
    let host = Host::new(Limits::default(), guests::ACTORS);
    let mut counter = host.create("a-5", "counter(0)").unwrap();
    let first = host.call(&mut counter, "say(\"one\")");
    let second = host.call(&mut counter, "say(\"two\")");
    assert_eq!(String::from_utf8_lossy(&first.stdout), "one\n");
    assert_eq!(String::from_utf8_lossy(&second.stdout), "two\n");
}

#[test]
fn each_calls_output_becomes_records_of_that_call_in_its_span() {
    use opentelemetry_sdk::logs::{InMemoryLogExporter, SdkLoggerProvider};
    let mut host = Host::new(Limits::default(), guests::ACTORS);
    let logs = InMemoryLogExporter::default();
    host.telemetry = host.telemetry.clone().with_logs(Some(
        SdkLoggerProvider::builder()
            .with_simple_exporter(logs.clone())
            .build(),
    ));
    let mut counter = host.create("a-9", "counter(0)").unwrap();
    // Each call under a task id of its own, as a cluster gives them.
    for (task_id, invocation) in [("t-1", "say(\"one\")"), ("t-2", "say(\"two\")")] {
        let output = counter.call(
            &host.linker,
            Some(&host.telemetry),
            &host.component,
            &invocation.parse().unwrap(),
            &TaskContext::new(task_id),
        );
        output.result.unwrap();
    }
    host.telemetry.flush().unwrap();
    let records = logs.get_emitted_logs().unwrap();
    let calls: Vec<SpanData> = host
        .spans()
        .into_iter()
        .filter(|s| s.name == "counter.say execute")
        .collect();
    assert_eq!(calls.len(), 2, "two call spans");
    for (body, task_id, call) in [("one", "t-1", &calls[0]), ("two", "t-2", &calls[1])] {
        let record = records
            .iter()
            .map(|r| &r.record)
            .find(|r| {
                r.body()
                    .is_some_and(|b| *b == opentelemetry::logs::AnyValue::from(body))
            })
            .unwrap_or_else(|| panic!("no record {body:?}"));
        let attribute = |key: &str| {
            record
                .attributes_iter()
                .find(|(k, _)| k.as_str() == key)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            attribute("wtrace.function"),
            Some(opentelemetry::logs::AnyValue::from("counter.say")),
            "{body}"
        );
        assert_eq!(
            attribute("wtrace.task_id"),
            Some(opentelemetry::logs::AnyValue::from(task_id)),
            "{body}"
        );
        let trace = record.trace_context().expect("joined to a span");
        assert_eq!(
            (trace.trace_id, trace.span_id),
            (call.span_context.trace_id(), call.span_context.span_id()),
            "{body} belongs to its own call's span"
        );
    }
}

#[test]
fn the_timeout_applies_per_call_and_a_call_past_it_kills_the_actor() {
    let limits = Limits {
        timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let host = Host::new(limits, guests::ACTORS);
    let mut counter = host.create("a-6", "counter(0)").unwrap();
    // Four calls of 150 ms each: 600 ms in all, each within its own budget.
    for _ in 0..4 {
        assert!(host.call(&mut counter, "spin(150)").result.is_ok());
    }
    let late = host.call(&mut counter, "spin(2000)").result.unwrap_err();
    assert_eq!(late.kind, TaskErrorKind::Timeout);
    assert_eq!(
        host.call(&mut counter, "get()").result.unwrap_err().kind,
        TaskErrorKind::ActorDead
    );
}

#[test]
fn memory_persists_between_calls_and_is_on_each_span() {
    let host = Host::new(Limits::default(), guests::ACTORS);
    let mut counter = host.create("a-8", "counter(0)").unwrap();
    assert_eq!(result(&host.call(&mut counter, "grow(16)")), "1");
    assert_eq!(result(&host.call(&mut counter, "grow(16)")), "2");
    let spans = host.spans();
    let peaks: Vec<i64> = spans
        .iter()
        .filter(|s| s.name == "counter.grow execute")
        .map(|s| match attr(s, "wtrace.wasm.memory_peak_bytes") {
            Some(Value::I64(n)) => *n,
            other => panic!("no memory peak: {other:?}"),
        })
        .collect();
    assert_eq!(peaks.len(), 2);
    assert!(peaks[0] >= 16 * 65536, "{peaks:?}");
    assert!(peaks[1] >= peaks[0] + 16 * 65536, "memory kept: {peaks:?}");
}

#[test]
fn a_constructor_that_fails_or_an_unknown_class_makes_no_actor() {
    let host = Host::new(Limits::default(), guests::ACTORS);
    let failed = host.create("a-9", "counter(-1)").unwrap_err();
    assert_eq!(
        failed.result.as_ref().unwrap_err().kind,
        TaskErrorKind::Trap
    );
    assert!(String::from_utf8_lossy(&failed.stderr).contains("cannot start below zero"));
    let unknown = host.create("a-10", "gadget()").unwrap_err();
    let error = unknown.result.unwrap_err();
    assert_eq!(error.kind, TaskErrorKind::UnknownExport);
    assert!(
        error.message.contains("no actor class `gadget`")
            && error.message.contains("`counter`")
            && error.message.contains("`log`"),
        "{}",
        error.message
    );
    let spans = host.spans();
    assert!(
        spans
            .iter()
            .all(|s| matches!(s.status, opentelemetry::trace::Status::Error { .. })),
        "failed creations are traced as errors"
    );
}

#[test]
fn a_component_may_export_several_classes() {
    let host = Host::new(Limits::default(), guests::ACTORS);
    let classes = actor_classes(host.linker.runtime().engine(), host.component.component());
    let names: Vec<(&str, &str)> = classes
        .iter()
        .map(|c| (c.name.as_str(), c.interface.as_str()))
        .collect();
    assert_eq!(names, [("counter", "counter-api"), ("log", "log-api")]);
    assert_eq!(classes[0].constructor, "constructor(start: s64)");
    let incr = classes[0]
        .methods
        .iter()
        .find(|m| m.name == "incr")
        .unwrap();
    assert_eq!(incr.ty, "func(by: s64) -> s64");
    let mut log = host.create("l-1", "log()").unwrap();
    host.call(&mut log, "push(\"a\")");
    host.call(&mut log, "push(\"b\")");
    assert_eq!(result(&host.call(&mut log, "entries()")), "[\"a\", \"b\"]");
    let killed = log.kill(
        &host.linker,
        Some(&host.telemetry),
        &host.component,
        &TaskContext::new("l-1"),
    );
    assert!(killed.result.is_ok());
    let spans = host.spans();
    let kill = spans.iter().find(|s| s.name == "log.kill execute").unwrap();
    assert_eq!(kill.links.links.len(), 1, "the kill links to the creation");
}

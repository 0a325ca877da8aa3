//! A fault of the host itself while it serves a guest fails that one task,
//! with an error naming the host call, and nothing else: the thread runs
//! the next task at once and every span the guest started is exported.
//!
//! The fault is injected through a real extension point, the `Submitter` a
//! worker hands its tasks for nested submissions: one that panics stands for
//! any bug in a host call.

use std::sync::Arc;

use opentelemetry::Value;
use opentelemetry::trace::Status;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use wtrace::capabilities::tasks::{NestedTask, Submitted, Submitter};
use wtrace::exec::task::{self, TaskContext, TaskErrorKind, TaskLinker};
use wtrace::{Limits, Runtime, Telemetry};
use wtrace_tests::guests;

#[derive(Debug)]
struct PanickingSubmitter;

impl Submitter for PanickingSubmitter {
    fn submit(&self, task: NestedTask) -> Result<Submitted, String> {
        let missing: Option<&str> = std::hint::black_box(None);
        panic!(
            "injected fault submitting {}: {}",
            task.function,
            missing.unwrap_or("no value")
        );
    }

    fn waiting(&self, _waiting: bool) {}
}

#[test]
fn a_panic_in_a_host_call_fails_only_its_task_and_names_the_call() {
    let exporter = InMemorySpanExporter::default();
    let telemetry = Telemetry::new(
        SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build(),
    );
    let runtime = Runtime::new(Limits::default(), None).unwrap();
    let linker = TaskLinker::new(&runtime).unwrap();
    let bytes = std::fs::read(guests::FANOUT).unwrap();
    let component = linker.load("fanout.wasm", &bytes).unwrap();
    let submitter: Arc<dyn Submitter> = Arc::new(PanickingSubmitter);
    let cx = TaskContext {
        submitter: Some(submitter),
        ..TaskContext::new("t-1")
    };

    let output = task::execute(
        &linker,
        Some(&telemetry),
        &component,
        "tree",
        "tree(1, 2)",
        &cx,
    );
    let error = output.result.expect_err("the task fails");
    assert_eq!(error.kind, TaskErrorKind::HostPanic, "{error:?}");
    for part in [
        "the host panicked in wtrace:tracing/tasks#submit",
        "injected fault submitting tree",
        "only this task failed",
        "host_faults.rs",
    ] {
        assert!(
            error.message.contains(part),
            "{part:?} in {}",
            error.message
        );
    }

    let spans = exporter.get_finished_spans().unwrap();
    let execute = spans.iter().find(|s| s.name == "tree execute").unwrap();
    assert!(
        matches!(&execute.status, Status::Error { description } if description.contains("panicked")),
        "{:?}",
        execute.status
    );
    let exception = execute
        .events
        .iter()
        .find(|e| e.name == "exception")
        .expect("an exception event");
    assert!(
        exception
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "exception.type"
                && kv.value == Value::from("wtrace.HostPanic")),
        "{:?}",
        exception.attributes
    );
    // The guest span open when the host call panicked is ended and exported.
    let fan_out = spans.iter().find(|s| s.name == "fan-out").unwrap();
    assert_eq!(fan_out.parent_span_id, execute.span_context.span_id());
    assert!(
        fan_out
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "wtrace.unended" && kv.value == Value::Bool(true))
    );

    // The same thread, linker and component run the next task at once.
    let next = task::execute(
        &linker,
        Some(&telemetry),
        &component,
        "tree",
        "tree(0, 1)",
        &cx,
    );
    assert_eq!(next.result, Ok("ok(1)".to_owned()));
}

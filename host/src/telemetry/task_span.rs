//! The submit span of a task: one builder for drivers and for tasks that
//! submit tasks, so both carry every key of the span contract.

use opentelemetry::trace::{SpanKind, Tracer as _};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::trace::{SdkTracer, Span};

/// Who submits: values the same on every submit span of a process, made
/// once and shared by the spans.
#[derive(Debug, Clone)]
pub struct Submitter {
    job_id: Value,
    worker_id: Value,
    node_id: Value,
    pid: i64,
}

impl Submitter {
    /// A driver process (`wtrace run`, `submit`, a [`crate::Client`]).
    pub fn driver(job_id: &str) -> Self {
        Self::worker(job_id, "driver", "driver")
    }

    /// A worker whose task submits tasks.
    pub fn worker(job_id: &str, worker_id: &str, node_id: &str) -> Self {
        Self {
            job_id: crate::attrs::text(job_id),
            worker_id: crate::attrs::text(worker_id),
            node_id: crate::attrs::text(node_id),
            pid: i64::from(crate::ids::pid()),
        }
    }
}

/// What one task's submit span says of it.
#[derive(Debug, Clone)]
pub struct SubmitSpan<'a> {
    /// The export called.
    pub function: &'a str,
    /// The component's file name.
    pub component: Value,
    /// `sha256:<hex>` of its bytes.
    pub digest: Value,
    /// The task's id, the same on its execute span.
    pub task_id: &'a str,
    /// Its nesting depth, for a task a task submitted.
    pub depth: Option<u32>,
}

impl Submitter {
    /// Starts `task`'s `<function> submit` span (PRODUCER) under `parent`.
    pub fn start(&self, tracer: &SdkTracer, task: SubmitSpan<'_>, parent: &Context) -> Span {
        let mut attributes = Vec::with_capacity(9);
        attributes.extend([
            KeyValue::new("wtrace.function", crate::attrs::shared(task.function)),
            KeyValue::new("wtrace.component", task.component),
            KeyValue::new("wtrace.component.digest", task.digest),
            KeyValue::new("wtrace.task_id", task.task_id.to_owned()),
            KeyValue::new("wtrace.job_id", self.job_id.clone()),
            KeyValue::new("wtrace.worker_id", self.worker_id.clone()),
            KeyValue::new("wtrace.node_id", self.node_id.clone()),
            KeyValue::new("process.pid", self.pid),
        ]);
        if let Some(depth) = task.depth {
            attributes.push(KeyValue::new("wtrace.depth", i64::from(depth)));
        }
        tracer
            .span_builder(format!("{} submit", task.function))
            .with_kind(SpanKind::Producer)
            .with_attributes(attributes)
            .start_with_context(tracer, parent)
    }
}

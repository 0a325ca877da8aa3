//! The spans wtrace makes for a task: one submit-span builder for drivers
//! and for tasks that submit tasks, so both carry every key of the span
//! contract, and the span names, made once per function rather than per
//! task. What is the same for every span of a process (pid, worker, node,
//! job) is on the resource, not here.

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};

use opentelemetry::trace::{SpanKind, Tracer as _};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::trace::{SdkTracer, Span};

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
    /// For an actor's creation, call or end: which actor.
    pub actor: Option<ActorOfSpan<'a>>,
}

/// The actor a submission is for, as its spans name it.
#[derive(Debug, Clone, Copy)]
pub struct ActorOfSpan<'a> {
    /// `wtrace.actor_id`.
    pub id: &'a str,
    /// `wtrace.actor_class`.
    pub class: &'a str,
    /// `wtrace.actor_method`: `new`, `kill` or the method's name.
    pub method: &'a str,
}

impl ActorOfSpan<'_> {
    /// Its span attributes.
    pub fn attributes(&self) -> [KeyValue; 3] {
        [
            KeyValue::new("wtrace.actor_id", self.id.to_owned()),
            KeyValue::new("wtrace.actor_class", self.class.to_owned()),
            KeyValue::new("wtrace.actor_method", self.method.to_owned()),
        ]
    }
}

/// Starts `task`'s `<function> submit` span (PRODUCER) under `parent`.
pub fn start_submit(tracer: &SdkTracer, task: SubmitSpan<'_>, parent: &Context) -> Span {
    let mut attributes = crate::attrs::attribute_list();
    attributes.extend([
        KeyValue::new("wtrace.function", crate::attrs::shared(task.function)),
        KeyValue::new("wtrace.component", task.component),
        KeyValue::new("wtrace.component.digest", task.digest),
        KeyValue::new(crate::attrs::TASK_ID, task.task_id.to_owned()),
    ]);
    if let Some(depth) = task.depth {
        attributes.push(KeyValue::new("wtrace.depth", i64::from(depth)));
    }
    if let Some(actor) = &task.actor {
        attributes.extend(actor.attributes());
    }
    tracer
        .span_builder(name(task.function, Phase::Submit))
        .with_kind(SpanKind::Producer)
        .with_attributes(attributes)
        .start_with_context(tracer, parent)
}

/// Which of a task's two spans a name is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// `<function> submit`.
    Submit,
    /// `<function> execute`.
    Execute,
}

/// How many distinct names a process makes once and keeps for good; past
/// that (a process fed ever new function names) each span gets its own.
const KEPT_NAMES: usize = 4096;
static KEPT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Per function: its submit and execute names.
    static NAMES: RefCell<rustc_hash::FxHashMap<Box<str>, [Option<&'static str>; 2]>> =
        RefCell::new(rustc_hash::FxHashMap::default());
}

/// `<function> submit` or `<function> execute`: the same name for every
/// task of a function, made once, so a span's name costs no allocation.
pub fn name(function: &str, phase: Phase) -> Cow<'static, str> {
    let made = || match phase {
        Phase::Submit => format!("{function} submit"),
        Phase::Execute => format!("{function} execute"),
    };
    let slot = phase as usize;
    NAMES.with_borrow_mut(|names| {
        if let Some(Some(name)) = names.get(function).map(|kept| kept[slot]) {
            return Cow::Borrowed(name);
        }
        if KEPT.fetch_add(1, Ordering::Relaxed) >= KEPT_NAMES {
            return Cow::Owned(made());
        }
        let name: &'static str = Box::leak(made().into_boxed_str());
        names.entry(Box::from(function)).or_default()[slot] = Some(name);
        Cow::Borrowed(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_once_per_function_and_phase() {
        let a = name("my-function", Phase::Submit);
        let b = name("my-function", Phase::Submit);
        assert_eq!(a, "my-function submit");
        assert!(matches!((&a, &b), (Cow::Borrowed(x), Cow::Borrowed(y)) if std::ptr::eq(*x, *y)));
        assert_eq!(name("my-function", Phase::Execute), "my-function execute");
        for i in 0..20 {
            assert_eq!(
                name(&format!("f{i}"), Phase::Execute),
                format!("f{i} execute")
            );
        }
        assert_eq!(name("my-function", Phase::Submit), "my-function submit");
    }
}

//! Python guests (`guest-sdk/python`, componentize-py): the example hook and
//! the seed task, built from source, run by the real binary across worker
//! processes, trace like the Rust seed example — and mix with Rust guests.
//!
//! Needs componentize-py (scripts/test.sh installs it: scripts/setup-python.sh);
//! without it every test here fails saying so.

mod guest_langs;

use std::sync::OnceLock;

use guest_langs::{Built, Lang};
use wtrace_tests::guests;

/// A task whose function raises inside two nested `span(...)` blocks, and one
/// that calls a function decorated with `@wtrace.span` twice.
const RAISE: &[guest_langs::Source] = &[
    (
        "world.wit",
        "package test:raise-py;

world raise {
  include wtrace:tracing/task-imports@0.1.0;
  export fail-in-span: func() -> result<s32, string>;
  export decorated: func(n: s32) -> s32;
}
",
    ),
    (
        "app.py",
        r#"import wit_world
from componentize_py_types import Err

import wtrace_guest as wtrace


@wtrace.span("load", attributes={"source": "decorator"})
def load(n: int) -> int:
    return n * 21


class WitWorld(wit_world.WitWorld):
    def decorated(self, n: int) -> int:
        return load(n) + load(0)

    def fail_in_span(self) -> int:
        try:
            attributes = {"rows": 42, "ratio": 0.5, "ok": True, "tags": ["a", "b"]}
            with wtrace.span("outer", attributes=attributes):
                with wtrace.span("inner"):
                    raise ValueError("bad input")
        except ValueError as e:
            raise Err(f"caught: {e}")
        return 0
"#,
    ),
];

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| Lang::Python.build_guests(RAISE))
}

#[test]
fn python_hook_and_python_task_trace_the_seed_example_with_a_compiled_cache() {
    guest_langs::assert_seed_with_compiled_cache(built(), "wtrace-python-example");
}

#[test]
fn python_task_runs_under_the_rust_file_hook() {
    guest_langs::assert_task_under_rust_hook(built());
}

#[test]
fn rust_hello_task_runs_under_the_python_hook() {
    guest_langs::assert_rust_task_under_hook(built());
}

#[test]
fn python_hook_reads_every_sampler_of_the_environment() {
    guest_langs::assert_hook_samplers(built());
}

#[test]
fn python_hook_errors_are_the_hooks_errors() {
    guest_langs::assert_hook_errors(&built().hook, std::path::Path::new(guests::HELLO));
}

#[test]
fn python_span_helper_ends_spans_when_the_block_raises() {
    guest_langs::assert_helper_ends_spans_on_errors(built(), "ValueError");
}

#[test]
fn python_span_decorator_opens_a_span_per_call() {
    let dir = wtrace_tests::span_dir();
    let (run, _) = guest_langs::run(
        guests::FILE_HOOK,
        &built().raise,
        &["decorated(2)"],
        dir.path(),
        &[],
        &[],
    );
    assert_eq!(
        run.success().trim(),
        "42",
        "the decorated function's result"
    );
    let spans = wtrace_tests::Spans::read(dir.path());
    let execute = spans.one("decorated execute");
    let loads = spans.named("load");
    assert_eq!(loads.len(), 2, "one span per call: {:?}", spans.names());
    for load in &loads {
        wtrace_tests::assert_child_of(load, execute);
        assert_eq!(
            load.attributes.get("source").map(String::as_str),
            Some("decorator")
        );
        assert!(
            !load.attributes.contains_key("wtrace.unended"),
            "the decorator ended it: {:?}",
            load.attributes
        );
        assert!(load.error.is_none());
    }
    assert_ne!(loads[0].span_id, loads[1].span_id);
}

#[test]
fn python_counter_actor_keeps_its_state_and_traces_its_calls() {
    let counter = built().counter.as_ref().expect("examples/counter is built");
    let dir = wtrace_tests::span_dir();
    let hook = format!("--tracing-startup-hook={}", guests::FILE_HOOK);
    let allow = format!("--allow-span-dir={}", dir.path().display());
    let cache = guest_langs::test_cache_dir();
    let mut cluster = wtrace_tests::Cluster::start(
        &[&hook, &allow, "-n", "1"],
        &[
            ("WTRACE_SPAN_DIR", dir.path().to_str().unwrap()),
            ("WTRACE_CACHE_DIR", cache.to_str().unwrap()),
        ],
    );
    let counter = counter.to_str().unwrap();
    let id = cluster
        .command(&["actor", "create", counter, "counter(5)"])
        .run()
        .success()
        .trim()
        .to_owned();
    for (call, want) in [("incr(2)", "7"), ("incr(3)", "10"), ("get()", "10")] {
        let run = cluster.command(&["actor", "call", &id, call]).run();
        assert_eq!(run.success().trim(), want, "{call}");
    }
    cluster.command(&["actor", "kill", &id]).run().success();
    cluster.stop();

    let spans = wtrace_tests::Spans::read(dir.path());
    let creation = spans.one("counter.new execute");
    let mut calls = spans.named("counter.incr execute");
    calls.sort_by_key(|s| s.start);
    assert_eq!(calls.len(), 2);
    let adds = spans.named("add");
    assert_eq!(
        adds.len(),
        2,
        "one guest span per call: {:?}",
        spans.names()
    );
    for (call, by) in calls.iter().zip(["2", "3"]) {
        assert_eq!(call.attributes["wtrace.actor_id"], id);
        assert_eq!(call.links[0].1, creation.span_id, "linked to the creation");
        let add = adds
            .iter()
            .find(|a| a.parent_span_id == call.span_id)
            .expect("the guest's span under its call");
        assert_eq!(
            add.attributes.get("counter.by").map(String::as_str),
            Some(by),
            "{add:?}"
        );
    }
}

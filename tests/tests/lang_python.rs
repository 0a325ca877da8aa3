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

/// A task whose function raises inside two nested `span(...)` blocks.
const RAISE: &[guest_langs::Source] = &[
    (
        "world.wit",
        "package test:raise-py;

world raise {
  include wtrace:tracing/task-imports@0.1.0;
  export fail-in-span: func() -> result<s32, string>;
}
",
    ),
    (
        "app.py",
        r#"import wit_world
from componentize_py_types import Err

import wtrace_guest as wtrace


class WitWorld(wit_world.WitWorld):
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
fn python_hook_errors_are_the_hooks_errors() {
    guest_langs::assert_hook_errors(&built().hook, std::path::Path::new(guests::HELLO));
}

#[test]
fn python_span_helper_ends_spans_when_the_block_raises() {
    guest_langs::assert_helper_ends_spans_on_errors(built(), "ValueError");
}

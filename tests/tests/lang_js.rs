//! JavaScript guests (`guest-sdk/js`, componentize-qjs): the example hook and
//! the seed task, built from source, run by the real binary across worker
//! processes, trace like the Rust seed example — and mix with Rust guests.
//!
//! Needs Node.js and componentize-qjs (scripts/test.sh installs them:
//! scripts/setup-js.sh);
//! without it every test here fails saying so.

mod guest_langs;

use std::sync::OnceLock;

use guest_langs::{Built, Lang};
use wtrace_tests::guests;

/// A task whose function throws inside two nested `inSpan(...)` calls, and
/// one that lets an exception escape an export without `result`.
const RAISE: &[guest_langs::Source] = &[
    (
        "world.wit",
        "package test:raise-js;

world raise {
  include wtrace:tracing/task-imports@0.1.0;
  export fail-in-span: func() -> result<s32, string>;
  export throw-uncaught: func() -> s32;
}
",
    ),
    (
        "app.js",
        r#"import { inSpan } from "wtrace-guest";

export function failInSpan() {
  try {
    const attributes = { rows: 42, ratio: 0.5, ok: true, tags: ["a", "b"] };
    inSpan("outer", { attributes }, () =>
      inSpan("inner", () => {
        throw new TypeError("bad input");
      }),
    );
  } catch (error) {
    throw `caught: ${error.message}`;
  }
  return 0;
}

export function throwUncaught() {
  inSpan("doomed", () => {
    throw new RangeError("no result here");
  });
  return 0;
}
"#,
    ),
];

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| Lang::Js.build_guests(RAISE))
}

#[test]
fn js_hook_and_js_task_trace_the_seed_example_with_a_compiled_cache() {
    guest_langs::assert_seed_with_compiled_cache(built(), "wtrace-js-example");
}

#[test]
fn js_task_runs_under_the_rust_file_hook() {
    guest_langs::assert_task_under_rust_hook(built());
}

#[test]
fn rust_hello_task_runs_under_the_js_hook() {
    guest_langs::assert_rust_task_under_hook(built());
}

#[test]
fn js_hook_reads_every_sampler_of_the_environment() {
    guest_langs::assert_hook_samplers(built());
}

#[test]
fn js_hook_errors_are_the_hooks_errors() {
    guest_langs::assert_hook_errors(&built().hook, std::path::Path::new(guests::HELLO));
}

#[test]
fn js_in_span_ends_spans_when_the_function_throws() {
    guest_langs::assert_helper_ends_spans_on_errors(built(), "TypeError");
}

#[test]
fn js_exception_escaping_an_export_fails_the_task_with_the_error() {
    let dir = wtrace_tests::span_dir();
    let (run, _) = guest_langs::run(
        guests::FILE_HOOK,
        &built().raise,
        &["throw-uncaught()"],
        dir.path(),
        &[],
        &[],
    );
    let stderr = run.failure();
    assert!(
        stderr.contains("no result here") && stderr.contains("at throwUncaught (/app/app.js:"),
        "the exception's message and JS stack reach the driver:\n{stderr}"
    );
    assert!(stderr.contains("trapped"), "the task traps:\n{stderr}");
    let spans = wtrace_tests::Spans::read(dir.path());
    let execute = spans.one("throw-uncaught execute");
    let doomed = spans.one("doomed");
    wtrace_tests::assert_child_of(doomed, execute);
    assert_eq!(
        doomed.error.as_deref(),
        Some("RangeError: no result here"),
        "inSpan marks its span failed before the exception escapes"
    );
    assert!(
        execute.error.is_some(),
        "the trap marks the execute span failed"
    );
}

//! JavaScript guests (`guest-sdk/js`, componentize-qjs): the example hook and
//! the seed task, built from source, run by the real binary across worker
//! processes, trace like the Rust seed example — and mix with Rust guests.
//!
//! Needs Node.js and componentize-qjs (scripts/test.sh installs them:
//! scripts/setup-js.sh);
//! without it every test here fails saying so.

mod guest_langs;

use std::sync::OnceLock;

use guest_langs::{Built, Lang, cached, hook_spec, identity, run_seed};
use wtrace_tests::{guests, span_dir};

/// A task whose function throws inside two nested `inSpan(...)` calls.
const RAISE: &[guest_langs::Source] = &[
    (
        "world.wit",
        "package test:raise-js;

world raise {
  include wtrace:tracing/task-imports@0.1.0;
  export fail-in-span: func() -> result<s32, string>;
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
"#,
    ),
];

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| Lang::Js.build_guests(RAISE))
}

#[test]
fn js_hook_and_js_task_trace_the_seed_example_with_a_compiled_cache() {
    let built = built();
    let cache = tempfile::Builder::new()
        .prefix("wtrace-cache-")
        .tempdir()
        .unwrap();
    let extra = [format!("--cache-dir={}", cache.path().display())];

    let first = span_dir();
    run_seed(
        &hook_spec(&built.hook),
        &built.task,
        first.path(),
        &extra,
        &[],
        "wtrace-js-example",
    );
    // Both big components were compiled once and stored by digest.
    let hook_cwasm = cached(cache.path(), &built.hook);
    let task_cwasm = cached(cache.path(), &built.task);
    let before = (identity(&hook_cwasm), identity(&task_cwasm));

    // The second run loads them from the cache (not rewritten) and traces the same.
    let second = span_dir();
    run_seed(
        &hook_spec(&built.hook),
        &built.task,
        second.path(),
        &extra,
        &[],
        "wtrace-js-example",
    );
    assert_eq!(
        (identity(&hook_cwasm), identity(&task_cwasm)),
        before,
        "the second run must load the compiled components, not compile and store them again"
    );
}

#[test]
fn js_task_runs_under_the_rust_file_hook() {
    let dir = span_dir();
    run_seed(
        guests::FILE_HOOK,
        &built().task,
        dir.path(),
        &[],
        &[],
        "wtrace-tests",
    );
}

#[test]
fn rust_hello_task_runs_under_the_js_hook() {
    let dir = span_dir();
    let spans = run_seed(
        &hook_spec(&built().hook),
        std::path::Path::new(guests::HELLO),
        dir.path(),
        &[],
        &[
            ("OTEL_SERVICE_NAME", "checkout"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=ci,team=obs",
            ),
        ],
        "checkout",
    );
    for span in spans.all() {
        assert_eq!(span.resource["deployment.environment"], "ci");
        assert_eq!(span.resource["team"], "obs");
    }
}

#[test]
fn js_hook_errors_are_the_hooks_errors() {
    guest_langs::assert_hook_errors(&built().hook, std::path::Path::new(guests::HELLO));
}

#[test]
fn js_in_span_ends_spans_when_the_function_throws() {
    guest_langs::assert_helper_ends_spans_on_errors(built(), "TypeError");
}

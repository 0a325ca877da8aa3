//! Property tests ("fuzzing") of everything the host parses from untrusted
//! sources: invocations and WAVE arguments, hook specs, span data from
//! guests, trace context, and the messages between processes. Whatever the
//! input: no panic, no hang, and well-formed input round-trips.
//!
//! Run longer with `PROPTEST_CASES=100000 cargo test --release -p wtrace properties`.

use std::str::FromStr as _;

use proptest::prelude::*;
use wasmtime::component::Type;

use crate::capabilities::bindings::types;
use crate::capabilities::tracer::{key_value, span_context_from_wit};
use crate::cluster::messages::{FromDriver, FromWorker, ToDriver, ToWorker};
use crate::cluster::transport::tcp::protocol::Hello;
use crate::exec::hook::HookSpec;
use crate::runtime::wave::{Invocation, parse_args};
use crate::spans::SpanFiles;
use crate::telemetry::context::{parse_traceparent, traceparent};

/// Text biased towards WAVE's syntax.
fn wave_like() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("(".to_owned()),
            Just(")".to_owned()),
            Just("[".to_owned()),
            Just("]".to_owned()),
            Just("{".to_owned()),
            Just("}".to_owned()),
            Just(",".to_owned()),
            Just("\"".to_owned()),
            Just("\\".to_owned()),
            Just("some(".to_owned()),
            Just("ok(".to_owned()),
            Just("-".to_owned()),
            "[a-z0-9_]{0,6}",
            any::<char>().prop_map(String::from),
        ],
        0..64,
    )
    .prop_map(|parts| parts.concat())
}

fn value_type() -> impl Strategy<Value = Type> {
    prop_oneof![
        Just(Type::Bool),
        Just(Type::U32),
        Just(Type::S64),
        Just(Type::Float64),
        Just(Type::Char),
        Just(Type::String),
    ]
}

/// A value a guest's export may return, extremes included.
fn result_value() -> impl Strategy<Value = wasmtime::component::Val> {
    use wasmtime::component::Val;
    let leaf = prop_oneof![
        any::<String>().prop_map(Val::String),
        any::<char>().prop_map(Val::Char),
        prop_oneof![any::<f64>(), Just(f64::NAN), Just(f64::NEG_INFINITY)].prop_map(Val::Float64),
        any::<f32>().prop_map(Val::Float32),
        any::<i64>().prop_map(Val::S64),
        any::<u64>().prop_map(Val::U64),
        any::<bool>().prop_map(Val::Bool),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Val::List),
            prop::collection::vec(inner.clone(), 0..4).prop_map(Val::Tuple),
            prop::option::of(inner.clone().prop_map(Box::new)).prop_map(Val::Option),
            prop::option::of(inner.prop_map(Box::new)).prop_map(|v| Val::Result(Err(v))),
        ]
    })
}

proptest! {
    #[test]
    fn invocations_never_panic(text in wave_like()) {
        let _ = Invocation::from_str(&text);
        let _ = Invocation::from_str(&format!("f({text})"));
    }

    #[test]
    fn arguments_never_panic(text in wave_like(), params in prop::collection::vec(value_type(), 0..4)) {
        let _ = parse_args(&format!("f({text})"), &params);
    }

    #[test]
    fn valid_arguments_parse(a in any::<u32>(), b in any::<i64>(), s in "\\PC{0,20}") {
        let text = format!("f({a}, {b}, {})", wasmtime::component::wasm_wave::to_string(
            &wasmtime::component::Val::String(s.clone())).unwrap());
        let invocation = Invocation::from_str(&text).unwrap();
        let values = parse_args(&invocation.text, &[Type::U32, Type::S64, Type::String]).unwrap();
        prop_assert_eq!(values, vec![
            wasmtime::component::Val::U32(a),
            wasmtime::component::Val::S64(b),
            wasmtime::component::Val::String(s),
        ]);
    }

    #[test]
    fn any_guest_result_formats_as_wave(values in prop::collection::vec(result_value(), 0..4)) {
        let text = crate::runtime::wave::format_results(&values);
        if values.len() > 1 {
            prop_assert!(text.starts_with('('));
        }
        for value in &values {
            let _ = crate::runtime::wave::display_value(value);
        }
    }

    #[test]
    fn hook_specs_never_panic(text in "\\PC{0,40}") {
        if let Ok(spec) = HookSpec::from_str(&text) {
            prop_assert!(!spec.export.is_empty());
            prop_assert!(!spec.export.contains('_'));
        }
    }

    #[test]
    fn guest_span_contexts_never_panic(
        trace_id in "[0-9a-fA-Fg-z]{0,40}",
        span_id in "[0-9a-fA-Fg-z]{0,20}",
        sampled in any::<bool>(),
        state in prop::collection::vec(("\\PC{0,8}", "\\PC{0,8}"), 0..4),
    ) {
        let cx = types::SpanContext { trace_id, span_id, sampled, is_remote: true, trace_state: state };
        if let Some(parsed) = span_context_from_wit(cx) {
            prop_assert!(parsed.is_valid());
        }
    }

    #[test]
    fn guest_attributes_are_truncated_on_char_boundaries(key in "\\PC{0,64}", value in "\\PC{0,300}", max in 0u32..200) {
        let kv = key_value(types::KeyValue { key, value: types::Value::String(value) }, max);
        prop_assert!(kv.key.as_str().len() <= max as usize);
        prop_assert!(kv.value.as_str().len() <= max as usize);
    }

    #[test]
    fn traceparents_round_trip(trace in "[0-9a-f]{32}", span in "[0-9a-f]{16}", flags in 0u8..2) {
        let header = format!("00-{trace}-{span}-{flags:02x}");
        match parse_traceparent(&header, None) {
            Some(cx) => prop_assert_eq!(traceparent(&cx).unwrap(), header),
            // All-zero ids are invalid by the W3C spec.
            None => prop_assert!(trace.bytes().all(|b| b == b'0') || span.bytes().all(|b| b == b'0')),
        }
    }

    #[test]
    fn traceparents_never_panic(text in "\\PC{0,80}", state in proptest::option::of("\\PC{0,40}")) {
        let _ = parse_traceparent(&text, state.as_deref());
    }

    #[test]
    fn task_envelopes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = postcard::from_bytes::<Hello>(&bytes);
        let _ = postcard::from_bytes::<ToWorker>(&bytes);
        let _ = postcard::from_bytes::<FromWorker>(&bytes);
        let _ = postcard::from_bytes::<FromDriver>(&bytes);
        let _ = postcard::from_bytes::<ToDriver>(&bytes);
    }

    #[test]
    fn span_files_never_panic(text in "\\PC{0,400}") {
        let mut files = SpanFiles::default();
        files.add_text(std::path::Path::new("x.json"), &text);
        let _ = files.render(None);
    }
}

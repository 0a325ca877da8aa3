//! The encoder against `opentelemetry-proto`'s own conversion and serde
//! encoding, on spans of every shape a property test can think of.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use proptest::prelude::*;

use super::{LineEncoder, needs_escape, needs_escape_words};

/// What `opentelemetry-proto` makes of `batch`: the reference.
fn reference(batch: &[SpanData], resource: &Resource) -> String {
    let resource: ResourceAttributesWithSchema = resource.into();
    let request = ExportTraceServiceRequest {
        resource_spans: group_spans_by_resource_and_scope(batch.to_vec(), &resource),
    };
    let mut line = serde_json::to_string(&request).unwrap();
    line.push('\n');
    line
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z._ -]{0,12}",
        1 => any::<String>(),
        1 => Just("quote \" backslash \\ newline \n tab \t bell \u{7} del \u{7f} é ✓".to_owned()),
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::I64),
        any::<f64>().prop_map(Value::F64),
        Just(Value::F64(f64::NAN)),
        Just(Value::F64(-0.0)),
        text().prop_map(Value::from),
    ]
}

fn attribute_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => scalar(),
        1 => prop::collection::vec(any::<bool>(), 0..3).prop_map(|v| Value::Array(Array::Bool(v))),
        1 => prop::collection::vec(any::<i64>(), 0..3).prop_map(|v| Value::Array(Array::I64(v))),
        1 => prop::collection::vec(any::<f64>(), 0..3).prop_map(|v| Value::Array(Array::F64(v))),
        1 => prop::collection::vec(text(), 0..3).prop_map(|v| {
            Value::Array(Array::String(v.into_iter().map(StringValue::from).collect()))
        }),
    ]
}

fn attributes() -> impl Strategy<Value = Vec<KeyValue>> {
    prop::collection::vec(
        (text(), attribute_value()).prop_map(|(k, v)| KeyValue::new(k, v)),
        0..5,
    )
}

fn time() -> impl Strategy<Value = SystemTime> {
    prop_oneof![
        any::<u64>().prop_map(|n| UNIX_EPOCH + Duration::from_nanos(n)),
        Just(UNIX_EPOCH - Duration::from_secs(1)),
    ]
}

fn trace_state() -> impl Strategy<Value = TraceState> {
    prop_oneof![
        Just(TraceState::NONE),
        Just(TraceState::default()),
        Just(TraceState::from_key_value([("vendor", "value"), ("b", "2")]).unwrap()),
    ]
}

fn span_context() -> impl Strategy<Value = SpanContext> {
    (
        1..=u128::MAX,
        1..=u64::MAX,
        // Sampled or not, as nearly every span; now and then any flags.
        prop_oneof![3 => 0..=1_u8, 1 => any::<u8>()],
        any::<bool>(),
        trace_state(),
    )
        .prop_map(|(trace, span, flags, remote, state)| {
            SpanContext::new(
                TraceId::from(trace),
                SpanId::from(span),
                TraceFlags::new(flags),
                remote,
                state,
            )
        })
}

fn scopes() -> [InstrumentationScope; 3] {
    [
        InstrumentationScope::builder("wtrace")
            .with_version("0.1.0")
            .build(),
        InstrumentationScope::builder("guest \"lib\"")
            .with_version("1.0")
            .with_schema_url("https://opentelemetry.io/schemas/1.21.0")
            .with_attributes([KeyValue::new("scope.attr", 7_i64)])
            .build(),
        InstrumentationScope::builder("").build(),
    ]
}

prop_compose! {
    fn span_data()(
        cx in span_context(),
        parent in prop::option::of(1..=u64::MAX),
        parent_is_remote in any::<bool>(),
        kind in 0..5_u8,
        name in text(),
        start in time(),
        end in time(),
        attributes in attributes(),
        dropped_attributes in 0..3_u32,
        events in prop::collection::vec((text(), time(), attributes(), 0..2_u32), 0..3),
        dropped_events in 0..3_u32,
        links in prop::collection::vec((span_context(), attributes(), 0..2_u32), 0..3),
        dropped_links in 0..3_u32,
        status in prop_oneof![Just(Status::Unset), Just(Status::Ok), text().prop_map(Status::error)],
        scope in 0..3_usize,
    ) -> SpanData {
        let mut span_events = SpanEvents::default();
        span_events.events = events
            .into_iter()
            .map(|(name, time, attributes, dropped)| Event::new(name, time, attributes, dropped))
            .collect();
        span_events.dropped_count = dropped_events;
        let mut span_links = SpanLinks::default();
        span_links.links = links
            .into_iter()
            .map(|(cx, attributes, dropped)| Link::new(cx, attributes, dropped))
            .collect();
        span_links.dropped_count = dropped_links;
        SpanData {
            span_context: cx,
            parent_span_id: parent.map_or(SpanId::INVALID, SpanId::from),
            parent_span_is_remote: parent_is_remote,
            span_kind: [
                SpanKind::Internal,
                SpanKind::Server,
                SpanKind::Client,
                SpanKind::Producer,
                SpanKind::Consumer,
            ][usize::from(kind)]
            .clone(),
            name: name.into(),
            start_time: start,
            end_time: end,
            attributes,
            dropped_attributes_count: dropped_attributes,
            events: span_events,
            links: span_links,
            status,
            instrumentation_scope: scopes()[scope].clone(),
        }
    }
}

fn resource(attributes: Vec<KeyValue>, schema: bool) -> Resource {
    let builder = Resource::builder_empty().with_attributes(attributes);
    if schema {
        builder
            .with_schema_url([], "https://opentelemetry.io/schemas/1.21.0")
            .build()
    } else {
        builder.build()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Byte for byte what `opentelemetry-proto`'s serde encoding gives,
    /// through one encoder reused across batches and resources, whole
    /// batches or span by span.
    #[test]
    fn lines_equal_opentelemetry_proto_encoding(
        batches in prop::collection::vec(
            (
                prop::collection::vec(span_data(), 0..6),
                attributes(),
                any::<bool>(),
                any::<prop::sample::Index>(),
            ),
            1..4,
        ),
    ) {
        let mut encoder = LineEncoder::new();
        for (batch, resource_attributes, schema, added) in batches {
            let resource = resource(resource_attributes, schema);
            // Some spans may be added before the resource changes: the line
            // carries the resource it has when it is finished.
            let added = added.index(batch.len() + 1);
            for data in &batch[..added] {
                encoder.add(data);
            }
            encoder.set_resource(&resource);
            let got = String::from_utf8(encoder.encode(&batch[added..]).to_vec()).unwrap();
            let expected = reference(&batch, &resource);
            prop_assert_eq!(&got, &expected);
            // And as JSON, whatever the bytes: the collector's format.
            let got: serde_json::Value = serde_json::from_str(&got).unwrap();
            let expected: serde_json::Value = serde_json::from_str(&expected).unwrap();
            prop_assert_eq!(got, expected);
        }
    }
}

#[test]
fn a_task_span_encodes_as_the_reference_does() {
    let resource = Resource::builder()
        .with_service_name("wtrace")
        .with_attribute(KeyValue::new("process.pid", 4242_i64))
        .build();
    let span = SpanData {
        span_context: SpanContext::new(
            TraceId::from(0x0af7651916cd43dd8448eb211c80319c_u128),
            SpanId::from(0x00f067aa0ba902b7_u64),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        ),
        parent_span_id: SpanId::from(0xb7ad6b7169203331_u64),
        parent_span_is_remote: true,
        span_kind: SpanKind::Consumer,
        name: "my-function execute".into(),
        start_time: UNIX_EPOCH + Duration::from_nanos(1_764_000_000_123_456_789),
        end_time: UNIX_EPOCH + Duration::from_nanos(1_764_000_000_123_999_000),
        attributes: vec![
            KeyValue::new("wtrace.function", "my-function"),
            KeyValue::new("wtrace.task_id", "801a4f83-1"),
            KeyValue::new("wtrace.wasm.memory_peak_bytes", 1_114_112_i64),
        ],
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: scopes()[0].clone(),
    };
    let mut encoder = LineEncoder::new();
    encoder.set_resource(&resource);
    let batch = vec![span.clone(), span];
    let got = String::from_utf8(encoder.encode(&batch).to_vec()).unwrap();
    assert_eq!(got, reference(&batch, &resource));
    assert!(got.contains(r#""intValue":"1114112""#), "{got}");
    // An empty batch is a line with no spans, as the reference has it.
    let got = String::from_utf8(encoder.encode(&[]).to_vec()).unwrap();
    assert_eq!(got, reference(&[], &resource));
}

/// The block-at-a-time scans (16 bytes where the CPU has SSE2, else 8)
/// find every byte JSON must escape, wherever it sits in a string of any
/// length, and nothing else.
#[test]
fn the_escape_scan_finds_each_special_byte_at_every_position() {
    let naive = |bytes: &[u8]| bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
    for scan in [needs_escape, needs_escape_words] {
        for len in 0..72 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = b;
                    assert_eq!(scan(&bytes), naive(&bytes), "{b:#x} at {at} of {len}");
                }
            }
            assert!(!scan(&vec![0x7f; len]));
            assert!(!scan(&vec![0xff; len]));
            assert!(!scan(&vec![0x20; len]));
        }
    }
}

/// The fragments kept of repeated texts are right whoever comes to sit at
/// their address: texts of one length allocated and freed in turn (an
/// allocator hands the same place back), owned or shared (an `Arc` the
/// slot may keep), one text as key, value and name at once, shared texts
/// that hit, and texts longer than a slot keeps.
#[test]
fn kept_fragments_follow_the_text_not_its_address() {
    let resource = Resource::builder_empty().build();
    let shared: std::sync::Arc<str> = "my-function".into();
    let long = "x\"y".repeat(200);
    let mut encoder = LineEncoder::new();
    for i in 0..300 {
        // Made and dropped with each span, all of one length.
        let made = |prefix: &str| std::sync::Arc::<str>::from(format!("{prefix}-{i:04}"));
        let mut span = SpanData {
            span_context: SpanContext::new(
                TraceId::from(1_u128 + i),
                SpanId::from(1_u64),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: format!("name-{i:04}").into(),
            start_time: UNIX_EPOCH,
            end_time: UNIX_EPOCH,
            attributes: vec![
                KeyValue::new("wtrace.function", shared.clone()),
                KeyValue::new(format!("key-{i:04}"), format!("val-{i:04}")),
                KeyValue::new(format!("q\"{i:03}"), format!("n\n{i:03}")),
                KeyValue::new("same", "same"),
                KeyValue::new(format!("int-{i:04}"), i as i64),
                KeyValue::new(
                    opentelemetry::Key::from(made("ark")),
                    StringValue::from(made("arv")),
                ),
            ],
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: scopes()[0].clone(),
        };
        if i % 3 == 0 {
            span.name = if i % 2 == 0 {
                "same".into()
            } else {
                String::from("same").into()
            };
            span.attributes
                .push(KeyValue::new(long.clone(), long.clone()));
        }
        let batch = [span];
        let got = String::from_utf8(encoder.encode(&batch).to_vec()).unwrap();
        assert_eq!(got, reference(&batch, &resource), "span {i}");
    }
}

/// Keys and string values shared through an `Arc`, and static names, are
/// found again by their address (the slot keeps the `Arc`, so nothing else
/// can come to sit there); an owned name is compared, and still found.
#[test]
fn shared_and_static_texts_are_found_by_their_address() {
    let value: std::sync::Arc<str> = "a-function-name".into();
    let key: std::sync::Arc<str> = "wtrace.function".into();
    let mut fragments = super::Fragments::default();
    let key = opentelemetry::Key::from(key);
    let value = StringValue::from(value);
    let mut out = Vec::new();
    for _ in 0..2 {
        fragments.put(&mut out, super::Fragment::Key, super::Text::Key(&key));
        fragments.put(
            &mut out,
            super::Fragment::StringValue,
            super::Text::Value(&value),
        );
        fragments.put(
            &mut out,
            super::Fragment::String,
            super::Text::Static("a name"),
        );
        fragments.put(
            &mut out,
            super::Fragment::String,
            super::Text::Other("owned"),
        );
    }
    let kept = |text: &str| {
        fragments
            .pairs
            .iter()
            .flat_map(|pair| &pair.slots)
            .find(|slot| !slot.json.is_empty() && slot.text == text.as_bytes())
            .map(|slot| slot.at)
    };
    assert_eq!(kept(key.as_str()), Some(key.as_str().as_ptr() as usize));
    assert_eq!(kept(value.as_str()), Some(value.as_str().as_ptr() as usize));
    assert_eq!(kept("a name"), Some("a name".as_ptr() as usize));
    assert_eq!(kept("owned"), Some(0), "an owned text is only compared");
    let once =
        r#"{"key":"wtrace.function","value":{"stringValue":"a-function-name"}"a name""owned""#;
    assert_eq!(String::from_utf8(out).unwrap(), once.repeat(2));
}

/// A scope is found again at once when its texts sit where the kept one's
/// do, and by `==` otherwise: equal scopes made apart, scopes that differ
/// in one field, and attributes in another order are all judged as `==`
/// judges them.
#[test]
fn scopes_are_told_apart_as_equality_tells_them() {
    let owned = |name: &str, version: Option<&str>| {
        let builder = InstrumentationScope::builder(name.to_owned());
        match version {
            Some(version) => builder.with_version(version.to_owned()).build(),
            None => builder.build(),
        }
    };
    let with = |attributes: Vec<KeyValue>| {
        InstrumentationScope::builder("wtrace")
            .with_attributes(attributes)
            .build()
    };
    let kv = |k: &'static str, v: i64| KeyValue::new(k, v);
    let scopes = [
        InstrumentationScope::builder("wtrace")
            .with_version("0.1.0")
            .build(),
        owned("wtrace", Some("0.1.0")),
        owned("wtrace", Some("0.1.1")),
        owned("wtracf", Some("0.1.0")),
        owned("wtrace", None),
        InstrumentationScope::builder("wtrace").build(),
        InstrumentationScope::builder("wtrace")
            .with_schema_url("https://example.com/1")
            .build(),
        with(vec![kv("a", 1), kv("b", 2)]),
        with(vec![kv("b", 2), kv("a", 1)]),
        with(vec![kv("a", 1), kv("b", 3)]),
    ];
    for a in &scopes {
        assert!(super::same_scope(a, &a.clone()), "{a:?} and its clone");
        for b in &scopes {
            assert_eq!(super::same_scope(a, b), a == b, "{a:?} and {b:?}");
        }
    }
}

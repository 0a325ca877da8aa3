//! Property tests of the guest boundary: every record a guest can hand every
//! import, generated with extreme numbers and sizes, fed to the host
//! implementations directly (layer 1, against the SDK's in-memory
//! exporter). Whatever a guest sends: no panic, a trap (`Err`) or a WIT
//! error at worst, every span it started exported once, and nothing over
//! the limits.
//!
//! Run longer with `PROPTEST_CASES=10000 cargo test --release -p wtrace capabilities::properties`.

use std::sync::Arc;

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use proptest::prelude::*;
use wasmtime::component::{Resource, ResourceTable};

use super::bindings::otel::{tracing as wt, types as wty};
use super::bindings::wasi::clocks::wall_clock::Datetime;
use super::bindings::{provider as wp, tasks as wk, tracer, types};
use super::provider::{Provider, ProviderState, WorkerInfo};
use super::tasks::{
    ActorOp, FoundActor, NestedContext, NestedResult, NestedTask, Submitted, Submitter, Tasks,
    TasksState,
};
use super::tracer::{Bridge, BridgeLimits, GuestSpan, SpanBridge};
use crate::config::{ExportPolicy, Limits};
use crate::outcome::TaskOutput;
use crate::runtime::Digest;
use crate::sandbox::Deadline;

/// The limits the properties check against: small, so they are reached.
fn limits() -> BridgeLimits {
    BridgeLimits {
        spans_per_task: 40,
        open_spans: 12,
        attribute_value_length: 64,
    }
}

fn tracer_and_exporter() -> (SdkTracerProvider, InMemorySpanExporter) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    (provider, exporter)
}

fn root() -> SpanContext {
    SpanContext::new(
        TraceId::from(0x1234_u128),
        SpanId::from(0x42_u64),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    )
}

/// Text: usually short, sometimes empty, long, or of any characters.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "\\PC{0,12}",
        1 => Just(String::new()),
        1 => (0usize..3).prop_map(|k| "é".repeat(50 + k * 40)),
        1 => Just("x".repeat(70_000)),
        1 => any::<String>(),
    ]
}

fn hex_id(len: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::string::string_regex(&format!("[0-9a-f]{{{len}}}")).unwrap(),
        1 => Just("0".repeat(len)),
        1 => Just(format!("+{}", "1".repeat(len - 1))),
        1 => "\\PC{0,40}",
    ]
}

fn value() -> impl Strategy<Value = types::Value> {
    prop_oneof![
        text().prop_map(types::Value::String),
        any::<bool>().prop_map(types::Value::Bool),
        prop_oneof![any::<i64>(), Just(i64::MIN), Just(i64::MAX)].prop_map(types::Value::S64),
        prop_oneof![
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(-0.0)
        ]
        .prop_map(types::Value::F64),
        prop::collection::vec(text(), 0..4).prop_map(types::Value::StringList),
        prop::collection::vec(any::<i64>(), 0..300).prop_map(types::Value::S64List),
        prop::collection::vec(any::<f64>(), 0..30).prop_map(types::Value::F64List),
        prop::collection::vec(any::<bool>(), 0..30).prop_map(types::Value::BoolList),
    ]
}

fn key_values() -> impl Strategy<Value = Vec<types::KeyValue>> {
    prop::collection::vec(
        (text(), value()).prop_map(|(key, value)| types::KeyValue { key, value }),
        0..6,
    )
}

fn span_context() -> impl Strategy<Value = types::SpanContext> {
    (
        hex_id(32),
        hex_id(16),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec((text(), text()), 0..4),
    )
        .prop_map(
            |(trace_id, span_id, sampled, is_remote, trace_state)| types::SpanContext {
                trace_id,
                span_id,
                sampled,
                is_remote,
                trace_state,
            },
        )
}

fn span_kind() -> impl Strategy<Value = types::SpanKind> {
    prop_oneof![
        Just(types::SpanKind::Internal),
        Just(types::SpanKind::Server),
        Just(types::SpanKind::Client),
        Just(types::SpanKind::Producer),
        Just(types::SpanKind::Consumer),
    ]
}

fn status() -> impl Strategy<Value = types::Status> {
    prop_oneof![
        Just(types::Status::Unset),
        Just(types::Status::Ok),
        text().prop_map(types::Status::Error),
    ]
}

/// One call a guest makes on `wtrace:tracing/tracer`. `usize` picks a handle
/// the guest got before (or, past the end, one it never had).
#[derive(Debug, Clone)]
enum TracerCall {
    Start(String, tracer::SpanOptions),
    End(usize),
    SetAttribute(usize, String, types::Value),
    SetAttributes(usize, Vec<types::KeyValue>),
    AddEvent(usize, String, Vec<types::KeyValue>),
    SetStatus(usize, types::Status),
    UpdateName(usize, String),
    Context(usize),
    IsRecording(usize),
    Drop(usize),
    Finish(usize, Vec<types::KeyValue>),
    Current,
    StartEncoded(Vec<u8>),
    FinishEncoded(usize, Vec<u8>),
    SpanHandle(usize),
}

/// A span's start in the encoding of `start-span-encoded`, written here
/// from the WIT's description, independently of any SDK.
fn encoded_start(kind: u8, name: &str, attributes: &[types::KeyValue]) -> Vec<u8> {
    let mut out = vec![kind];
    put_str(&mut out, name);
    out.extend(encoded_attributes(attributes));
    out
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn encoded_attributes(attributes: &[types::KeyValue]) -> Vec<u8> {
    let mut out = (attributes.len() as u32).to_le_bytes().to_vec();
    for kv in attributes {
        put_str(&mut out, &kv.key);
        let list = |out: &mut Vec<u8>, tag: u8, n: usize| {
            out.push(tag);
            out.extend_from_slice(&(n as u32).to_le_bytes());
        };
        match &kv.value {
            types::Value::String(v) => {
                out.push(0);
                put_str(&mut out, v);
            }
            types::Value::Bool(v) => out.extend([1, u8::from(*v)]),
            types::Value::S64(v) => {
                out.push(2);
                out.extend_from_slice(&v.to_le_bytes());
            }
            types::Value::F64(v) => {
                out.push(3);
                out.extend_from_slice(&v.to_bits().to_le_bytes());
            }
            types::Value::StringList(v) => {
                list(&mut out, 4, v.len());
                v.iter().for_each(|s| put_str(&mut out, s));
            }
            types::Value::S64List(v) => {
                list(&mut out, 5, v.len());
                v.iter()
                    .for_each(|i| out.extend_from_slice(&i.to_le_bytes()));
            }
            types::Value::F64List(v) => {
                list(&mut out, 6, v.len());
                v.iter()
                    .for_each(|f| out.extend_from_slice(&f.to_bits().to_le_bytes()));
            }
            types::Value::BoolList(v) => {
                list(&mut out, 7, v.len());
                out.extend(v.iter().map(|b| u8::from(*b)));
            }
        }
    }
    out
}

/// Encoded starts: well formed (any kind byte, names and attributes of the
/// other properties), cut short, or any bytes at all.
fn encoded_start_bytes() -> impl Strategy<Value = Vec<u8>> {
    let formed = || {
        (0u8..6, text(), key_values())
            .prop_map(|(kind, name, attributes)| encoded_start(kind, &name, &attributes))
    };
    prop_oneof![
        3 => formed(),
        1 => (formed(), any::<prop::sample::Index>()).prop_map(|(bytes, at)| {
            let cut = at.index(bytes.len().max(1));
            bytes[..cut].to_vec()
        }),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

fn span_options() -> impl Strategy<Value = tracer::SpanOptions> {
    (
        prop::option::of(span_kind()),
        key_values(),
        prop::collection::vec(span_context(), 0..3),
        prop::option::of(span_context()),
    )
        .prop_map(|(kind, attributes, links, parent)| tracer::SpanOptions {
            kind,
            attributes,
            links,
            parent,
        })
}

fn tracer_call() -> impl Strategy<Value = TracerCall> {
    let handle = 0usize..24;
    prop_oneof![
        4 => (text(), span_options()).prop_map(|(n, o)| TracerCall::Start(n, o)),
        3 => handle.clone().prop_map(TracerCall::End),
        1 => (handle.clone(), text(), value()).prop_map(|(h, k, v)| TracerCall::SetAttribute(h, k, v)),
        1 => (handle.clone(), key_values()).prop_map(|(h, a)| TracerCall::SetAttributes(h, a)),
        1 => (handle.clone(), text(), key_values()).prop_map(|(h, n, a)| TracerCall::AddEvent(h, n, a)),
        1 => (handle.clone(), status()).prop_map(|(h, s)| TracerCall::SetStatus(h, s)),
        1 => (handle.clone(), text()).prop_map(|(h, n)| TracerCall::UpdateName(h, n)),
        1 => handle.clone().prop_map(TracerCall::Context),
        1 => handle.clone().prop_map(TracerCall::IsRecording),
        2 => handle.clone().prop_map(TracerCall::Drop),
        2 => (handle.clone(), key_values()).prop_map(|(h, a)| TracerCall::Finish(h, a)),
        1 => Just(TracerCall::Current),
        4 => encoded_start_bytes().prop_map(TracerCall::StartEncoded),
        2 => (handle, prop_oneof![
            key_values().prop_map(|a| encoded_attributes(&a)),
            prop::collection::vec(any::<u8>(), 0..32),
        ]).prop_map(|(h, a)| TracerCall::FinishEncoded(h, a)),
        1 => (0usize..24).prop_map(TracerCall::SpanHandle),
    ]
}

fn datetime() -> impl Strategy<Value = Datetime> {
    (
        prop_oneof![
            Just(0u64),
            Just(u64::MAX),
            1_600_000_000u64..1_900_000_000,
            any::<u64>()
        ],
        prop_oneof![0u32..1_000_000_000, Just(u32::MAX)],
    )
        .prop_map(|(seconds, nanoseconds)| Datetime {
            seconds,
            nanoseconds,
        })
}

fn otel_key_values() -> impl Strategy<Value = Vec<wty::KeyValue>> {
    let json = prop_oneof![
        text(),
        Just("[1, 2.5, \"x\"]".to_owned()),
        Just("[1e400]".to_owned()),
        Just("-9223372036854775809".to_owned()),
        Just("{\"nested\": [[[]]]}".to_owned()),
        Just("[".repeat(10_000)),
    ];
    prop::collection::vec(
        (text(), json).prop_map(|(key, value)| wty::KeyValue { key, value }),
        0..4,
    )
}

fn otel_context() -> impl Strategy<Value = wt::SpanContext> {
    (
        hex_id(32),
        hex_id(16),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec((text(), text()), 0..3),
    )
        .prop_map(
            |(trace_id, span_id, sampled, is_remote, trace_state)| wt::SpanContext {
                trace_id,
                span_id,
                trace_flags: if sampled {
                    wt::TraceFlags::SAMPLED
                } else {
                    wt::TraceFlags::empty()
                },
                is_remote,
                trace_state,
            },
        )
}

fn otel_span() -> impl Strategy<Value = wt::SpanData> {
    let kind = prop_oneof![
        Just(wt::SpanKind::Client),
        Just(wt::SpanKind::Server),
        Just(wt::SpanKind::Producer),
        Just(wt::SpanKind::Consumer),
        Just(wt::SpanKind::Internal),
    ];
    let status = prop_oneof![
        Just(wt::Status::Unset),
        Just(wt::Status::Ok),
        text().prop_map(wt::Status::Error),
    ];
    let event =
        (text(), datetime(), otel_key_values()).prop_map(|(name, time, attributes)| wt::Event {
            name,
            time,
            attributes,
        });
    let link =
        (otel_context(), otel_key_values()).prop_map(|(span_context, attributes)| wt::Link {
            span_context,
            attributes,
        });
    let scope = (text(), prop::option::of(text()), otel_key_values()).prop_map(
        |(name, version, attributes)| wty::InstrumentationScope {
            name,
            version,
            schema_url: None,
            attributes,
        },
    );
    (
        (
            otel_context(),
            hex_id(16),
            kind,
            text(),
            datetime(),
            datetime(),
        ),
        (
            otel_key_values(),
            prop::collection::vec(event, 0..4),
            prop::collection::vec(link, 0..3),
            status,
            scope,
            any::<(u32, u32, u32)>(),
        ),
    )
        .prop_map(
            |(
                (span_context, parent_span_id, span_kind, name, start_time, end_time),
                (attributes, events, links, status, instrumentation_scope, dropped),
            )| wt::SpanData {
                span_context,
                parent_span_id,
                span_kind,
                name,
                start_time,
                end_time,
                attributes,
                events,
                links,
                status,
                instrumentation_scope,
                dropped_attributes: dropped.0,
                dropped_events: dropped.1,
                dropped_links: dropped.2,
            },
        )
}

/// Where the nested tasks of the properties go: answered at once with a
/// canned result, or refused.
#[derive(Debug)]
struct Answering;

impl Submitter for Answering {
    fn submit(&self, task: NestedTask) -> Result<Submitted, String> {
        if task.function.len().is_multiple_of(5) {
            return Err("the worker is shutting down".into());
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let result = match &task.actor {
            // A lookup finds any actor whose id is ASCII.
            Some(ActorOp::Find { id }) if id.is_ascii() => Ok(serde_json::to_string(&FoundActor {
                id: id.clone(),
                class: "counter".into(),
                component: Digest::of(b"ef"),
                component_name: "c.wasm".into(),
            })
            .unwrap()),
            _ => Ok(format!("{}", task.invocation.len())),
        };
        let _ = tx.send(NestedResult {
            pid: 1,
            output: TaskOutput {
                result,
                stdout: b"out\n".to_vec(),
                stderr: Vec::new(),
                nested: Vec::new(),
            },
        });
        Ok(Submitted { id: 1, result: rx })
    }

    fn waiting(&self, _waiting: bool) {}
}

#[derive(Debug, Clone)]
enum TasksCall {
    Submit(String, String),
    SubmitTo(String, String, String),
    Get(usize),
    Drop(usize),
    CreateActor(Option<String>, String, String, wk::ActorOptions),
    FindActor(String),
    CallActor(usize, String, String),
    KillActor(usize),
    IdOfActor(usize),
    DropActor(usize),
}

fn tasks_call() -> impl Strategy<Value = TasksCall> {
    let function = prop_oneof![
        Just("tree".to_owned()),
        Just("my_func".to_owned()),
        "[a-z-]{0,12}",
        text()
    ];
    let args = prop_oneof![
        Just(String::new()),
        Just("1, 2".to_owned()),
        Just("\"".to_owned()),
        Just(format!("{}{}", "[".repeat(200), "]".repeat(200))),
        text(),
    ];
    let digest = prop_oneof![
        Just(format!("sha256:{}", "ab".repeat(32))),
        Just("AB".repeat(32)),
        Just(format!("sha256:{}", "é".repeat(32))),
        text(),
    ];
    let options = (prop::option::of(text()), any::<u32>())
        .prop_map(|(name, max_restarts)| wk::ActorOptions { name, max_restarts });
    prop_oneof![
        3 => (function.clone(), args.clone()).prop_map(|(f, a)| TasksCall::Submit(f, a)),
        2 => (digest.clone(), function.clone(), args.clone()).prop_map(|(d, f, a)| TasksCall::SubmitTo(d, f, a)),
        2 => (0usize..8).prop_map(TasksCall::Get),
        1 => (0usize..8).prop_map(TasksCall::Drop),
        2 => (prop::option::of(digest), function.clone(), args.clone(), options)
            .prop_map(|(d, c, a, o)| TasksCall::CreateActor(d, c, a, o)),
        1 => text().prop_map(TasksCall::FindActor),
        2 => (0usize..4, function, args).prop_map(|(i, m, a)| TasksCall::CallActor(i, m, a)),
        1 => (0usize..4).prop_map(TasksCall::KillActor),
        1 => (0usize..4).prop_map(TasksCall::IdOfActor),
        1 => (0usize..4).prop_map(TasksCall::DropActor),
    ]
}

fn sampler() -> impl Strategy<Value = wp::Sampler> {
    let ratio = prop_oneof![
        any::<f64>(),
        Just(f64::NAN),
        Just(f64::NEG_INFINITY),
        Just(2.0)
    ];
    prop_oneof![
        Just(wp::Sampler::AlwaysOn),
        Just(wp::Sampler::AlwaysOff),
        ratio.clone().prop_map(wp::Sampler::TraceIdRatio),
        Just(wp::Sampler::ParentBasedAlwaysOn),
        Just(wp::Sampler::ParentBasedAlwaysOff),
        ratio.prop_map(wp::Sampler::ParentBasedRatio),
    ]
}

fn exporter(span_dir: String) -> impl Strategy<Value = wp::Exporter> {
    let path = prop_oneof![
        Just(format!("{span_dir}/{{pid}}.json")),
        Just(format!("{span_dir}/../escape.json")),
        Just(format!("{span_dir}/{{worker_id}}/{{node_id}}.json")),
        Just("relative.json".to_owned()),
        Just("/etc/passwd".to_owned()),
        text(),
    ];
    let endpoint = prop_oneof![
        Just("http://127.0.0.1:1".to_owned()),
        Just("http://[::1]:1/v1/traces".to_owned()),
        Just("http://collector.example:4317".to_owned()),
        Just("ftp://127.0.0.1".to_owned()),
        Just("http://127.0.0.1:99999".to_owned()),
        text(),
    ];
    let protocol = prop_oneof![
        Just(wp::OtlpProtocol::Grpc),
        Just(wp::OtlpProtocol::HttpProtobuf),
        Just(wp::OtlpProtocol::HttpJson),
    ];
    let headers = prop::collection::vec(
        (
            prop_oneof![Just("x-token".to_owned()), text()],
            prop_oneof![Just("v".to_owned()), Just("a\nb".to_owned()), text()],
        ),
        0..3,
    );
    prop_oneof![
        Just(wp::Exporter::Console),
        path.prop_map(|path| wp::Exporter::File(wp::FileExporter { path })),
        (endpoint, protocol, headers, any::<u32>()).prop_map(
            |(endpoint, protocol, headers, timeout_ms)| wp::Exporter::Otlp(wp::OtlpExporter {
                endpoint,
                protocol,
                headers,
                timeout_ms,
            })
        ),
    ]
}

#[derive(Debug, Clone)]
enum ProviderCall {
    Worker,
    Resource(Vec<types::KeyValue>),
    Sampler(wp::Sampler),
    Processor(bool, wp::Exporter),
    Instrumentation(String),
}

fn provider_call(span_dir: String) -> impl Strategy<Value = ProviderCall> {
    prop_oneof![
        Just(ProviderCall::Worker),
        key_values().prop_map(ProviderCall::Resource),
        sampler().prop_map(ProviderCall::Sampler),
        (any::<bool>(), exporter(span_dir)).prop_map(|(b, e)| ProviderCall::Processor(b, e)),
        prop_oneof![Just("http-client".to_owned()), text()].prop_map(ProviderCall::Instrumentation),
    ]
}

/// The longest text the limits let through, in bytes.
fn within_limit(text: &str) -> bool {
    text.len() <= limits().attribute_value_length as usize
}

fn assert_span_within_limits(span: &SpanData) {
    assert!(
        within_limit(&span.name),
        "name of {} bytes",
        span.name.len()
    );
    for kv in &span.attributes {
        assert!(within_limit(kv.key.as_str()));
        if let opentelemetry::Value::String(value) = &kv.value {
            assert!(within_limit(value.as_str()), "{:?}", kv.key);
        }
    }
    for event in span.events.iter() {
        assert!(within_limit(&event.name), "event name");
    }
    if let opentelemetry::trace::Status::Error { description } = &span.status {
        assert!(within_limit(description), "status of {}", description.len());
    }
}

proptest! {

    #[test]
    fn tracer_calls_never_panic_and_every_started_span_is_exported_once(
        calls in prop::collection::vec(tracer_call(), 0..48),
    ) {
        let (provider, exporter) = tracer_and_exporter();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "props");
        let mut table = ResourceTable::new();
        let mut state = SpanBridge::new(Some(tracer), root(), limits());
        let mut handles: Vec<u32> = Vec::new();
        let mut ids: Vec<u64> = Vec::new();
        let mut recorded = 0usize;
        for call in calls {
            let mut bridge = Bridge { table: &mut table, state: &mut state };
            let pick = |i: usize| -> u32 { handles.get(i).copied().unwrap_or(i as u32 + 1000) };
            let pick_id = |i: usize| -> u64 { ids.get(i).copied().unwrap_or(i as u64 + 1000) };
            let borrow = |i: usize| Resource::<GuestSpan>::new_borrow(pick(i));
            match call {
                TracerCall::Start(name, options) => {
                    if let Ok(span) = tracer::Host::start_span(&mut bridge, name, options) {
                        let rep = span.rep();
                        // Dropped past a limit, or sampled out under an unsampled parent.
                        if tracer::HostSpan::is_recording(&mut bridge, Resource::new_borrow(rep)).unwrap() {
                            recorded += 1;
                        }
                        handles.push(rep);
                    }
                }
                TracerCall::End(i) => { let _ = tracer::Host::end_span(&mut bridge, borrow(i)); }
                TracerCall::SetAttribute(i, k, v) => { let _ = tracer::HostSpan::set_attribute(&mut bridge, borrow(i), k, v); }
                TracerCall::SetAttributes(i, a) => { let _ = tracer::HostSpan::set_attributes(&mut bridge, borrow(i), a); }
                TracerCall::AddEvent(i, n, a) => { let _ = tracer::HostSpan::add_event(&mut bridge, borrow(i), n, a); }
                TracerCall::SetStatus(i, s) => { let _ = tracer::HostSpan::set_status(&mut bridge, borrow(i), s); }
                TracerCall::UpdateName(i, n) => { let _ = tracer::HostSpan::update_name(&mut bridge, borrow(i), n); }
                TracerCall::Context(i) => { let _ = tracer::HostSpan::context(&mut bridge, borrow(i)); }
                TracerCall::IsRecording(i) => { let _ = tracer::HostSpan::is_recording(&mut bridge, borrow(i)); }
                TracerCall::Drop(i) => {
                    let _ = tracer::HostSpan::drop(&mut bridge, Resource::new_own(pick(i)));
                }
                TracerCall::Finish(i, a) => {
                    let _ = tracer::Host::finish_span(&mut bridge, Resource::new_own(pick(i)), a);
                }
                TracerCall::Current => {
                    let cx = tracer::Host::current_span_context(&mut bridge).unwrap();
                    prop_assert_eq!(cx.trace_id.len(), 32);
                }
                TracerCall::StartEncoded(bytes) => {
                    if let Ok(id) = tracer::Host::start_span_encoded(&mut bridge, bytes) {
                        if bridge.state.is_recording(id) {
                            recorded += 1;
                        }
                        ids.push(id);
                    }
                }
                TracerCall::FinishEncoded(i, bytes) => {
                    let _ = tracer::Host::finish_span_encoded(&mut bridge, pick_id(i), bytes);
                }
                TracerCall::SpanHandle(i) => {
                    if let Ok(span) = tracer::Host::span_handle(&mut bridge, pick_id(i)) {
                        handles.push(span.rep());
                    }
                }
            }
        }
        state.finish(Some("the task ended"));
        let spans = exporter.get_finished_spans().unwrap();
        prop_assert_eq!(spans.len(), recorded, "every recorded span exported once");
        prop_assert!(state.started() as usize >= recorded);
        for span in &spans {
            assert_span_within_limits(span);
        }
    }

    #[test]
    fn wasi_otel_spans_never_panic_and_stay_within_limits(
        spans in prop::collection::vec(otel_span(), 0..6),
        start in otel_context(),
    ) {
        let (provider, exporter) = tracer_and_exporter();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "props");
        let mut table = ResourceTable::new();
        let mut state = SpanBridge::new(Some(tracer), root(), limits());
        let mut bridge = Bridge { table: &mut table, state: &mut state };
        wt::Host::on_start(&mut bridge, start).unwrap();
        let handed = spans.len();
        for span in spans {
            wt::Host::on_end(&mut bridge, span).unwrap();
        }
        let outer = wt::Host::outer_span_context(&mut bridge).unwrap();
        prop_assert_eq!(outer.span_id, root().span_id().to_string());
        let exported = exporter.get_finished_spans().unwrap();
        prop_assert!(exported.len() <= handed);
        for span in &exported {
            assert_span_within_limits(span);
            prop_assert!(span.end_time >= span.start_time);
        }
    }

    #[test]
    fn nested_task_calls_never_panic(calls in prop::collection::vec(tasks_call(), 0..16), depth in prop_oneof![0u32..3, Just(u32::MAX - 1), Just(u32::MAX)]) {
        let (provider, _exporter) = tracer_and_exporter();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "props");
        let mut table = ResourceTable::new();
        let bridge = SpanBridge::new(Some(tracer), root(), limits());
        let limits = Limits { nested_tasks: 6, nesting_depth: 4, ..Limits::default() };
        let context = NestedContext {
            submitter: Arc::new(Answering),
            task_id: "t-1".into(),
            component: Digest::of(b"cd"),
            component_name: "props.wasm".into(),
            digest_value: crate::attrs::text(Digest::of(b"cd").to_string()),
            depth,
            actor: Some("counter-self".into()),
        };
        let mut state = TasksState::new(Some(context), &limits);
        let deadline = Deadline::new(std::time::Duration::from_secs(5), "--timeout", None);
        let mut handles: Vec<u32> = Vec::new();
        let mut actors: Vec<u32> = Vec::new();
        let mut created = 0;
        for call in calls {
            let mut tasks = Tasks { table: &mut table, bridge: &bridge, state: &mut state, deadline: &deadline };
            let pick = |i: usize| handles.get(i).copied().unwrap_or(i as u32 + 1000);
            let actor = |i: usize| actors.get(i).copied().unwrap_or(i as u32 + 2000);
            let submitted = match call {
                TasksCall::CreateActor(d, c, a, o) => {
                    let made = match d {
                        Some(d) => wk::Host::create_actor_in(&mut tasks, d, c, a, o),
                        None => wk::Host::create_actor(&mut tasks, c, a, o),
                    };
                    if let Ok(Ok(made)) = made {
                        actors.push(made.rep());
                        created += 1;
                    }
                    None
                }
                TasksCall::FindActor(id) => {
                    if let Ok(Ok(found)) = wk::Host::actor(&mut tasks, id) {
                        actors.push(found.rep());
                    }
                    None
                }
                TasksCall::CallActor(i, m, a) => {
                    Some(wk::HostActorRef::call(&mut tasks, Resource::new_borrow(actor(i)), m, a))
                }
                TasksCall::KillActor(i) => {
                    let _ = wk::HostActorRef::kill(&mut tasks, Resource::new_borrow(actor(i)));
                    None
                }
                TasksCall::IdOfActor(i) => {
                    let _ = wk::HostActorRef::id(&mut tasks, Resource::new_borrow(actor(i)));
                    None
                }
                TasksCall::DropActor(i) => {
                    let _ = wk::HostActorRef::drop(&mut tasks, Resource::new_own(actor(i)));
                    None
                }
                TasksCall::Submit(f, a) => Some(wk::Host::submit(&mut tasks, f, a)),
                TasksCall::SubmitTo(d, f, a) => Some(wk::Host::submit_to(&mut tasks, d, f, a)),
                TasksCall::Get(i) => {
                    let _ = wk::HostTaskRef::get(&mut tasks, Resource::new_borrow(pick(i)));
                    None
                }
                TasksCall::Drop(i) => {
                    let _ = wk::HostTaskRef::drop(&mut tasks, Resource::new_own(pick(i)));
                    None
                }
            };
            if let Some(Ok(Ok(task))) = submitted {
                handles.push(task.rep());
            }
        }
        prop_assert!(handles.len() + created <= 6, "at most --max-nested-tasks submitted, actors' creations and calls among them");
        if depth >= 4 {
            prop_assert!(handles.is_empty() && created == 0, "nothing submitted past the depth limit");
        }
    }

    #[test]
    fn provider_calls_never_panic_and_refuse_what_policy_refuses(
        calls in prop::collection::vec(provider_call("/tmp/wtrace-props-spans".into()), 0..8),
    ) {
        let policy = ExportPolicy {
            span_dirs: vec!["/tmp/wtrace-props-spans".into()],
            otlp_hosts: Vec::new(),
        };
        let info = WorkerInfo { worker_id: "w-1".into(), node_id: "n-1".into(), job_id: "job".into() };
        // Without a Tokio runtime: gRPC exporters must be refused, not panic.
        let mut state = ProviderState::new(info, policy, None);
        let mut provider = Provider { state: &mut state };
        for call in calls {
            match call {
                ProviderCall::Worker => { wp::Host::current_worker(&mut provider).unwrap(); }
                ProviderCall::Resource(attributes) => wp::Host::set_resource(&mut provider, attributes).unwrap(),
                ProviderCall::Sampler(sampler) => wp::Host::set_sampler(&mut provider, sampler).unwrap(),
                ProviderCall::Processor(batch, exporter) => {
                    let refused_file = matches!(&exporter, wp::Exporter::File(f) if !f.path.starts_with("/tmp/wtrace-props-spans/") || f.path.contains(".."));
                    let processor = if batch { wp::Processor::Batch(exporter) } else { wp::Processor::Simple(exporter) };
                    let added = wp::Host::add_span_processor(&mut provider, processor).unwrap();
                    if refused_file {
                        prop_assert!(added.is_err());
                    }
                }
                ProviderCall::Instrumentation(name) => {
                    let known = name == "http-client";
                    prop_assert_eq!(wp::Host::enable_instrumentation(&mut provider, name).unwrap().is_ok(), known);
                }
            }
        }
        let telemetry = state.build(&Limits::default());
        telemetry.shutdown().ok();
    }

    #[test]
    fn http_grants_never_panic(host in text(), port in any::<u16>(), patterns in prop::collection::vec(text(), 0..4)) {
        let _ = crate::config::http_allowed(&patterns, &host, port);
        let allowed = crate::config::http_allowed(&["*".into()], &host, port);
        prop_assert!(allowed);
        prop_assert!(!crate::config::http_allowed(&[], &host, port));
    }
}

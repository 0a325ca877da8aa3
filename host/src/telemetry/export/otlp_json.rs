//! OTLP-JSON lines from SDK spans: opentelemetry-proto's messages, serialized
//! with its serde support, built so that a steady stream of batches costs no
//! allocation.
//!
//! opentelemetry-proto's `From<SpanData>` allocates every id, name, key and
//! value afresh, and dropping the message frees them all again: for wtrace's
//! task spans that is most of the cost of an export. [`LineEncoder`] keeps the
//! message of the last batch and overwrites its strings and vectors in place,
//! so the next batch of similar spans only copies bytes. The JSON is the same,
//! byte for byte, as converting with `From` (a test holds it to that).

use opentelemetry::trace::SpanId;
use opentelemetry::{KeyValue as SdkKeyValue, Value};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, SpanFlags, Status, span, status,
};
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::trace::SpanData;

/// Encodes batches of spans as OTLP-JSON `ExportTraceServiceRequest` lines,
/// reusing the previous batch's message and buffer.
#[derive(Debug, Default)]
pub struct LineEncoder {
    request: ExportTraceServiceRequest,
    /// Spans kept from a larger batch than the last, for the next one.
    spare: Vec<Span>,
    /// The scope the kept message's scope was made from.
    scope: Option<Box<opentelemetry::InstrumentationScope>>,
    line: Vec<u8>,
}

/// The most spans a kept message holds on to between batches.
const KEPT_SPANS: usize = 4096;
/// The most bytes the kept line buffer holds on to between batches.
const KEPT_LINE_BYTES: usize = 8 << 20;

impl LineEncoder {
    /// An encoder with nothing kept yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// One line (with its newline) for `batch` under `resource`. The slice
    /// is valid until the next call.
    pub fn encode(
        &mut self,
        batch: Vec<SpanData>,
        resource: &ResourceAttributesWithSchema,
    ) -> &[u8] {
        if self.line.capacity() > KEPT_LINE_BYTES {
            self.line = Vec::new();
        }
        self.line.clear();
        let one_scope = batch.first().is_some_and(|first| {
            batch
                .iter()
                .all(|s| s.instrumentation_scope == first.instrumentation_scope)
        });
        if one_scope {
            self.refill(batch, resource);
            write_json(&mut self.line, &self.request);
        } else {
            let request = ExportTraceServiceRequest {
                resource_spans: group_spans_by_resource_and_scope(batch, resource),
            };
            write_json(&mut self.line, &request);
        }
        &self.line
    }

    /// Makes the kept message one resource, one scope and `batch`'s spans.
    fn refill(&mut self, batch: Vec<SpanData>, resource: &ResourceAttributesWithSchema) {
        let scope = batch[0].instrumentation_scope.clone();
        let resource_spans = &mut self.request.resource_spans;
        resource_spans.truncate(1);
        if resource_spans.is_empty() {
            resource_spans.push(ResourceSpans::default());
        }
        let resource_spans = &mut resource_spans[0];
        // The resource and scope rarely change: compare rather than copy.
        if resource_spans
            .resource
            .as_ref()
            .is_none_or(|kept| kept.attributes != resource.attributes.0)
        {
            resource_spans.resource = Some(Resource {
                attributes: resource.attributes.0.clone(),
                dropped_attributes_count: 0,
                entity_refs: Vec::new(),
            });
        }
        set_str(
            &mut resource_spans.schema_url,
            resource.schema_url.as_deref().unwrap_or_default(),
        );
        let scope_spans = &mut resource_spans.scope_spans;
        scope_spans.truncate(1);
        if scope_spans.is_empty() {
            scope_spans.push(ScopeSpans::default());
        }
        let scope_spans = &mut scope_spans[0];
        if self.scope.as_deref() != Some(&scope) {
            scope_spans.scope = Some((&scope, None).into());
            self.scope = Some(Box::new(scope.clone()));
        }
        set_str(
            &mut scope_spans.schema_url,
            scope.schema_url().unwrap_or_default(),
        );
        let spans = &mut scope_spans.spans;
        if spans.len() > batch.len() {
            self.spare.extend(spans.drain(batch.len()..));
        }
        self.spare.truncate(KEPT_SPANS.saturating_sub(batch.len()));
        for (i, data) in batch.into_iter().enumerate() {
            match spans.get_mut(i) {
                Some(kept) => refill_span(kept, data),
                None => match self.spare.pop() {
                    Some(mut kept) => {
                        refill_span(&mut kept, data);
                        spans.push(kept);
                    }
                    None => spans.push(data.into()),
                },
            }
        }
    }
}

fn write_json(line: &mut Vec<u8>, request: &ExportTraceServiceRequest) {
    serde_json::to_writer(&mut *line, request).expect("OTLP messages serialize to JSON");
    line.push(b'\n');
}

/// Overwrites `span` with `data`, as `Span::from(data)` would build it.
fn refill_span(span: &mut Span, data: SpanData) {
    let cx = &data.span_context;
    set_bytes(&mut span.trace_id, &cx.trace_id().to_bytes());
    set_bytes(&mut span.span_id, &cx.span_id().to_bytes());
    set_str(&mut span.trace_state, &cx.trace_state().header());
    if data.parent_span_id == SpanId::INVALID {
        span.parent_span_id.clear();
    } else {
        set_bytes(&mut span.parent_span_id, &data.parent_span_id.to_bytes());
    }
    span.flags = span_flags(data.parent_span_is_remote, cx.trace_flags().to_u8());
    set_str(&mut span.name, &data.name);
    span.kind = span::SpanKind::from(data.span_kind) as i32;
    span.start_time_unix_nano = unix_nanos(data.start_time);
    span.end_time_unix_nano = unix_nanos(data.end_time);
    span.dropped_attributes_count = data.dropped_attributes_count;
    refill_attributes(&mut span.attributes, data.attributes);
    span.dropped_events_count = data.events.dropped_count;
    span.events.clear();
    span.events
        .extend(data.events.into_iter().map(|event| span::Event {
            time_unix_nano: unix_nanos(event.timestamp),
            name: event.name.into(),
            attributes: attributes(event.attributes),
            dropped_attributes_count: event.dropped_attributes_count,
        }));
    span.dropped_links_count = data.links.dropped_count;
    span.links.clear();
    span.links.extend(data.links.into_iter().map(Into::into));
    let status = span.status.get_or_insert_with(Status::default);
    status.code = status::StatusCode::from(&data.status) as i32;
    match &data.status {
        opentelemetry::trace::Status::Error { description } => {
            set_str(&mut status.message, description)
        }
        _ => status.message.clear(),
    }
}

/// Overwrites `kept` with `attributes`, reusing its keys and string values.
fn refill_attributes(kept: &mut Vec<KeyValue>, attributes: Vec<SdkKeyValue>) {
    kept.truncate(attributes.len());
    for (i, attribute) in attributes.into_iter().enumerate() {
        match kept.get_mut(i) {
            Some(slot) => {
                set_str(&mut slot.key, attribute.key.as_str());
                slot.key_strindex = 0;
                match (&mut slot.value, attribute.value) {
                    (
                        Some(AnyValue {
                            value: Some(any_value::Value::StringValue(text)),
                        }),
                        Value::String(value),
                    ) => set_str(text, value.as_str()),
                    (slot, value) => *slot = Some(value.into()),
                }
            }
            None => kept.push(key_value(attribute)),
        }
    }
}

fn attributes(attributes: Vec<SdkKeyValue>) -> Vec<KeyValue> {
    attributes.into_iter().map(key_value).collect()
}

fn key_value(attribute: SdkKeyValue) -> KeyValue {
    KeyValue {
        key: attribute.key.as_str().to_owned(),
        value: Some(attribute.value.into()),
        key_strindex: 0,
    }
}

/// The OTLP span flags: the W3C trace flags plus whether the parent is remote.
fn span_flags(parent_is_remote: bool, trace_flags: u8) -> u32 {
    let mut flags = u32::from(trace_flags) | SpanFlags::ContextHasIsRemoteMask as u32;
    if parent_is_remote {
        flags |= SpanFlags::ContextIsRemoteMask as u32;
    }
    flags
}

fn unix_nanos(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn set_str(kept: &mut String, value: &str) {
    kept.clear();
    kept.push_str(value);
}

fn set_bytes(kept: &mut Vec<u8>, value: &[u8]) {
    kept.clear();
    kept.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{
        Span as _, SpanContext, SpanKind, Status as SdkStatus, TraceContextExt as _, TraceFlags,
        TraceId, TraceState, Tracer as _, TracerProvider as _,
    };
    use opentelemetry::{Context, InstrumentationScope};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};

    /// What opentelemetry-proto's own conversion makes of `batch`.
    fn reference(batch: Vec<SpanData>, resource: &ResourceAttributesWithSchema) -> Vec<u8> {
        let request = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(batch, resource),
        };
        let mut line = serde_json::to_vec(&request).unwrap();
        line.push(b'\n');
        line
    }

    /// Spans of every shape: attribute types that change from span to span,
    /// events, links, error status, remote parents, trace state, two scopes.
    fn spans(round: usize) -> Vec<SpanData> {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let tracer = provider.tracer("wtrace");
        let remote = SpanContext::new(
            TraceId::from(0x0af7651916cd43dd8448eb211c80319c_u128),
            SpanId::from(0xb7ad6b7169203331_u64),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("vendor", "value")]).unwrap(),
        );
        for i in 0..(3 + round * 4) {
            let shape = i + round;
            let parent = if shape.is_multiple_of(3) {
                Context::new().with_remote_span_context(remote.clone())
            } else {
                Context::new()
            };
            let value = match shape % 4 {
                0 => Value::from(format!("text {i}")),
                1 => Value::from(i as i64),
                2 => Value::from(i % 2 == 0),
                _ => Value::Array(vec![1.5_f64, 2.5].into()),
            };
            let mut attributes = vec![
                SdkKeyValue::new("wtrace.task_id", format!("t-{round}-{i}")),
                SdkKeyValue::new("changing", value),
            ];
            attributes.truncate(1 + shape % 2);
            let mut span = tracer
                .span_builder(format!("span {round} {i}"))
                .with_kind(if shape.is_multiple_of(2) {
                    SpanKind::Consumer
                } else {
                    SpanKind::Internal
                })
                .with_attributes(attributes)
                .with_links(if shape % 4 == 1 {
                    vec![opentelemetry::trace::Link::with_context(remote.clone())]
                } else {
                    vec![]
                })
                .start_with_context(&tracer, &parent);
            if shape % 5 == 2 {
                span.add_event(
                    "exception",
                    vec![SdkKeyValue::new("exception.message", "boom")],
                );
                span.set_status(SdkStatus::error(format!("failed {i}")));
            } else if shape % 5 == 3 {
                span.set_status(SdkStatus::Ok);
            }
            span.end();
        }
        let mut spans = exporter.get_finished_spans().unwrap();
        if round == 2 {
            let other = provider.tracer_with_scope(
                InstrumentationScope::builder("guest")
                    .with_version("1.0")
                    .build(),
            );
            other.start("other scope").end();
            spans.extend(
                exporter
                    .get_finished_spans()
                    .unwrap()
                    .into_iter()
                    .skip(spans.len()),
            );
        }
        spans
    }

    #[test]
    fn reused_messages_encode_exactly_as_a_fresh_conversion() {
        let resource = |name: &'static str| -> ResourceAttributesWithSchema {
            (&opentelemetry_sdk::Resource::builder()
                .with_service_name(name)
                .build())
                .into()
        };
        let (first, second) = (resource("wtrace"), resource("renamed"));
        let mut encoder = LineEncoder::new();
        // Growing, mixed-scope, then shrinking batches through one encoder,
        // and a resource that changes on the way.
        for (i, round) in [0, 3, 2, 1, 0, 4].into_iter().enumerate() {
            let resource = if i < 4 { &first } else { &second };
            let batch = spans(round);
            let expected = reference(batch.clone(), resource);
            let got = encoder.encode(batch, resource).to_vec();
            assert_eq!(
                String::from_utf8(got).unwrap(),
                String::from_utf8(expected).unwrap(),
                "round {round}"
            );
        }
    }
}

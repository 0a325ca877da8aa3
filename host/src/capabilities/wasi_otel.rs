//! `wasi:otel/tracing@0.2.0-rc.2` on the span bridge, and `wasi:otel/logs`
//! on the task's log: guests instrumented for
//! the WASI OpenTelemetry proposal (the guest half of Spin's and wasmCloud's
//! support, the `opentelemetry-wasi` SDKs) run unchanged, and their spans
//! land in the task's trace.
//!
//! Such guests make spans themselves and hand each one to the host when it
//! ends. The bridge replays it through the process's tracer, keeping the
//! guest's ids and timestamps, so unlike in Spin the host's sampler and span
//! limits apply to these spans as to any other.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::logs::AnyValue;
use opentelemetry::trace::{
    Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{KeyValue, Value};
use wasmtime::component::{HasData, Linker};

use super::bindings::otel::{logs as wl, tracing as wt, types as wty};
use crate::capabilities::tracer::{Bridge, GuestSpanData, truncate};
use crate::sandbox::host_call;
use crate::telemetry::logs::{GuestRecord, any_value, severity_from_number};

impl wt::Host for Bridge<'_> {
    fn on_start(&mut self, _context: wt::SpanContext) -> wasmtime::Result<()> {
        let _call = host_call("wasi:otel/tracing#on-start");
        // Nothing to do until the span ends: it arrives whole in `on-end`.
        Ok(())
    }

    fn on_end(&mut self, span: wt::SpanData) -> wasmtime::Result<()> {
        let _call = host_call("wasi:otel/tracing#on-end");
        let max = self.state.attribute_value_length();
        if let Some(data) = span_data(span, max) {
            self.state.record_guest_span(data);
        }
        Ok(())
    }

    fn outer_span_context(&mut self) -> wasmtime::Result<wt::SpanContext> {
        let _call = host_call("wasi:otel/tracing#outer-span-context");
        Ok(to_wit(self.state.current()))
    }
}

impl wty::Host for Bridge<'_> {}

impl wl::Host for Bridge<'_> {
    fn on_emit(&mut self, data: wl::LogRecord) -> wasmtime::Result<()> {
        let _call = host_call("wasi:otel/logs#on-emit");
        let Some(log) = self.state.log().cloned() else {
            return Ok(());
        };
        let max = self.state.attribute_value_length();
        // The guest's own ids when it gave them, else its current span.
        let span = match (&data.trace_id, &data.span_id) {
            (Some(trace_id), Some(span_id)) => context(wt::SpanContext {
                trace_id: trace_id.clone(),
                span_id: span_id.clone(),
                trace_flags: data.trace_flags.unwrap_or(wt::TraceFlags::SAMPLED),
                is_remote: false,
                trace_state: Vec::new(),
            }),
            _ => None,
        };
        let severity = data
            .severity_number
            .and_then(severity_from_number)
            .or_else(|| data.severity_text.as_deref().and_then(severity_from_text));
        let mut attributes: Vec<_> = data
            .attributes
            .unwrap_or_default()
            .into_iter()
            .map(|kv| {
                let kv = attribute(kv, max);
                (kv.key, any_value(&kv.value))
            })
            .collect();
        if let Some(name) = data.event_name {
            attributes.push((
                "event.name".into(),
                AnyValue::String(truncate(name, max as usize).into()),
            ));
        }
        log.emit(GuestRecord {
            time: data.timestamp.map(time),
            severity,
            body: data.body.map(|json| {
                let value = attribute(
                    wty::KeyValue {
                        key: String::new(),
                        value: json,
                    },
                    max,
                )
                .value;
                any_value(&value)
            }),
            attributes,
            span,
        });
        Ok(())
    }
}

/// A severity text (`INFO`, `warn`, `Error2`) as the SDK's severity.
fn severity_from_text(text: &str) -> Option<opentelemetry::logs::Severity> {
    use opentelemetry::logs::Severity;
    let upper = text.trim().to_ascii_uppercase();
    let base = upper.trim_end_matches(|c: char| c.is_ascii_digit());
    Some(match base {
        "TRACE" => Severity::Trace,
        "DEBUG" => Severity::Debug,
        "INFO" => Severity::Info,
        "WARN" | "WARNING" => Severity::Warn,
        "ERROR" => Severity::Error,
        "FATAL" | "CRITICAL" => Severity::Fatal,
        _ => return None,
    })
}

struct OtelData;

impl HasData for OtelData {
    type Data<'a> = Bridge<'a>;
}

/// Adds `wasi:otel/tracing` and `logs` (and their `types`) to `linker`.
pub(crate) fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> Bridge<'_>,
) -> wasmtime::Result<()> {
    wt::add_to_linker::<T, OtelData>(linker, view)?;
    wl::add_to_linker::<T, OtelData>(linker, view)?;
    wty::add_to_linker::<T, OtelData>(linker, view)
}

fn to_wit(cx: &SpanContext) -> wt::SpanContext {
    wt::SpanContext {
        trace_id: cx.trace_id().to_string(),
        span_id: cx.span_id().to_string(),
        trace_flags: if cx.is_sampled() {
            wt::TraceFlags::SAMPLED
        } else {
            wt::TraceFlags::empty()
        },
        is_remote: cx.is_remote(),
        trace_state: cx
            .trace_state()
            .header()
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    }
}

fn context(cx: wt::SpanContext) -> Option<SpanContext> {
    let trace_id = TraceId::from_hex(&cx.trace_id).ok()?;
    let span_id = SpanId::from_hex(&cx.span_id).ok()?;
    let flags = if cx.trace_flags.contains(wt::TraceFlags::SAMPLED) {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let state = TraceState::from_key_value(cx.trace_state).unwrap_or_default();
    let cx = SpanContext::new(trace_id, span_id, flags, cx.is_remote, state);
    cx.is_valid().then_some(cx)
}

/// The latest time a guest may give: what OTLP's `u64` nanoseconds hold
/// (the year 2554). Later ones are clamped, not overflowed.
const LATEST_SECONDS: u64 = u64::MAX / 1_000_000_000 - 1;

fn time(datetime: super::bindings::wasi::clocks::wall_clock::Datetime) -> SystemTime {
    let seconds = datetime.seconds.min(LATEST_SECONDS);
    UNIX_EPOCH + Duration::new(seconds, datetime.nanoseconds.min(999_999_999))
}

/// A guest's span, checked and converted; none when its ids are invalid.
fn span_data(span: wt::SpanData, max: u32) -> Option<GuestSpanData> {
    let cx = context(span.span_context)?;
    let parent = SpanId::from_hex(&span.parent_span_id)
        .ok()
        .filter(|id| *id != SpanId::INVALID);
    let attributes = |list: Vec<wty::KeyValue>| -> Vec<KeyValue> {
        list.into_iter().map(|kv| attribute(kv, max)).collect()
    };
    let start = time(span.start_time);
    Some(GuestSpanData {
        context: cx,
        parent,
        kind: match span.span_kind {
            wt::SpanKind::Client => SpanKind::Client,
            wt::SpanKind::Server => SpanKind::Server,
            wt::SpanKind::Producer => SpanKind::Producer,
            wt::SpanKind::Consumer => SpanKind::Consumer,
            wt::SpanKind::Internal => SpanKind::Internal,
        },
        name: truncate(span.name, max as usize),
        start,
        end: time(span.end_time).max(start),
        attributes: attributes(span.attributes),
        events: span
            .events
            .into_iter()
            .map(|e| {
                opentelemetry::trace::Event::new(
                    truncate(e.name, max as usize),
                    time(e.time),
                    attributes(e.attributes),
                    0,
                )
            })
            .collect(),
        links: span
            .links
            .into_iter()
            .filter_map(|l| {
                Some(Link::new(
                    context(l.span_context)?,
                    attributes(l.attributes),
                    0,
                ))
            })
            .collect(),
        status: match span.status {
            wt::Status::Unset => Status::Unset,
            wt::Status::Ok => Status::Ok,
            wt::Status::Error(description) => Status::error(truncate(description, max as usize)),
        },
    })
}

/// An attribute whose value is JSON (an OpenTelemetry `AnyValue`).
fn attribute(kv: wty::KeyValue, max: u32) -> KeyValue {
    let max = max as usize;
    let text = |s: String| -> Value { truncate(s, max).into() };
    let value = match serde_json::from_str::<serde_json::Value>(&kv.value) {
        Ok(serde_json::Value::String(s)) => text(s),
        Ok(serde_json::Value::Bool(b)) => b.into(),
        Ok(serde_json::Value::Number(n)) => match n.as_i64() {
            Some(i) => i.into(),
            None => n.as_f64().unwrap_or_default().into(),
        },
        Ok(serde_json::Value::Array(items)) => {
            array(&items).unwrap_or_else(|| text(kv.value.clone()))
        }
        _ => text(kv.value.clone()),
    };
    KeyValue::new(truncate(kv.key, max), value)
}

/// A homogeneous JSON array as an attribute array.
fn array(items: &[serde_json::Value]) -> Option<Value> {
    use opentelemetry::Array;
    if items.iter().all(|v| v.is_boolean()) {
        Some(Value::Array(Array::Bool(
            items.iter().filter_map(|v| v.as_bool()).collect(),
        )))
    } else if items.iter().all(|v| v.is_i64()) {
        Some(Value::Array(Array::I64(
            items.iter().filter_map(|v| v.as_i64()).collect(),
        )))
    } else if items.iter().all(|v| v.is_number()) {
        Some(Value::Array(Array::F64(
            items.iter().filter_map(|v| v.as_f64()).collect(),
        )))
    } else if items.iter().all(|v| v.is_string()) {
        Some(Value::Array(Array::String(
            items
                .iter()
                .filter_map(|v| v.as_str().map(|s| s.to_owned().into()))
                .collect(),
        )))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_attribute_values_become_typed() {
        let kv = |value: &str| {
            attribute(
                wty::KeyValue {
                    key: "k".into(),
                    value: value.into(),
                },
                100,
            )
        };
        assert_eq!(kv("\"text\"").value, Value::from("text"));
        assert_eq!(kv("42").value, Value::I64(42));
        assert_eq!(kv("0.5").value, Value::F64(0.5));
        assert_eq!(kv("true").value, Value::Bool(true));
        assert_eq!(
            kv("[1,2]").value,
            Value::Array(opentelemetry::Array::I64(vec![1, 2]))
        );
        assert_eq!(kv("{\"a\":1}").value, Value::from("{\"a\":1}"));
        assert_eq!(kv("not json").value, Value::from("not json"));
    }
}

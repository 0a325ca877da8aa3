//! Test task built for the WASI OpenTelemetry proposal, not for wtrace: it
//! makes spans with the OpenTelemetry SDK inside the guest and hands them to
//! the host through `wasi:otel/tracing@0.2.0-rc.2`, the way the
//! `opentelemetry-wasi` guest SDK (Spin, wasmCloud) does. Its own sampler
//! records everything, so only the host's sampler can drop spans.

wit_bindgen::generate!({
    inline: "
        package tests:wasi-otel;
        world wasi-otel {
            import wasi:otel/tracing@0.2.0-rc.2;
            import wasi:otel/logs@0.2.0-rc.2;
            export traced: func(children: u32) -> u32;
            export logged: func() -> u32;
        }
    ",
    path: "../../../wit",
    generate_all,
});

use std::time::{Duration, UNIX_EPOCH};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, Span, SpanData, SpanProcessor};
use wasi::otel::logs as wl;
use wasi::otel::tracing as wt;
use wasi::otel::types as wty;

/// Hands every span to the host, as opentelemetry-wasi's processor does.
#[derive(Debug)]
struct WasiProcessor;

impl SpanProcessor for WasiProcessor {
    fn on_start(&self, span: &mut Span, _cx: &Context) {
        wt::on_start(&context_to_wit(opentelemetry::trace::Span::span_context(
            span,
        )));
    }

    fn on_end(&self, span: SpanData) {
        wt::on_end(&data_to_wit(span));
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

fn context_to_wit(cx: &SpanContext) -> wt::SpanContext {
    wt::SpanContext {
        trace_id: cx.trace_id().to_string(),
        span_id: cx.span_id().to_string(),
        trace_flags: if cx.is_sampled() {
            wt::TraceFlags::SAMPLED
        } else {
            wt::TraceFlags::empty()
        },
        is_remote: cx.is_remote(),
        trace_state: Vec::new(),
    }
}

fn context_from_wit(cx: wt::SpanContext) -> SpanContext {
    SpanContext::new(
        TraceId::from_hex(&cx.trace_id).unwrap_or(TraceId::INVALID),
        SpanId::from_hex(&cx.span_id).unwrap_or(SpanId::INVALID),
        if cx.trace_flags.contains(wt::TraceFlags::SAMPLED) {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        },
        true,
        TraceState::default(),
    )
}

fn datetime(t: std::time::SystemTime) -> wasi::clocks::wall_clock::Datetime {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    wasi::clocks::wall_clock::Datetime {
        seconds: d.as_secs(),
        nanoseconds: d.subsec_nanos(),
    }
}

fn kv_to_wit(kv: &KeyValue) -> wty::KeyValue {
    // Values travel JSON-encoded.
    let value = match &kv.value {
        Value::Bool(b) => b.to_string(),
        Value::I64(i) => i.to_string(),
        Value::F64(f) => f.to_string(),
        Value::String(s) => format!("{:?}", s.as_str()),
        other => format!("{:?}", other.to_string()),
    };
    wty::KeyValue {
        key: kv.key.to_string(),
        value,
    }
}

fn data_to_wit(span: SpanData) -> wt::SpanData {
    wt::SpanData {
        span_context: context_to_wit(&span.span_context),
        parent_span_id: if span.parent_span_id == SpanId::INVALID {
            String::new()
        } else {
            span.parent_span_id.to_string()
        },
        span_kind: match span.span_kind {
            SpanKind::Client => wt::SpanKind::Client,
            SpanKind::Server => wt::SpanKind::Server,
            SpanKind::Producer => wt::SpanKind::Producer,
            SpanKind::Consumer => wt::SpanKind::Consumer,
            SpanKind::Internal => wt::SpanKind::Internal,
        },
        name: span.name.to_string(),
        start_time: datetime(span.start_time),
        end_time: datetime(span.end_time),
        attributes: span.attributes.iter().map(kv_to_wit).collect(),
        events: span
            .events
            .iter()
            .map(|e| wt::Event {
                name: e.name.to_string(),
                time: datetime(e.timestamp),
                attributes: e.attributes.iter().map(kv_to_wit).collect(),
            })
            .collect(),
        links: Vec::new(),
        status: match &span.status {
            Status::Unset => wt::Status::Unset,
            Status::Ok => wt::Status::Ok,
            Status::Error { description } => wt::Status::Error(description.to_string()),
        },
        instrumentation_scope: wty::InstrumentationScope {
            name: span.instrumentation_scope.name().to_owned(),
            version: span.instrumentation_scope.version().map(str::to_owned),
            schema_url: None,
            attributes: Vec::new(),
        },
        dropped_attributes: span.dropped_attributes_count,
        dropped_events: span.events.dropped_count,
        dropped_links: span.links.dropped_count,
    }
}

/// A tracer whose spans go to the host, and the host's current span to
/// parent them under, as the `opentelemetry-wasi` SDK sets them up.
fn guest_tracer() -> (
    SdkTracerProvider,
    opentelemetry_sdk::trace::SdkTracer,
    Context,
) {
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOn)
        .with_span_processor(WasiProcessor)
        .build();
    let tracer = provider.tracer("wasi-otel-guest");
    let outer = Context::new().with_remote_span_context(context_from_wit(wt::outer_span_context()));
    (provider, tracer, outer)
}

struct Task;

impl Guest for Task {
    fn traced(children: u32) -> u32 {
        let (_provider, tracer, outer) = guest_tracer();
        let span = tracer
            .span_builder("wasi-otel-outer")
            .with_attributes([KeyValue::new("answer", 42), KeyValue::new("mood", "fine")])
            .start_with_context(&tracer, &outer);
        let cx = outer.with_span(span);
        for i in 0..children {
            let mut child = tracer
                .span_builder("wasi-otel-child")
                .with_kind(SpanKind::Client)
                .with_attributes([KeyValue::new("index", i64::from(i))])
                .start_with_context(&tracer, &cx);
            opentelemetry::trace::Span::add_event(
                &mut child,
                "halfway",
                vec![KeyValue::new("ok", true)],
            );
            opentelemetry::trace::Span::end(&mut child);
        }
        cx.span().end();
        children
    }

    /// A span, and two records through `wasi:otel/logs`: one carrying that
    /// span's ids, one carrying none.
    fn logged() -> u32 {
        let (_provider, tracer, outer) = guest_tracer();
        let span = tracer.start_with_context("wasi-otel-logging", &outer);
        let ids = context_to_wit(opentelemetry::trace::Span::span_context(&span));
        wl::on_emit(&wl::LogRecord {
            timestamp: None,
            observed_timestamp: None,
            severity_text: None,
            severity_number: Some(17),
            body: Some("\"it broke\"".into()),
            attributes: Some(vec![wty::KeyValue {
                key: "code".into(),
                value: "7".into(),
            }]),
            event_name: Some("failure".into()),
            resource: None,
            instrumentation_scope: None,
            trace_id: Some(ids.trace_id),
            span_id: Some(ids.span_id),
            trace_flags: Some(ids.trace_flags),
        });
        wl::on_emit(&wl::LogRecord {
            timestamp: None,
            observed_timestamp: None,
            severity_text: Some("debug".into()),
            severity_number: None,
            body: Some("\"no ids\"".into()),
            attributes: None,
            event_name: None,
            resource: None,
            instrumentation_scope: None,
            trace_id: None,
            span_id: None,
            trace_flags: None,
        });
        drop(span);
        1
    }
}

export!(Task);

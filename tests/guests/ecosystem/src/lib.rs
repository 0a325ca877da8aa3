//! Test task: libraries instrumented with `tracing`, and code written
//! against the OpenTelemetry API, both making spans inside a guest.

wit_bindgen::generate!({
    inline: "
        package tests:ecosystem;
        world ecosystem {
            export with-tracing: func() -> u32;
            export with-otel-api: func() -> u32;
        }
    ",
});

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt as _, Tracer as _};

/// A "library" instrumented with `tracing`.
mod library {
    #[tracing::instrument(fields(rows = 3))]
    pub fn load(table: &str) -> u32 {
        tracing::info!(table, "loaded");
        parse()
    }

    #[tracing::instrument]
    fn parse() -> u32 {
        3
    }
}

struct Ecosystem;

impl Guest for Ecosystem {
    fn with_tracing() -> u32 {
        wtrace_guest::tracing_layer::init();
        let outer = tracing::info_span!("outer", job = "nightly");
        let _entered = outer.enter();
        library::load("users")
    }

    fn with_otel_api() -> u32 {
        let tracer = wtrace_guest::otel::Tracer;
        tracer.in_span("otel-outer", |cx| {
            cx.span().set_attribute(KeyValue::new("answer", 42));
            let mut inner = tracer
                .span_builder("otel-inner")
                .with_kind(SpanKind::Client)
                .start(&tracer);
            inner.add_event("sent", vec![KeyValue::new("bytes", 128)]);
            inner.set_status(opentelemetry::trace::Status::error("upstream said no"));
            inner.end();
            7
        })
    }
}

export!(Ecosystem);

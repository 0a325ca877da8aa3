//! The OpenTelemetry API inside a guest: code written against
//! `opentelemetry::trace::Tracer` makes wtrace spans (feature `opentelemetry`).
//!
//! ```no_run
//! use opentelemetry::trace::{Span as _, Tracer as _};
//! use opentelemetry::KeyValue;
//!
//! let tracer = wtrace_guest::otel::Tracer;
//! tracer.in_span("load", |cx| {
//!     use opentelemetry::trace::TraceContextExt as _;
//!     cx.span().set_attribute(KeyValue::new("rows", 42));
//!     let mut child = tracer.start("parse"); // a child of "load"
//!     child.end();
//! });
//! ```
//!
//! Spans go through the host's tracer provider, so the tracing hook's sampler,
//! limits and exporters apply; explicit timestamps are not supported (the
//! host stamps starts and ends).

use std::borrow::Cow;
use std::time::SystemTime;

use opentelemetry::trace::{
    SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState,
};
use opentelemetry::{Array, Context, InstrumentationScope, KeyValue, Value};

use crate::wit::wtrace::tracing::tracer as raw;
use crate::{
    SpanContext as WitSpanContext, SpanKind as WitKind, Status as WitStatus, Value as WitValue,
};

/// A tracer whose spans are wtrace spans. A unit type: make as many as you like.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tracer;

/// The provider of [`Tracer`], for code that asks a provider for a tracer.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracerProvider;

impl opentelemetry::trace::TracerProvider for TracerProvider {
    type Tracer = Tracer;

    fn tracer_with_scope(&self, _scope: InstrumentationScope) -> Tracer {
        Tracer
    }
}

/// A wtrace span seen through the OpenTelemetry API. Ends when dropped.
#[derive(Debug)]
pub struct Span {
    inner: Option<crate::Open>,
    context: SpanContext,
}

impl opentelemetry::trace::Tracer for Tracer {
    type Span = Span;

    fn build_with_context(&self, builder: SpanBuilder, parent_cx: &Context) -> Span {
        let parent = parent_cx
            .has_active_span()
            .then(|| parent_cx.span().span_context().clone())
            .filter(SpanContext::is_valid)
            .map(|cx| to_wit_context(&cx));
        let options = raw::SpanOptions {
            kind: builder.span_kind.map(|kind| match kind {
                SpanKind::Client => WitKind::Client,
                SpanKind::Server => WitKind::Server,
                SpanKind::Producer => WitKind::Producer,
                SpanKind::Consumer => WitKind::Consumer,
                SpanKind::Internal => WitKind::Internal,
            }),
            attributes: builder
                .attributes
                .unwrap_or_default()
                .into_iter()
                .map(to_wit_kv)
                .collect(),
            links: builder
                .links
                .unwrap_or_default()
                .iter()
                .map(|link| to_wit_context(&link.span_context))
                .collect(),
            parent,
        };
        let inner = crate::start_raw(&builder.name, &options);
        let context = from_wit_context(&inner.raw().context());
        Span {
            inner: Some(inner),
            context,
        }
    }
}

impl opentelemetry::trace::Span for Span {
    fn add_event_with_timestamp<T>(
        &mut self,
        name: T,
        _timestamp: SystemTime,
        attributes: Vec<KeyValue>,
    ) where
        T: Into<Cow<'static, str>>,
    {
        if let Some(span) = &self.inner {
            let attributes: Vec<_> = attributes.into_iter().map(to_wit_kv).collect();
            span.raw().add_event(&name.into(), &attributes);
        }
    }

    fn span_context(&self) -> &SpanContext {
        &self.context
    }

    fn is_recording(&self) -> bool {
        self.inner.as_ref().is_some_and(|s| s.raw().is_recording())
    }

    fn set_attribute(&mut self, attribute: KeyValue) {
        if let Some(span) = &self.inner {
            let kv = to_wit_kv(attribute);
            span.raw().set_attribute(&kv.key, &kv.value);
        }
    }

    fn set_status(&mut self, status: Status) {
        if let Some(span) = &self.inner {
            span.raw().set_status(&match status {
                Status::Unset => WitStatus::Unset,
                Status::Ok => WitStatus::Ok,
                Status::Error { description } => WitStatus::Error(description.into_owned()),
            });
        }
    }

    fn update_name<T>(&mut self, new_name: T)
    where
        T: Into<Cow<'static, str>>,
    {
        if let Some(span) = &self.inner {
            span.raw().update_name(&new_name.into());
        }
    }

    fn add_link(&mut self, _span_context: SpanContext, _attributes: Vec<KeyValue>) {
        // Links are set when a span starts (SpanBuilder::with_links).
    }

    fn end_with_timestamp(&mut self, _timestamp: SystemTime) {
        if let Some(span) = self.inner.take() {
            let _ = span.finish(&[]);
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        opentelemetry::trace::Span::end(self);
    }
}

fn to_wit_value(value: Value) -> WitValue {
    match value {
        Value::Bool(b) => WitValue::Bool(b),
        Value::I64(i) => WitValue::S64(i),
        Value::F64(f) => WitValue::F64(f),
        Value::String(s) => WitValue::String(s.to_string()),
        Value::Array(Array::Bool(v)) => WitValue::BoolList(v),
        Value::Array(Array::I64(v)) => WitValue::S64List(v),
        Value::Array(Array::F64(v)) => WitValue::F64List(v),
        Value::Array(Array::String(v)) => {
            WitValue::StringList(v.into_iter().map(|s| s.to_string()).collect())
        }
        other => WitValue::String(other.to_string()),
    }
}

fn to_wit_kv(kv: KeyValue) -> crate::KeyValue {
    crate::KeyValue {
        key: kv.key.to_string(),
        value: to_wit_value(kv.value),
    }
}

fn to_wit_context(cx: &SpanContext) -> WitSpanContext {
    WitSpanContext {
        trace_id: cx.trace_id().to_string(),
        span_id: cx.span_id().to_string(),
        sampled: cx.is_sampled(),
        is_remote: cx.is_remote(),
        trace_state: Vec::new(),
    }
}

fn from_wit_context(cx: &WitSpanContext) -> SpanContext {
    SpanContext::new(
        TraceId::from_hex(&cx.trace_id).unwrap_or(TraceId::INVALID),
        SpanId::from_hex(&cx.span_id).unwrap_or(SpanId::INVALID),
        if cx.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        },
        cx.is_remote,
        TraceState::default(),
    )
}

//! Libraries instrumented with the `tracing` crate make wtrace spans inside a
//! guest (feature `tracing`): the counterpart of Ray's "additional instruments".
//!
//! ```no_run
//! wtrace_guest::tracing_layer::init();
//!
//! let span = tracing::info_span!("load", rows = 42);
//! let _entered = span.enter();
//! tracing::info!(table = "users", "loaded");     // a log record in "load"
//! ```
//!
//! A `tracing` span becomes a wtrace span when created (its fields become
//! attributes, its parent the `tracing` parent, else the current wtrace span)
//! and ends when it closes. An event becomes a log record joined to its span
//! (else the current wtrace span): the message its body, the level its
//! severity, the fields its attributes (OpenTelemetry now records events as
//! logs rather than span events).

use std::fmt::Debug;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;

use crate::wit::wtrace::tracing::logs;
use crate::wit::wtrace::tracing::tracer as raw;
use crate::{KeyValue, Value, kv};

/// Installs [`WtraceLayer`] as the global `tracing` subscriber; a no-op if
/// one is already installed.
pub fn init() {
    let _ =
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(WtraceLayer));
}

/// The layer: add it to a `tracing_subscriber::registry()`.
#[derive(Debug, Default, Clone, Copy)]
pub struct WtraceLayer;

/// The wtrace span behind a `tracing` span.
struct Handle(crate::Open);

// SAFETY: a wasm guest has one thread; the handle never crosses threads.
#[allow(unsafe_code)]
unsafe impl Send for Handle {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl Sync for Handle {}

/// Collects `tracing` fields as attributes.
#[derive(Default)]
struct Fields {
    attributes: Vec<KeyValue>,
    message: Option<String>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.push(field, Value::String(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, Value::String(value.to_owned()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, Value::S64(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, Value::S64(i64::try_from(value).unwrap_or(i64::MAX)));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, Value::F64(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, Value::Bool(value));
    }
}

impl Fields {
    fn push(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                Value::String(s) => s,
                other => format!("{other:?}"),
            });
        } else {
            self.attributes.push(kv(field.name(), value));
        }
    }
}

impl<S> tracing_subscriber::Layer<S> for WtraceLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let parent = span.parent().and_then(|parent| {
            parent
                .extensions()
                .get::<Handle>()
                .map(|h| h.0.raw().context())
        });
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let handle = crate::start_raw(
            span.name(),
            &raw::SpanOptions {
                kind: None,
                attributes: fields.attributes,
                links: Vec::new(),
                parent,
            },
        );
        span.extensions_mut().insert(Handle(handle));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut fields = Fields::default();
        values.record(&mut fields);
        if let Some(handle) = span.extensions().get::<Handle>() {
            handle.0.raw().set_attributes(&fields.attributes);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let metadata = event.metadata();
        fields
            .attributes
            .push(kv("code.namespace", metadata.target().to_owned()));
        let record = logs::LogRecord {
            severity: match *metadata.level() {
                tracing::Level::TRACE => logs::Severity::Trace,
                tracing::Level::DEBUG => logs::Severity::Debug,
                tracing::Level::INFO => logs::Severity::Info,
                tracing::Level::WARN => logs::Severity::Warn,
                tracing::Level::ERROR => logs::Severity::Error,
            },
            body: fields.message.unwrap_or_else(|| metadata.name().to_owned()),
            attributes: fields.attributes,
        };
        let span = ctx.event_span(event);
        let extensions = span.as_ref().map(|span| span.extensions());
        let handle = extensions
            .as_ref()
            .and_then(|extensions| extensions.get::<Handle>());
        logs::emit(&record, handle.map(|handle| handle.0.raw()));
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else {
            return;
        };
        if let Some(handle) = span.extensions_mut().remove::<Handle>() {
            let _ = handle.0.finish(&[]);
        }
    }
}

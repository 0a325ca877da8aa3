//! Write [wtrace](https://github.com/wtrace) tracing hooks and traced tasks in Rust.
//!
//! A task is a WebAssembly component whose exports wtrace runs on its workers;
//! every run is traced as a `<function> execute` span. Inside a task, spans
//! opened with this crate become real OpenTelemetry spans of the worker's
//! tracer provider, children of the current span:
//!
//! ```no_run
//! use wtrace_guest::{in_span, span};
//!
//! fn my_func() -> u32 {
//!     // A span that ends when the guard drops.
//!     let outer = span("load");
//!     outer.set_attribute("rows", 42);
//!
//!     // A span around a closure, nested in `load`.
//!     in_span("foo", |span| {
//!         span.add_event("started", &[]);
//!         1
//!     })
//! }
//! ```
//!
//! A tracing startup hook configures where spans go; see [`hook`] and
//! [`export_hook!`].
//!
//! Without a tracing hook every call here is a cheap no-op on the host.

#![deny(missing_docs)]

use std::fmt;

#[doc(hidden)]
pub mod wit {
    wit_bindgen::generate!({
        inline: "
            package wtrace:guest-sdk;
            world imports {
                import wtrace:tracing/tracer@0.1.0;
                import wtrace:tracing/provider@0.1.0;
                import wtrace:tracing/tasks@0.1.0;
                import wtrace:tracing/logs@0.1.0;
            }
        ",
        path: "../../wit",
        generate_all,
    });
}

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;
}

pub mod encoded;
pub mod hook;
pub mod logs;
#[cfg(feature = "opentelemetry")]
pub mod otel;
pub mod tasks;
#[cfg(feature = "tracing")]
pub mod tracing_layer;

use wit::wtrace::tracing::tracer as raw;
pub use wit::wtrace::tracing::tracer::SpanOptions;
pub use wit::wtrace::tracing::types::{KeyValue, SpanContext, SpanKind, Status, Value};

/// Starts a span named `name`, a child of the current span, which becomes the
/// current span until the returned guard ends it (on drop or by [`Span::end`]).
pub fn span(name: &str) -> Span {
    SpanBuilder::new(name).start()
}

/// Runs `f` inside a span named `name`, ending the span when `f` returns.
///
/// ```no_run
/// let sum = wtrace_guest::in_span("sum", |span| {
///     span.set_attribute("items", 3);
///     1 + 2 + 3
/// });
/// ```
pub fn in_span<T>(name: &str, f: impl FnOnce(&Span) -> T) -> T {
    let span = span(name);
    f(&span)
}

/// The current span's context: the innermost open span, else the task's
/// `execute` span. Its ids are all zeros when nothing is traced.
pub fn current_span_context() -> SpanContext {
    raw::current_span_context()
}

/// Builds a [`KeyValue`] attribute.
pub fn kv(key: impl Into<String>, value: impl Into<Value>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value.into(),
    }
}

/// Options for a span before it starts: kind, attributes, links, parent.
///
/// The description is written in the host's compact encoding as it is
/// built, into a buffer kept from span to span: starting a span allocates
/// nothing in steady state.
#[must_use = "a span builder does nothing until `start` is called"]
pub struct SpanBuilder {
    /// Kind, name, attribute count (set at start) and attributes.
    encoded: Vec<u8>,
    attributes: u32,
    links: Vec<SpanContext>,
    parent: Option<SpanContext>,
}

thread_local! {
    /// A spare encoding buffer, taken by a builder and given back at start.
    static SPARE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Where the attribute count sits: after the kind byte and the name.
fn count_at(encoded: &[u8]) -> usize {
    let name = u32::from_le_bytes(encoded[1..5].try_into().expect("a name length")) as usize;
    5 + name
}

impl SpanBuilder {
    /// A builder for a span named `name`.
    pub fn new(name: impl AsRef<str>) -> Self {
        let mut encoded = SPARE.take();
        encoded.clear();
        encoded::head(&mut encoded, None, name.as_ref());
        encoded::put(&mut encoded, &[0; 4]);
        Self {
            encoded,
            attributes: 0,
            links: Vec::new(),
            parent: None,
        }
    }

    /// Sets the span kind (default internal).
    pub fn kind(mut self, kind: SpanKind) -> Self {
        self.encoded[0] = encoded::kind(Some(kind));
        self
    }

    /// Adds an attribute known at start; the sampler sees it.
    pub fn attribute(mut self, key: &str, value: impl encoded::AttributeValue) -> Self {
        encoded::attribute(&mut self.encoded, key, &value);
        self.attributes += 1;
        self
    }

    /// Links the span to another span.
    pub fn link(mut self, context: SpanContext) -> Self {
        self.links.push(context);
        self
    }

    /// Makes `parent` the parent instead of the current span.
    pub fn parent(mut self, parent: SpanContext) -> Self {
        self.parent = Some(parent);
        self
    }

    /// Starts the span; it becomes the current span.
    pub fn start(mut self) -> Span {
        let at = count_at(&self.encoded);
        self.encoded[at..at + 4].copy_from_slice(&self.attributes.to_le_bytes());
        encoded::tail(&mut self.encoded, &self.links, self.parent.as_ref());
        let id = raw::start_span_encoded(&self.encoded);
        SPARE.set(std::mem::take(&mut self.encoded));
        Span {
            inner: Some(Open::new(id)),
        }
    }
}

impl fmt::Debug for SpanBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpanBuilder")
            .field("attributes", &self.attributes)
            .field("links", &self.links.len())
            .finish_non_exhaustive()
    }
}

/// Starts a span described by typed options, through the encoded call.
#[cfg(any(feature = "opentelemetry", feature = "tracing"))]
pub(crate) fn start_raw(name: &str, options: &SpanOptions) -> Open {
    let mut encoded = SPARE.take();
    encoded.clear();
    encoded::start(
        &mut encoded,
        options.kind,
        name,
        &options.attributes,
        &options.links,
        options.parent.as_ref(),
    );
    let id = raw::start_span_encoded(&encoded);
    SPARE.set(encoded);
    Open::new(id)
}

/// A span this guest started, known by its number; the handle the methods
/// of `span` need is asked for the first time one is called, so a span
/// that is only started and ended costs two host calls and no handle.
pub(crate) struct Open {
    id: u64,
    handle: std::sync::OnceLock<raw::Span>,
}

impl fmt::Debug for Open {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Open").field("id", &self.id).finish()
    }
}

impl Open {
    fn new(id: u64) -> Self {
        Self {
            id,
            handle: std::sync::OnceLock::new(),
        }
    }

    /// The span's handle.
    pub(crate) fn raw(&self) -> &raw::Span {
        self.handle.get_or_init(|| raw::span_handle(self.id))
    }

    /// Ends the span with its last attributes, in one host call.
    pub(crate) fn finish(self, attributes: &[KeyValue]) -> Result<(), String> {
        if let Some(handle) = self.handle.into_inner() {
            // Ends the span and releases the handle.
            return raw::finish_span(handle, attributes);
        }
        if attributes.is_empty() {
            // No bytes: no attributes, and nothing for the host to copy.
            return raw::finish_span_encoded(self.id, &[]);
        }
        let mut encoded = Vec::new();
        encoded::attributes(&mut encoded, attributes);
        raw::finish_span_encoded(self.id, &encoded)
    }
}

/// An open span. It ends when dropped, or by [`Span::end`].
pub struct Span {
    inner: Option<Open>,
}

impl Span {
    pub(crate) fn raw(&self) -> &raw::Span {
        self.inner
            .as_ref()
            .expect("span is open until dropped")
            .raw()
    }

    /// Sets one attribute.
    pub fn set_attribute(&self, key: &str, value: impl Into<Value>) {
        self.raw().set_attribute(key, &value.into());
    }

    /// Sets several attributes.
    pub fn set_attributes(&self, attributes: &[KeyValue]) {
        self.raw().set_attributes(attributes);
    }

    /// Records an event now.
    pub fn add_event(&self, name: &str, attributes: &[KeyValue]) {
        self.raw().add_event(name, attributes);
    }

    /// Sets the status.
    pub fn set_status(&self, status: Status) {
        self.raw().set_status(&status);
    }

    /// Marks the span failed with `message`.
    pub fn set_error(&self, message: impl fmt::Display) {
        self.set_status(Status::Error(message.to_string()));
    }

    /// Renames the span.
    pub fn update_name(&self, name: &str) {
        self.raw().update_name(name);
    }

    /// This span's context, for links or to hand to another process.
    pub fn context(&self) -> SpanContext {
        self.raw().context()
    }

    /// Whether the span is recorded (false when sampled out or untraced).
    pub fn is_recording(&self) -> bool {
        self.raw().is_recording()
    }

    /// Ends the span now. The span that was current before it is current again.
    pub fn end(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if let Some(span) = self.inner.take() {
            // One host call ends the span and releases its handle. It only
            // fails when the span was already ended, which a guard prevents.
            let _ = span.finish(&[]);
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.finish();
    }
}

impl fmt::Debug for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Span")
            .field("context", &self.context())
            .finish()
    }
}

impl SpanContext {
    /// Whether this context names a span (its ids are not all zeros).
    pub fn is_valid(&self) -> bool {
        self.trace_id.bytes().any(|b| b != b'0') && self.span_id.bytes().any(|b| b != b'0')
    }

    /// This context as a W3C `traceparent` header value.
    pub fn traceparent(&self) -> String {
        let flags = if self.sampled { "01" } else { "00" };
        format!("00-{}-{}-{flags}", self.trace_id, self.span_id)
    }
}

macro_rules! value_from {
    ($($t:ty => |$v:ident| $e:expr),* $(,)?) => {
        $(impl From<$t> for Value {
            fn from($v: $t) -> Self {
                $e
            }
        })*
    };
}

value_from! {
    &str => |v| Value::String(v.to_owned()),
    String => |v| Value::String(v),
    &String => |v| Value::String(v.clone()),
    bool => |v| Value::Bool(v),
    i64 => |v| Value::S64(v),
    i32 => |v| Value::S64(v.into()),
    u32 => |v| Value::S64(v.into()),
    usize => |v| Value::S64(i64::try_from(v).unwrap_or(i64::MAX)),
    u64 => |v| Value::S64(i64::try_from(v).unwrap_or(i64::MAX)),
    f64 => |v| Value::F64(v),
    Vec<String> => |v| Value::StringList(v),
    &[&str] => |v| Value::StringList(v.iter().map(|s| (*s).to_owned()).collect()),
    Vec<i64> => |v| Value::S64List(v),
    Vec<f64> => |v| Value::F64List(v),
    Vec<bool> => |v| Value::BoolList(v),
}

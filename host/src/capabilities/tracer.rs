//! The span bridge: the host side of `wtrace:tracing/tracer`.
//!
//! Guests start and end spans through handles; the bridge turns them into
//! spans of the process's OpenTelemetry tracer, parented under the guest's
//! current span or else the task's `execute` span, so the tracer provider's
//! sampler, limits and processors apply to them.
//!
//! The bridge never loses a span a guest started: a span whose handle is
//! dropped before it ended, or that is still open when the task returns or
//! traps, is ended by the host and marked `wtrace.unended = true`. A span that
//! ends while a child is open leaves that child marked
//! `wtrace.outlived_parent = true`. Ending a span twice is an error returned to
//! the guest. Past [`BridgeLimits`], new spans are not recorded but counted in
//! [`SpanBridge::dropped`].

use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags,
    TraceId, TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, Span as SdkSpan};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use std::borrow::Cow;
use std::sync::Arc;

use super::bindings::{tracer, types};
use super::span_encoding;
use crate::config::Limits;
use crate::sandbox::host_call;
use crate::telemetry::context::context_with_parent;
use crate::telemetry::logs::TaskLog;

/// Live span handles a guest may hold at once before the host traps it: a
/// guard against a guest exhausting host memory with handles.
const MAX_LIVE_HANDLES: usize = 100_000;

/// A span a guest started, held in the store's resource table.
#[derive(Debug)]
pub struct GuestSpan {
    /// The SDK span while it is recorded and open.
    span: Option<SdkSpan>,
    /// The span's identity (its parent's, when it was not recorded).
    context: SpanContext,
    /// The id of the span it was started under.
    parent: SpanId,
    name: Cow<'static, str>,
    ended: bool,
}

impl GuestSpan {
    /// The span's identity (its parent's, when it was not recorded).
    pub(crate) fn context(&self) -> &SpanContext {
        &self.context
    }
}

/// Span-count limits the bridge applies to one task.
#[derive(Debug, Clone, Copy)]
pub struct BridgeLimits {
    /// Spans a task may start; later ones are dropped.
    pub spans_per_task: u32,
    /// Spans a task may have open at once; later ones are dropped.
    pub open_spans: u32,
    /// Longest attribute string value, in bytes; longer ones are truncated.
    pub attribute_value_length: u32,
}

impl From<&Limits> for BridgeLimits {
    fn from(limits: &Limits) -> Self {
        Self {
            spans_per_task: limits.spans_per_task,
            open_spans: limits.open_spans,
            attribute_value_length: limits.attribute_value_length,
        }
    }
}

/// The bridge's state for one store (one task, or one hook run).
#[derive(Debug)]
pub struct SpanBridge {
    tracer: Option<SdkTracer>,
    root: SpanContext,
    /// Handles (reps) of open spans in start order; the last is current.
    open: Vec<u32>,
    live_handles: usize,
    limits: BridgeLimits,
    started: u32,
    dropped: u32,
    /// The parent context of the last span started: siblings (a loop of
    /// spans under one parent) share it rather than each building its own.
    parent_cx: Option<Context>,
    /// Texts of encoded spans decoded lately.
    recent: span_encoding::Recent,
    /// Where the task's log records go, told which span is current.
    log: Option<Arc<TaskLog>>,
}

impl SpanBridge {
    /// A bridge whose spans go to `tracer` (none: every call is a no-op) and
    /// whose root spans are children of `root` (the task's execute span).
    pub fn new(tracer: Option<SdkTracer>, root: SpanContext, limits: BridgeLimits) -> Self {
        Self {
            tracer,
            root,
            open: Vec::new(),
            live_handles: 0,
            limits,
            started: 0,
            dropped: 0,
            parent_cx: None,
            recent: span_encoding::Recent::default(),
            log: None,
        }
    }

    /// This bridge, keeping `log` told which span is current, so that
    /// output and records are joined to it.
    pub fn with_log(mut self, log: Option<Arc<TaskLog>>) -> Self {
        if let Some(log) = &log {
            log.set_span(&self.root);
        }
        self.log = log;
        self
    }

    /// Where the task's log records go, if the hook chose somewhere.
    pub(crate) fn log(&self) -> Option<&Arc<TaskLog>> {
        self.log.as_ref()
    }

    /// Tells the log which span is current now.
    fn current_changed(&self, table: &ResourceTable) {
        if let Some(log) = &self.log {
            log.set_span(&self.current(table));
        }
    }

    /// The tracer guest spans go to, if tracing.
    pub(crate) fn tracer(&self) -> Option<&SdkTracer> {
        self.tracer.as_ref()
    }

    /// Spans started by the guest, recorded or not.
    pub fn started(&self) -> u32 {
        self.started
    }

    /// Spans not recorded because a limit was reached.
    pub fn dropped(&self) -> u32 {
        self.dropped
    }

    /// Ends every span the guest left open, innermost first, marking each
    /// `wtrace.unended = true` and, when the task failed, with `failure` as
    /// its error status.
    pub fn finish(&mut self, table: &mut ResourceTable, failure: Option<&str>) {
        while let Some(rep) = self.open.pop() {
            if let Ok(span) = table.get_mut(&Resource::<GuestSpan>::new_borrow(rep)) {
                span.ended = true;
                if let Some(mut sdk) = span.span.take() {
                    sdk.set_attribute(KeyValue::new("wtrace.unended", true));
                    if let Some(failure) = failure {
                        sdk.set_status(Status::error(failure.to_owned()));
                    }
                    sdk.end();
                }
            }
        }
        self.current_changed(table);
    }

    /// The guest's current span: its innermost open span, else the root.
    pub(crate) fn current(&self, table: &ResourceTable) -> SpanContext {
        self.open
            .last()
            .and_then(|rep| table.get(&Resource::<GuestSpan>::new_borrow(*rep)).ok())
            .map(|span| span.context.clone())
            .unwrap_or_else(|| self.root.clone())
    }

    fn start(
        &mut self,
        table: &mut ResourceTable,
        name: String,
        options: tracer::SpanOptions,
    ) -> wasmtime::Result<Resource<GuestSpan>> {
        let max = self.limits.attribute_value_length;
        let name = Cow::Owned(truncate(name, max as usize));
        let kind = options.kind.map_or(SpanKind::Internal, span_kind);
        let explicit_parent = options.parent.map(span_context_from_wit);
        let mut attributes: Vec<KeyValue> = options
            .attributes
            .into_iter()
            .map(|kv| key_value(kv, max))
            .collect();
        if matches!(explicit_parent, Some(None)) {
            attributes.push(KeyValue::new("wtrace.invalid_parent", true));
        }
        let links = options
            .links
            .into_iter()
            .filter_map(span_context_from_wit)
            .map(Link::with_context)
            .collect();
        self.start_with(
            table,
            name,
            kind,
            attributes,
            links,
            explicit_parent.flatten(),
        )
    }

    /// Whether the next span started would be recorded: there is a tracer
    /// and no limit is reached. (The sampler decides later.)
    fn records_next(&self) -> bool {
        self.tracer.is_some()
            && self.started < self.limits.spans_per_task
            && self.open.len() < self.limits.open_spans as usize
    }

    /// Starts a span under `parent` (else the current span), unless a limit
    /// is reached, and holds it as the new current span.
    fn start_with(
        &mut self,
        table: &mut ResourceTable,
        name: Cow<'static, str>,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
        links: Vec<Link>,
        parent: Option<SpanContext>,
    ) -> wasmtime::Result<Resource<GuestSpan>> {
        if self.live_handles >= MAX_LIVE_HANDLES {
            wasmtime::bail!(
                "the task holds {MAX_LIVE_HANDLES} span handles; end or drop spans it no longer needs"
            );
        }
        self.started = self.started.saturating_add(1);
        let parent = parent.unwrap_or_else(|| self.current(table));
        let parent_id = parent.span_id();
        let over_limit = self.started > self.limits.spans_per_task
            || self.open.len() >= self.limits.open_spans as usize;

        let (span, context) = match &self.tracer {
            Some(tracer) if !over_limit => {
                let parent_cx = match &self.parent_cx {
                    Some(cx) if *cx.span().span_context() == parent => cx,
                    _ => self
                        .parent_cx
                        .insert(Context::new().with_remote_span_context(parent)),
                };
                let span = tracer
                    .span_builder(name.clone())
                    .with_kind(kind)
                    .with_attributes(attributes)
                    .with_links(links)
                    .start_with_context(tracer, parent_cx);
                let context = span.span_context().clone();
                (Some(span), context)
            }
            Some(_) => {
                self.dropped += 1;
                (None, parent)
            }
            None => (None, SpanContext::empty_context()),
        };
        let handle = table.push(GuestSpan {
            span,
            context,
            parent: parent_id,
            name,
            ended: false,
        })?;
        self.open.push(handle.rep());
        self.live_handles += 1;
        self.current_changed(table);
        Ok(handle)
    }

    fn end(
        &mut self,
        table: &mut ResourceTable,
        handle: &Resource<GuestSpan>,
        unended: bool,
    ) -> wasmtime::Result<Result<(), String>> {
        let span = table.get_mut(handle)?;
        if span.ended {
            return Ok(Err(format!("span {:?} has already ended", span.name)));
        }
        span.ended = true;
        let span_id = span.context.span_id();
        if let Some(mut sdk) = span.span.take() {
            if unended {
                sdk.set_attribute(KeyValue::new("wtrace.unended", true));
            }
            sdk.end();
        }
        let rep = handle.rep();
        if let Some(position) = self.open.iter().rposition(|r| *r == rep) {
            self.open.remove(position);
            // Spans opened after this one may be its children, now orphaned.
            for child in &self.open[position..] {
                if let Ok(child) = table.get_mut(&Resource::<GuestSpan>::new_borrow(*child))
                    && child.parent == span_id
                    && let Some(sdk) = &mut child.span
                {
                    sdk.set_attribute(KeyValue::new("wtrace.outlived_parent", true));
                }
            }
            self.current_changed(table);
        }
        Ok(Ok(()))
    }

    fn with_span(
        &mut self,
        table: &mut ResourceTable,
        handle: &Resource<GuestSpan>,
        f: impl FnOnce(&mut SdkSpan, u32),
    ) -> wasmtime::Result<()> {
        let max = self.limits.attribute_value_length;
        if let Some(sdk) = &mut table.get_mut(handle)?.span {
            f(sdk, max);
        }
        Ok(())
    }
}

/// A span a guest made itself (through `wasi:otel`) and handed over ended.
#[derive(Debug)]
pub(crate) struct GuestSpanData {
    pub(crate) context: SpanContext,
    pub(crate) parent: Option<SpanId>,
    pub(crate) kind: SpanKind,
    pub(crate) name: String,
    pub(crate) start: std::time::SystemTime,
    pub(crate) end: std::time::SystemTime,
    pub(crate) attributes: Vec<KeyValue>,
    pub(crate) events: Vec<opentelemetry::trace::Event>,
    pub(crate) links: Vec<Link>,
    pub(crate) status: Status,
}

impl SpanBridge {
    pub(crate) fn attribute_value_length(&self) -> u32 {
        self.limits.attribute_value_length
    }

    /// The context of a span of this bridge (the root or an open guest span).
    fn known(&self, table: &ResourceTable, id: SpanId) -> Option<SpanContext> {
        if self.root.span_id() == id {
            return Some(self.root.clone());
        }
        self.open.iter().rev().find_map(|rep| {
            let span = table.get(&Resource::<GuestSpan>::new_borrow(*rep)).ok()?;
            (span.context.span_id() == id).then(|| span.context.clone())
        })
    }

    /// Replays a span the guest made through the tracer, keeping its ids and
    /// times: the sampler, limits and processors apply as to any span.
    pub(crate) fn record_guest_span(&mut self, table: &ResourceTable, data: GuestSpanData) {
        let Some(tracer) = self.tracer.clone() else {
            return;
        };
        self.started = self.started.saturating_add(1);
        if self.started > self.limits.spans_per_task {
            self.dropped += 1;
            return;
        }
        // A parent of ours carries our sampling decision; the guest's own
        // spans carry the guest's.
        let parent = data.parent.map(|id| {
            self.known(table, id).unwrap_or_else(|| {
                SpanContext::new(
                    data.context.trace_id(),
                    id,
                    data.context.trace_flags(),
                    false,
                    TraceState::default(),
                )
            })
        });
        let builder = tracer
            .span_builder(data.name)
            .with_kind(data.kind)
            .with_start_time(data.start)
            .with_attributes(data.attributes)
            .with_events(data.events)
            .with_links(data.links);
        let mut span = crate::capabilities::provider::with_guest_ids(
            data.context.trace_id(),
            data.context.span_id(),
            || builder.start_with_context(&tracer, &context_with_parent(parent)),
        );
        span.set_status(data.status);
        span.end_with_timestamp(data.end);
    }
}

/// The bridge as seen by host calls: the store's resource table and the
/// bridge state, borrowed together.
#[allow(missing_debug_implementations)]
pub struct Bridge<'a> {
    /// The store's resource table, where span handles live.
    pub table: &'a mut ResourceTable,
    /// The bridge state.
    pub state: &'a mut SpanBridge,
}

impl tracer::Host for Bridge<'_> {
    fn start_span(
        &mut self,
        name: String,
        options: tracer::SpanOptions,
    ) -> wasmtime::Result<Resource<GuestSpan>> {
        let _call = host_call("wtrace:tracing/tracer#start-span");
        self.state.start(self.table, name, options)
    }

    fn end_span(&mut self, span: Resource<GuestSpan>) -> wasmtime::Result<Result<(), String>> {
        let _call = host_call("wtrace:tracing/tracer#end-span");
        self.state.end(self.table, &span, false)
    }

    fn finish_span(
        &mut self,
        span: Resource<GuestSpan>,
        attributes: Vec<types::KeyValue>,
    ) -> wasmtime::Result<Result<(), String>> {
        let _call = host_call("wtrace:tracing/tracer#finish-span");
        // A span that ended (or is not recorded) has no SDK span left to
        // set attributes on.
        self.state.with_span(self.table, &span, |sdk, max| {
            sdk.set_attributes(attributes.into_iter().map(|kv| key_value(kv, max)));
        })?;
        let result = self.state.end(self.table, &span, false)?;
        self.table.delete(span)?;
        self.state.live_handles = self.state.live_handles.saturating_sub(1);
        Ok(result)
    }

    fn start_span_encoded(&mut self, encoded: Vec<u8>) -> wasmtime::Result<Resource<GuestSpan>> {
        let _call = host_call("wtrace:tracing/tracer#start-span-encoded");
        let max = self.state.limits.attribute_value_length as usize;
        let malformed = |why: String| {
            wasmtime::format_err!("start-span-encoded: a malformed span description: {why}")
        };
        if !self.state.records_next() {
            // Not recorded: only the name is kept (for error messages).
            let name =
                span_encoding::name(&encoded, max, &mut self.state.recent).map_err(malformed)?;
            let (kind, attributes) = (SpanKind::Internal, Vec::new());
            return self
                .state
                .start_with(self.table, name, kind, attributes, Vec::new(), None);
        }
        let mut start =
            span_encoding::start(&encoded, max, &mut self.state.recent).map_err(malformed)?;
        if matches!(start.parent, Some(None)) {
            start
                .attributes
                .push(KeyValue::new("wtrace.invalid_parent", true));
        }
        self.state.start_with(
            self.table,
            start.name,
            start.kind,
            start.attributes,
            start.links,
            start.parent.flatten(),
        )
    }

    fn finish_span_encoded(
        &mut self,
        span: Resource<GuestSpan>,
        attributes: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        let _call = host_call("wtrace:tracing/tracer#finish-span-encoded");
        let max = self.state.limits.attribute_value_length as usize;
        let recent = &mut self.state.recent;
        let attributes = span_encoding::attributes(&attributes, max, recent).map_err(|why| {
            wasmtime::format_err!("finish-span-encoded: malformed attributes: {why}")
        })?;
        if !attributes.is_empty() {
            self.state
                .with_span(self.table, &span, |sdk, _| sdk.set_attributes(attributes))?;
        }
        let result = self.state.end(self.table, &span, false)?;
        self.table.delete(span)?;
        self.state.live_handles = self.state.live_handles.saturating_sub(1);
        Ok(result)
    }

    fn current_span_context(&mut self) -> wasmtime::Result<types::SpanContext> {
        let _call = host_call("wtrace:tracing/tracer#current-span-context");
        Ok(span_context_to_wit(&self.state.current(self.table)))
    }
}

impl tracer::HostSpan for Bridge<'_> {
    fn set_attribute(
        &mut self,
        span: Resource<GuestSpan>,
        key: String,
        value: types::Value,
    ) -> wasmtime::Result<()> {
        let _call = host_call("wtrace:tracing/tracer#[method]span.set-attribute");
        self.state.with_span(self.table, &span, |sdk, max| {
            sdk.set_attribute(key_value(types::KeyValue { key, value }, max));
        })
    }

    fn set_attributes(
        &mut self,
        span: Resource<GuestSpan>,
        attributes: Vec<types::KeyValue>,
    ) -> wasmtime::Result<()> {
        let _call = host_call("wtrace:tracing/tracer#[method]span.set-attributes");
        self.state.with_span(self.table, &span, |sdk, max| {
            sdk.set_attributes(attributes.into_iter().map(|kv| key_value(kv, max)));
        })
    }

    fn add_event(
        &mut self,
        span: Resource<GuestSpan>,
        name: String,
        attributes: Vec<types::KeyValue>,
    ) -> wasmtime::Result<()> {
        let _call = host_call("wtrace:tracing/tracer#[method]span.add-event");
        self.state.with_span(self.table, &span, |sdk, max| {
            let attributes = attributes
                .into_iter()
                .map(|kv| key_value(kv, max))
                .collect();
            sdk.add_event(truncate(name, max as usize), attributes);
        })
    }

    fn set_status(
        &mut self,
        span: Resource<GuestSpan>,
        status: types::Status,
    ) -> wasmtime::Result<()> {
        let _call = host_call("wtrace:tracing/tracer#[method]span.set-status");
        self.state.with_span(self.table, &span, |sdk, max| {
            sdk.set_status(match status {
                types::Status::Unset => Status::Unset,
                types::Status::Ok => Status::Ok,
                types::Status::Error(description) => {
                    Status::error(truncate(description, max as usize))
                }
            });
        })
    }

    fn update_name(&mut self, span: Resource<GuestSpan>, name: String) -> wasmtime::Result<()> {
        let _call = host_call("wtrace:tracing/tracer#[method]span.update-name");
        self.state.with_span(self.table, &span, |sdk, max| {
            sdk.update_name(truncate(name, max as usize))
        })
    }

    fn context(&mut self, span: Resource<GuestSpan>) -> wasmtime::Result<types::SpanContext> {
        let _call = host_call("wtrace:tracing/tracer#[method]span.context");
        Ok(span_context_to_wit(&self.table.get(&span)?.context))
    }

    fn is_recording(&mut self, span: Resource<GuestSpan>) -> wasmtime::Result<bool> {
        let _call = host_call("wtrace:tracing/tracer#[method]span.is-recording");
        let span = self.table.get(&span)?;
        Ok(!span.ended && span.span.as_ref().is_some_and(|s| s.is_recording()))
    }

    fn drop(&mut self, span: Resource<GuestSpan>) -> wasmtime::Result<()> {
        let _call = host_call("wtrace:tracing/tracer#[resource-drop]span");
        let open = !self.table.get(&span)?.ended;
        if open {
            self.state.end(self.table, &span, true)?.ok();
        }
        self.table.delete(span)?;
        self.state.live_handles = self.state.live_handles.saturating_sub(1);
        Ok(())
    }
}

impl types::Host for Bridge<'_> {}

struct BridgeData;

impl HasData for BridgeData {
    type Data<'a> = Bridge<'a>;
}

/// Adds `wtrace:tracing/tracer` (and its `types`) to `linker`; `view` borrows
/// the bridge out of the store's data.
pub fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> Bridge<'_>,
) -> wasmtime::Result<()> {
    tracer::add_to_linker::<T, BridgeData>(linker, view)?;
    types::add_to_linker::<T, BridgeData>(linker, view)
}

fn span_kind(kind: types::SpanKind) -> SpanKind {
    match kind {
        types::SpanKind::Internal => SpanKind::Internal,
        types::SpanKind::Server => SpanKind::Server,
        types::SpanKind::Client => SpanKind::Client,
        types::SpanKind::Producer => SpanKind::Producer,
        types::SpanKind::Consumer => SpanKind::Consumer,
    }
}

/// Converts a guest attribute, truncating strings longer than `max` bytes.
pub(crate) fn key_value(kv: types::KeyValue, max: u32) -> KeyValue {
    let max = max as usize;
    let value: opentelemetry::Value = match kv.value {
        types::Value::String(s) => truncate(s, max).into(),
        types::Value::Bool(b) => b.into(),
        types::Value::S64(i) => i.into(),
        types::Value::F64(f) => f.into(),
        types::Value::StringList(list) => opentelemetry::Value::Array(
            list.into_iter()
                .map(|s| truncate(s, max).into())
                .collect::<Vec<opentelemetry::StringValue>>()
                .into(),
        ),
        types::Value::S64List(list) => opentelemetry::Value::Array(list.into()),
        types::Value::F64List(list) => opentelemetry::Value::Array(list.into()),
        types::Value::BoolList(list) => opentelemetry::Value::Array(list.into()),
    };
    KeyValue::new(truncate(kv.key, max), value)
}

/// `s` cut to at most `max` bytes, on a character boundary: how every text
/// a guest hands the bridge (names, keys, values, status messages) is held
/// to `--max-attribute-length`.
pub(crate) fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// A span context from the guest; `None` when its ids are not valid hex.
pub(crate) fn span_context_from_wit(cx: types::SpanContext) -> Option<SpanContext> {
    let trace_id = TraceId::from_hex(&cx.trace_id).ok()?;
    let span_id = SpanId::from_hex(&cx.span_id).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = if cx.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let state = TraceState::from_key_value(cx.trace_state).unwrap_or_default();
    Some(SpanContext::new(
        trace_id,
        span_id,
        flags,
        cx.is_remote,
        state,
    ))
}

pub(crate) fn span_context_to_wit(cx: &SpanContext) -> types::SpanContext {
    types::SpanContext {
        trace_id: cx.trace_id().to_string(),
        span_id: cx.span_id().to_string(),
        sampled: cx.is_sampled(),
        is_remote: cx.is_remote(),
        trace_state: trace_state_pairs(cx.trace_state()),
    }
}

fn trace_state_pairs(state: &TraceState) -> Vec<(String, String)> {
    let header = state.header();
    header
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

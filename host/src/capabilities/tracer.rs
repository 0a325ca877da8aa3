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
use wasmtime::StoreContextMut;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable, WasmList};

use std::borrow::Cow;
use std::sync::Arc;

use super::bindings::{tracer, types};
use super::span_encoding;
use crate::config::Limits;
use crate::sandbox::host_call;
use crate::telemetry::context::context_with_parent;
use crate::telemetry::logs::TaskLog;

/// Spans (open, or ended with a handle left) and span handles a guest may
/// hold at once before the host traps it: a guard against a guest
/// exhausting host memory with them.
const MAX_LIVE_HANDLES: usize = 100_000;

/// A guest's handle on one of its spans, held in the store's resource
/// table: the span's number in the bridge and its identity.
#[derive(Debug)]
pub struct GuestSpan {
    id: u64,
    context: SpanContext,
}

impl GuestSpan {
    /// The span's identity (its parent's, when it was not recorded).
    pub(crate) fn context(&self) -> &SpanContext {
        &self.context
    }
}

/// A span a guest started, held by the bridge until it has ended and no
/// handle names it.
#[derive(Debug)]
struct HeldSpan {
    /// Its number; 0 while its slot is free.
    id: u64,
    /// The SDK span while it is recorded and open.
    span: Option<SdkSpan>,
    /// The span's identity (its parent's, when it was not recorded).
    context: SpanContext,
    /// The id of the span it was started under.
    parent: SpanId,
    name: Cow<'static, str>,
    ended: bool,
    /// Guest handles naming it (`start-span`, `span-handle`).
    handles: u32,
}

impl HeldSpan {
    fn free() -> Self {
        Self {
            id: 0,
            span: None,
            context: SpanContext::empty_context(),
            parent: SpanId::INVALID,
            name: Cow::Borrowed(""),
            ended: true,
            handles: 0,
        }
    }
}

/// The spans a bridge holds, by number: a slot index in the low 32 bits and
/// a serial (never 0) in the high ones, so a number outlives its span
/// harmlessly. Slots are filled in place and reused: an SDK span is some
/// 300 bytes, and moving a whole held span in and out of an `Option` per
/// span was several `memmove` calls a guest span.
#[derive(Debug, Default)]
struct HeldSpans {
    slots: Vec<HeldSpan>,
    free: Vec<u32>,
    serial: u32,
}

impl HeldSpans {
    fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// A free slot, numbered, for a new span; the caller fills it in.
    fn insert(&mut self) -> (u64, &mut HeldSpan) {
        self.serial = self.serial.wrapping_add(1).max(1);
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(HeldSpan::free());
                (self.slots.len() - 1) as u32
            }
        };
        let id = (u64::from(self.serial) << 32) | u64::from(slot);
        let held = &mut self.slots[slot as usize];
        held.id = id;
        (id, held)
    }

    /// The span numbered `id`, if held (no span is numbered 0, the number
    /// of a free slot).
    fn get(&self, id: u64) -> Option<&HeldSpan> {
        self.slots
            .get(id as u32 as usize)
            .filter(|span| span.id == id && id != 0)
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut HeldSpan> {
        self.slots
            .get_mut(id as u32 as usize)
            .filter(|span| span.id == id && id != 0)
    }

    /// Lets go of the span if it has ended and no handle names it.
    fn release_if_done(&mut self, id: u64) {
        if let Some(span) = self.get_mut(id)
            && span.ended
            && span.handles == 0
        {
            span.id = 0;
            span.span = None;
            span.name = Cow::Borrowed("");
            self.free.push(id as u32);
        }
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
    spans: HeldSpans,
    /// Open spans in start order, with their identities; the last is current.
    open: Vec<(u64, SpanContext)>,
    /// Guest handles alive (`GuestSpan`s in the resource table).
    live_handles: usize,
    limits: BridgeLimits,
    started: u32,
    dropped: u32,
    /// The parent context of the last span started: siblings (a loop of
    /// spans under one parent) share it rather than each building its own.
    parent_cx: Option<Context>,
    /// Texts of encoded spans decoded lately.
    recent: span_encoding::Recent,
    /// The bytes of the last encoded call, copied out of the guest's memory.
    encoded: Vec<u8>,
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
            spans: HeldSpans::default(),
            open: Vec::new(),
            live_handles: 0,
            limits,
            started: 0,
            dropped: 0,
            parent_cx: None,
            recent: span_encoding::Recent::default(),
            encoded: Vec::new(),
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
    fn current_changed(&self) {
        if let Some(log) = &self.log {
            log.set_span(self.current());
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
    pub fn finish(&mut self, failure: Option<&str>) {
        while let Some((id, _)) = self.open.pop() {
            if let Some(span) = self.spans.get_mut(id) {
                span.ended = true;
                if let Some(mut sdk) = span.span.take() {
                    sdk.set_attribute(KeyValue::new("wtrace.unended", true));
                    if let Some(failure) = failure {
                        sdk.set_status(Status::error(failure.to_owned()));
                    }
                    sdk.end();
                }
                self.spans.release_if_done(id);
            }
        }
        self.current_changed();
    }

    /// The guest's current span: its innermost open span, else the root.
    pub(crate) fn current(&self) -> &SpanContext {
        self.open.last().map_or(&self.root, |(_, cx)| cx)
    }

    fn start(&mut self, name: String, options: tracer::SpanOptions) -> wasmtime::Result<u64> {
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
        self.start_with(name, kind, attributes, links, explicit_parent.flatten())
    }

    /// Whether the next span started would be recorded: there is a tracer
    /// and no limit is reached. (The sampler decides later.)
    fn records_next(&self) -> bool {
        self.tracer.is_some()
            && self.started < self.limits.spans_per_task
            && self.open.len() < self.limits.open_spans as usize
    }

    /// Traps the guest if it holds as many spans, or span handles, as it
    /// may (each is bounded on its own: a typed span is one of each).
    fn check_room(held: usize) -> wasmtime::Result<()> {
        if held >= MAX_LIVE_HANDLES {
            wasmtime::bail!(
                "the task holds {MAX_LIVE_HANDLES} spans or span handles; end or drop spans it no longer needs"
            );
        }
        Ok(())
    }

    /// Starts a span under `parent` (else the current span), unless a limit
    /// is reached, and holds it as the new current span; returns its number.
    fn start_with(
        &mut self,
        name: Cow<'static, str>,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
        links: Vec<Link>,
        parent: Option<SpanContext>,
    ) -> wasmtime::Result<u64> {
        Self::check_room(self.spans.len())?;
        self.started = self.started.saturating_add(1);
        let over_limit = self.started > self.limits.spans_per_task
            || self.open.len() >= self.limits.open_spans as usize;
        let parent = parent.unwrap_or_else(|| self.current().clone());
        let (id, held) = self.spans.insert();
        held.parent = parent.span_id();
        held.ended = false;
        held.handles = 0;
        held.context = match &self.tracer {
            Some(tracer) if !over_limit => {
                let parent_cx = match &self.parent_cx {
                    Some(cx) if *cx.span().span_context() == parent => cx,
                    _ => self
                        .parent_cx
                        .insert(Context::new().with_remote_span_context(parent)),
                };
                let mut builder = tracer
                    .span_builder(name.clone())
                    .with_kind(kind)
                    .with_attributes(attributes);
                if !links.is_empty() {
                    // Most spans have none; an empty list still costs the
                    // SDK a queue of links.
                    builder = builder.with_links(links);
                }
                let span = held
                    .span
                    .insert(builder.start_with_context(tracer, parent_cx));
                span.span_context().clone()
            }
            Some(_) => {
                self.dropped += 1;
                parent
            }
            None => SpanContext::empty_context(),
        };
        held.name = name;
        if let Some(log) = &self.log {
            log.set_span(&held.context);
        }
        self.open.push((id, held.context.clone()));
        Ok(id)
    }

    /// Ends the span numbered `id`; the caller releases it.
    fn end(&mut self, id: u64, unended: bool) -> Result<(), String> {
        let Some(span) = self.spans.get_mut(id) else {
            return Err(format!(
                "no span is numbered {id}: it has ended, or was never started"
            ));
        };
        if span.ended {
            return Err(format!("span {:?} has already ended", span.name));
        }
        span.ended = true;
        let span_id = span.context.span_id();
        // Ended where it is held, not moved out first.
        if let Some(sdk) = &mut span.span {
            if unended {
                sdk.set_attribute(KeyValue::new("wtrace.unended", true));
            }
            sdk.end();
            span.span = None;
        }
        if let Some(position) = self.open.iter().rposition(|(open, _)| *open == id) {
            if position + 1 == self.open.len() {
                self.open.pop();
            } else {
                self.open.remove(position);
            }
            // Spans opened after this one may be its children, now orphaned.
            for (child, _) in &self.open[position..] {
                if let Some(child) = self.spans.get_mut(*child)
                    && child.parent == span_id
                    && let Some(sdk) = &mut child.span
                {
                    sdk.set_attribute(KeyValue::new("wtrace.outlived_parent", true));
                }
            }
            self.current_changed();
        }
        Ok(())
    }

    /// A new guest handle on the span numbered `id`.
    fn handle(
        &mut self,
        table: &mut ResourceTable,
        id: u64,
    ) -> wasmtime::Result<Resource<GuestSpan>> {
        Self::check_room(self.live_handles)?;
        let context = match self.spans.get_mut(id) {
            Some(span) => {
                span.handles += 1;
                span.context.clone()
            }
            None => SpanContext::empty_context(),
        };
        let handle = table.push(GuestSpan { id, context })?;
        self.live_handles += 1;
        Ok(handle)
    }

    /// Lets go of a guest handle; a span it names that is still open ends,
    /// marked `wtrace.unended = true`.
    fn release(
        &mut self,
        table: &mut ResourceTable,
        handle: Resource<GuestSpan>,
    ) -> wasmtime::Result<()> {
        let id = table.delete(handle)?.id;
        self.live_handles = self.live_handles.saturating_sub(1);
        if let Some(span) = self.spans.get_mut(id) {
            span.handles = span.handles.saturating_sub(1);
            if !span.ended && span.handles == 0 {
                self.end(id, true).ok();
            }
            self.spans.release_if_done(id);
        }
        Ok(())
    }

    /// Whether the span numbered `id` is open and recorded.
    pub(crate) fn is_recording(&self, id: u64) -> bool {
        self.spans
            .get(id)
            .is_some_and(|span| !span.ended && span.span.as_ref().is_some_and(|s| s.is_recording()))
    }

    /// The number of the span a handle names.
    fn id(table: &ResourceTable, handle: &Resource<GuestSpan>) -> wasmtime::Result<u64> {
        Ok(table.get(handle)?.id)
    }

    fn with_span(&mut self, id: u64, f: impl FnOnce(&mut SdkSpan, u32)) {
        let max = self.limits.attribute_value_length;
        if let Some(sdk) = self.spans.get_mut(id).and_then(|span| span.span.as_mut()) {
            f(sdk, max);
        }
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
    fn known(&self, id: SpanId) -> Option<SpanContext> {
        if self.root.span_id() == id {
            return Some(self.root.clone());
        }
        self.open
            .iter()
            .rev()
            .find(|(_, cx)| cx.span_id() == id)
            .map(|(_, cx)| cx.clone())
    }

    /// Replays a span the guest made through the tracer, keeping its ids and
    /// times: the sampler, limits and processors apply as to any span.
    pub(crate) fn record_guest_span(&mut self, data: GuestSpanData) {
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
            self.known(id).unwrap_or_else(|| {
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

impl Bridge<'_> {
    /// `start-span-encoded`.
    fn start_encoded(&mut self, encoded: &[u8]) -> wasmtime::Result<u64> {
        let _call = host_call("wtrace:tracing/tracer#start-span-encoded");
        let max = self.state.limits.attribute_value_length as usize;
        let malformed = |why: span_encoding::Malformed| {
            wasmtime::format_err!("start-span-encoded: a malformed span description: {why}")
        };
        if !self.state.records_next() {
            // Not recorded: only the name is kept (for error messages).
            let name =
                span_encoding::name(encoded, max, &mut self.state.recent).map_err(malformed)?;
            let (kind, attributes) = (SpanKind::Internal, Vec::new());
            let id = self
                .state
                .start_with(name, kind, attributes, Vec::new(), None)?;
            return Ok(id);
        }
        let mut start =
            span_encoding::start(encoded, max, &mut self.state.recent).map_err(malformed)?;
        if matches!(start.parent, Some(None)) {
            start
                .attributes
                .push(KeyValue::new("wtrace.invalid_parent", true));
        }
        let id = self.state.start_with(
            start.name,
            start.kind,
            start.attributes,
            start.links,
            start.parent.flatten(),
        )?;
        Ok(id)
    }

    /// `finish-span-encoded`.
    fn finish_encoded(
        &mut self,
        span: u64,
        attributes: &[u8],
    ) -> wasmtime::Result<Result<(), String>> {
        let _call = host_call("wtrace:tracing/tracer#finish-span-encoded");
        let max = self.state.limits.attribute_value_length as usize;
        let recent = &mut self.state.recent;
        let attributes = span_encoding::attributes(attributes, max, recent).map_err(|why| {
            wasmtime::format_err!("finish-span-encoded: malformed attributes: {why}")
        })?;
        if !attributes.is_empty() {
            self.state
                .with_span(span, |sdk, _| sdk.set_attributes(attributes));
        }
        let result = self.state.end(span, false);
        self.state.spans.release_if_done(span);
        Ok(result)
    }
}

impl tracer::Host for Bridge<'_> {
    fn start_span(
        &mut self,
        name: String,
        options: tracer::SpanOptions,
    ) -> wasmtime::Result<Resource<GuestSpan>> {
        let _call = host_call("wtrace:tracing/tracer#start-span");
        let id = self.state.start(name, options)?;
        self.state.handle(self.table, id)
    }

    fn end_span(&mut self, span: Resource<GuestSpan>) -> wasmtime::Result<Result<(), String>> {
        let _call = host_call("wtrace:tracing/tracer#end-span");
        let id = SpanBridge::id(self.table, &span)?;
        Ok(self.state.end(id, false))
    }

    fn finish_span(
        &mut self,
        span: Resource<GuestSpan>,
        attributes: Vec<types::KeyValue>,
    ) -> wasmtime::Result<Result<(), String>> {
        let _call = host_call("wtrace:tracing/tracer#finish-span");
        let id = SpanBridge::id(self.table, &span)?;
        // A span that ended (or is not recorded) has no SDK span left to
        // set attributes on.
        self.state.with_span(id, |sdk, max| {
            sdk.set_attributes(attributes.into_iter().map(|kv| key_value(kv, max)));
        });
        let result = self.state.end(id, false);
        self.state.release(self.table, span)?;
        Ok(result)
    }

    fn start_span_encoded(&mut self, encoded: Vec<u8>) -> wasmtime::Result<u64> {
        self.start_encoded(&encoded)
    }

    fn finish_span_encoded(
        &mut self,
        span: u64,
        attributes: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        self.finish_encoded(span, &attributes)
    }

    fn span_handle(&mut self, span: u64) -> wasmtime::Result<Resource<GuestSpan>> {
        let _call = host_call("wtrace:tracing/tracer#span-handle");
        self.state.handle(self.table, span)
    }

    fn current_span_context(&mut self) -> wasmtime::Result<types::SpanContext> {
        let _call = host_call("wtrace:tracing/tracer#current-span-context");
        Ok(span_context_to_wit(self.state.current()))
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
        let id = SpanBridge::id(self.table, &span)?;
        self.state.with_span(id, |sdk, max| {
            sdk.set_attribute(key_value(types::KeyValue { key, value }, max));
        });
        Ok(())
    }

    fn set_attributes(
        &mut self,
        span: Resource<GuestSpan>,
        attributes: Vec<types::KeyValue>,
    ) -> wasmtime::Result<()> {
        let _call = host_call("wtrace:tracing/tracer#[method]span.set-attributes");
        let id = SpanBridge::id(self.table, &span)?;
        self.state.with_span(id, |sdk, max| {
            sdk.set_attributes(attributes.into_iter().map(|kv| key_value(kv, max)));
        });
        Ok(())
    }

    fn add_event(
        &mut self,
        span: Resource<GuestSpan>,
        name: String,
        attributes: Vec<types::KeyValue>,
    ) -> wasmtime::Result<()> {
        let _call = host_call("wtrace:tracing/tracer#[method]span.add-event");
        let id = SpanBridge::id(self.table, &span)?;
        self.state.with_span(id, |sdk, max| {
            let attributes = attributes
                .into_iter()
                .map(|kv| key_value(kv, max))
                .collect();
            sdk.add_event(truncate(name, max as usize), attributes);
        });
        Ok(())
    }

    fn set_status(
        &mut self,
        span: Resource<GuestSpan>,
        status: types::Status,
    ) -> wasmtime::Result<()> {
        let _call = host_call("wtrace:tracing/tracer#[method]span.set-status");
        let id = SpanBridge::id(self.table, &span)?;
        self.state.with_span(id, |sdk, max| {
            sdk.set_status(match status {
                types::Status::Unset => Status::Unset,
                types::Status::Ok => Status::Ok,
                types::Status::Error(description) => {
                    Status::error(truncate(description, max as usize))
                }
            });
        });
        Ok(())
    }

    fn update_name(&mut self, span: Resource<GuestSpan>, name: String) -> wasmtime::Result<()> {
        let _call = host_call("wtrace:tracing/tracer#[method]span.update-name");
        let id = SpanBridge::id(self.table, &span)?;
        self.state
            .with_span(id, |sdk, max| sdk.update_name(truncate(name, max as usize)));
        Ok(())
    }

    fn context(&mut self, span: Resource<GuestSpan>) -> wasmtime::Result<types::SpanContext> {
        let _call = host_call("wtrace:tracing/tracer#[method]span.context");
        Ok(span_context_to_wit(&self.table.get(&span)?.context))
    }

    fn is_recording(&mut self, span: Resource<GuestSpan>) -> wasmtime::Result<bool> {
        let _call = host_call("wtrace:tracing/tracer#[method]span.is-recording");
        let id = SpanBridge::id(self.table, &span)?;
        Ok(self.state.is_recording(id))
    }

    fn drop(&mut self, span: Resource<GuestSpan>) -> wasmtime::Result<()> {
        let _call = host_call("wtrace:tracing/tracer#[resource-drop]span");
        self.state.release(self.table, span)
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
    types::add_to_linker::<T, BridgeData>(linker, view)?;
    add_encoded_calls_in_place(linker, view)
}

/// The most of an encoded call's buffer the bridge keeps for the next call.
const KEPT_ENCODED_BYTES: usize = 64 << 10;

/// Redefines the two calls every SDK span makes to take their bytes where
/// the guest put them: the generated bindings lift a `list<u8>` into a new
/// `Vec` each call, an allocation and a free per call; these copy it into
/// a buffer the bridge keeps.
fn add_encoded_calls_in_place<T: 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> Bridge<'_>,
) -> wasmtime::Result<()> {
    /// The bytes of `list`, in the bridge's buffer (given back after the call).
    fn copy_in<T: 'static>(
        store: &mut StoreContextMut<'_, T>,
        view: fn(&mut T) -> Bridge<'_>,
        list: &WasmList<u8>,
    ) -> Vec<u8> {
        let mut bytes = std::mem::take(&mut view(store.data_mut()).state.encoded);
        bytes.clear();
        // An empty list (the usual end of a span) needs no look at the
        // guest's memory, which costs a lookup of its own.
        if list.len() > 0 {
            bytes.extend_from_slice(list.as_le_slice(&*store));
        }
        bytes
    }
    /// Gives `bytes` back to the bridge, unless a guest made them large.
    fn keep(bridge: Bridge<'_>, bytes: Vec<u8>) {
        if bytes.capacity() <= KEPT_ENCODED_BYTES {
            bridge.state.encoded = bytes;
        }
    }
    linker.allow_shadowing(true);
    let mut tracer = linker.instance("wtrace:tracing/tracer@0.1.0")?;
    tracer.func_wrap(
        "start-span-encoded",
        move |mut store: StoreContextMut<'_, T>, (encoded,): (WasmList<u8>,)| {
            let bytes = copy_in(&mut store, view, &encoded);
            let mut bridge = view(store.data_mut());
            let id = bridge.start_encoded(&bytes);
            keep(bridge, bytes);
            Ok((id?,))
        },
    )?;
    tracer.func_wrap(
        "finish-span-encoded",
        move |mut store: StoreContextMut<'_, T>, (span, attributes): (u64, WasmList<u8>)| {
            let bytes = copy_in(&mut store, view, &attributes);
            let mut bridge = view(store.data_mut());
            let result = bridge.finish_encoded(span, &bytes);
            keep(bridge, bytes);
            Ok((result?,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
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

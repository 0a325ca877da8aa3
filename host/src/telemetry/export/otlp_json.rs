//! OTLP-JSON lines written straight from the SDK's span data, as the
//! OpenTelemetry Collector writes its own: no intermediate message.
//!
//! Converting to `opentelemetry-proto`'s messages and serializing them with
//! serde allocates every id, name, key and value twice over (the message,
//! then a string for each hex id, integer and time) and frees them again; for
//! wtrace's task spans that was most of the cost of an export. [`LineEncoder`]
//! writes the same JSON directly into one reused buffer: ids as hex from a
//! table, integers with `itoa`, strings copied as they are unless they hold a
//! character JSON must escape, and the resource and scope, which rarely
//! change, encoded once and kept as fragments, as are the keys, names and
//! string values a process repeats span after span. The output is the format of
//! `opentelemetry-proto`'s serde encoding, field for field and byte for
//! byte; a property test holds it to that.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceState};
use opentelemetry::{Array, InstrumentationScope, Key, KeyValue, StringValue, Value};
use opentelemetry_proto::tonic::common::v1 as proto;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;

/// Encodes batches of spans as OTLP-JSON `ExportTraceServiceRequest` lines
/// into buffers it keeps from batch to batch.
///
/// A batch is either encoded whole ([`LineEncoder::encode`]) or span by span
/// as each ends ([`LineEncoder::add`], then [`LineEncoder::finish`]): the
/// second lets a processor encode a span on the thread that made it, while
/// its data is still in that core's cache, and free it where it was
/// allocated, instead of queueing the span data for another thread.
#[derive(Debug)]
pub struct LineEncoder {
    line: Vec<u8>,
    /// `{"attributes":[…],"droppedAttributesCount":0,"entityRefs":[]}` of
    /// the resource, and its `"schemaUrl"` value.
    resource: Vec<u8>,
    resource_schema: Vec<u8>,
    /// Scopes seen, each with its `{"name":…}` object and `"schemaUrl"`
    /// value; a batch's groups index into it.
    scopes: Vec<KnownScope>,
    /// Per scope of the batch being encoded, in first-seen order (as
    /// `opentelemetry-proto` groups them): its index in `scopes` and its
    /// spans, encoded and joined by commas (the first group's are in `line`
    /// itself). Only the first `open` are in use; the rest keep their
    /// capacity.
    groups: Vec<(usize, Vec<u8>)>,
    open: usize,
    /// The group of the last span added: consecutive spans nearly always
    /// share a scope.
    last: Option<usize>,
    spans: usize,
    /// Where the first group's spans start in `line`, once it is open.
    header: usize,
    /// Keys, names and string values encoded lately.
    fragments: Fragments,
}

#[derive(Debug)]
struct KnownScope {
    scope: InstrumentationScope,
    json: Vec<u8>,
    schema: Vec<u8>,
}

/// The most bytes the line buffer holds on to between batches.
const KEPT_LINE_BYTES: usize = 8 << 20;
/// The most scopes remembered; past it they are encoded afresh.
const KEPT_SCOPES: usize = 16;

impl Default for LineEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl LineEncoder {
    /// An encoder for spans of an empty resource, until
    /// [`LineEncoder::set_resource`].
    pub fn new() -> Self {
        let mut encoder = Self {
            line: Vec::new(),
            resource: Vec::new(),
            resource_schema: Vec::new(),
            scopes: Vec::new(),
            groups: Vec::new(),
            open: 0,
            last: None,
            spans: 0,
            header: 0,
            fragments: Fragments::default(),
        };
        encoder.set_resource_attributes(&ResourceAttributesWithSchema::default());
        encoder
    }

    /// The resource every following line carries.
    pub fn set_resource(&mut self, resource: &Resource) {
        self.set_resource_attributes(&resource.into());
    }

    fn set_resource_attributes(&mut self, resource: &ResourceAttributesWithSchema) {
        let message = opentelemetry_proto::tonic::resource::v1::Resource {
            attributes: resource.attributes.0.clone(),
            dropped_attributes_count: 0,
            entity_refs: Vec::new(),
        };
        let resource_json = serde_json::to_vec(&message).expect("a resource serializes to JSON");
        if self.open > 0 {
            // Spans wait in the line, after a header with the old resource.
            let at = LINE_START.len();
            self.line
                .splice(at..at + self.resource.len(), resource_json.iter().copied());
            self.header = self.header + resource_json.len() - self.resource.len();
        }
        self.resource = resource_json;
        self.resource_schema.clear();
        string(
            &mut self.resource_schema,
            resource.schema_url.as_deref().unwrap_or_default(),
        );
    }

    /// One line (with its newline) for `batch`, with any spans added
    /// before it. The slice is valid until the next call.
    pub fn encode(&mut self, batch: &[SpanData]) -> &[u8] {
        for data in batch {
            self.add(data);
        }
        self.finish()
    }

    /// Encodes `data` into the line being built.
    pub fn add(&mut self, data: &SpanData) {
        let scope = &data.instrumentation_scope;
        let group = match self.last {
            Some(group) if same_scope(&self.scopes[self.groups[group].0].scope, scope) => group,
            _ => {
                let known = self.known_scope(scope);
                let open = &self.groups[..self.open];
                let group = match open.iter().position(|(k, _)| *k == known) {
                    Some(group) => group,
                    None => self.open_group(known),
                };
                self.last = Some(group);
                group
            }
        };
        // The first scope's spans go straight into the line, after its
        // header: no copy at the end for the usual one-scope batch.
        let (out, empty) = if group == 0 {
            let empty = self.line.len() == self.header;
            (&mut self.line, empty)
        } else {
            let out = &mut self.groups[group].1;
            let empty = out.is_empty();
            (out, empty)
        };
        if !empty {
            out.push(b',');
        }
        span(out, &mut self.fragments, data);
        self.spans += 1;
    }

    /// Starts the next scope group of the line, for scope `known`.
    fn open_group(&mut self, known: usize) -> usize {
        if self.open == self.groups.len() {
            self.groups.push((known, Vec::new()));
        }
        self.groups[self.open].0 = known;
        self.groups[self.open].1.clear();
        if self.open == 0 {
            if self.line.capacity() > KEPT_LINE_BYTES {
                self.line = Vec::new();
            }
            self.start_line();
            scope_start(&mut self.line, &self.scopes[known]);
            self.header = self.line.len();
        }
        self.open += 1;
        self.open - 1
    }

    /// Starts `line` afresh, up to its scope groups.
    fn start_line(&mut self) {
        self.line.clear();
        self.line.extend_from_slice(LINE_START);
        self.line.extend_from_slice(&self.resource);
        self.line.extend_from_slice(br#","scopeSpans":["#);
    }

    /// How many spans were added since the last line.
    pub fn len(&self) -> usize {
        self.spans
    }

    /// Whether no span was added since the last line.
    pub fn is_empty(&self) -> bool {
        self.spans == 0
    }

    /// How many bytes the spans added since the last line take, encoded,
    /// with the line's header.
    pub fn encoded_len(&self) -> usize {
        if self.open == 0 {
            return 0;
        }
        let others: usize = self.groups[1..self.open]
            .iter()
            .map(|(_, spans)| spans.len())
            .sum();
        self.line.len() + others
    }

    /// The line (with its newline) of the spans added since the last one,
    /// which are then forgotten. The slice is valid until the next call.
    pub fn finish(&mut self) -> &[u8] {
        if self.open == 0 {
            self.start_line();
        } else {
            scope_end(&mut self.line, &self.scopes[self.groups[0].0]);
        }
        let out = &mut self.line;
        for (known, spans) in self.groups.iter_mut().take(self.open).skip(1) {
            out.push(b',');
            let known = &self.scopes[*known];
            scope_start(out, known);
            out.extend_from_slice(spans);
            scope_end(out, known);
            if spans.capacity() > KEPT_LINE_BYTES {
                *spans = Vec::new();
            }
            spans.clear();
        }
        out.extend_from_slice(br#"],"schemaUrl":"#);
        out.extend_from_slice(&self.resource_schema);
        out.extend_from_slice(b"}]}\n");
        self.open = 0;
        self.last = None;
        self.spans = 0;
        self.header = 0;
        &self.line
    }

    fn known_scope(&mut self, scope: &InstrumentationScope) -> usize {
        if let Some(known) = self.scopes.iter().position(|k| same_scope(&k.scope, scope)) {
            return known;
        }
        if self.scopes.len() == KEPT_SCOPES && self.open == 0 {
            self.scopes.clear();
        }
        let message = proto::InstrumentationScope::from((scope, None));
        let mut schema = Vec::new();
        string(&mut schema, scope.schema_url().unwrap_or_default());
        self.scopes.push(KnownScope {
            scope: scope.clone(),
            json: serde_json::to_vec(&message).expect("a scope serializes to JSON"),
            schema,
        });
        self.scopes.len() - 1
    }
}

const LINE_START: &[u8] = br#"{"resourceSpans":[{"resource":"#;

/// Whether `a` and `b` are one scope. A span's scope is a clone of its
/// tracer's, whose texts are nearly always static: when each text of one
/// sits where the other's does and neither has attributes, they are equal
/// with no compare (the SDK's `==` sorts copies of both attribute lists:
/// about 200 instructions a span); otherwise `==` decides.
fn same_scope(a: &InstrumentationScope, b: &InstrumentationScope) -> bool {
    fn same(a: Option<&str>, b: Option<&str>) -> bool {
        match (a, b) {
            (Some(a), Some(b)) => a.as_ptr() == b.as_ptr() && a.len() == b.len(),
            (a, b) => a.is_none() && b.is_none(),
        }
    }
    let at_once = same(Some(a.name()), Some(b.name()))
        && same(a.version(), b.version())
        && same(a.schema_url(), b.schema_url())
        && a.attributes().next().is_none()
        && b.attributes().next().is_none();
    at_once || a == b
}

/// `{"scope":{…},"spans":[` of a scope group.
fn scope_start(out: &mut Vec<u8>, known: &KnownScope) {
    out.extend_from_slice(br#"{"scope":"#);
    out.extend_from_slice(&known.json);
    out.extend_from_slice(br#","spans":["#);
}

/// `],"schemaUrl":"…"}`, closing a scope group.
fn scope_end(out: &mut Vec<u8>, known: &KnownScope) {
    out.extend_from_slice(br#"],"schemaUrl":"#);
    out.extend_from_slice(&known.schema);
    out.push(b'}');
}

/// Opens a span or link object with its trace id, span id and trace state,
/// the fields both share in this order.
fn identity(out: &mut Vec<u8>, cx: &SpanContext) {
    out.extend_from_slice(br#"{"traceId":""#);
    hex(out, &cx.trace_id().to_bytes());
    out.extend_from_slice(br#"","spanId":""#);
    hex(out, &cx.span_id().to_bytes());
    out.extend_from_slice(br#"","traceState":"#);
    trace_state(out, cx.trace_state());
}

fn span(out: &mut Vec<u8>, fragments: &mut Fragments, data: &SpanData) {
    // The usual span's constant runs are written whole: each piece costs a
    // copy call of its own.
    let cx = &data.span_context;
    if *cx.trace_state() == TraceState::NONE {
        out.extend_from_slice(br#"{"traceId":""#);
        hex(out, &cx.trace_id().to_bytes());
        out.extend_from_slice(br#"","spanId":""#);
        hex(out, &cx.span_id().to_bytes());
        out.extend_from_slice(br#"","traceState":"","parentSpanId":""#);
    } else {
        identity(out, cx);
        out.extend_from_slice(br#","parentSpanId":""#);
    }
    if data.parent_span_id != SpanId::INVALID {
        hex(out, &data.parent_span_id.to_bytes());
    }
    match span_flags(data.parent_span_is_remote, cx.trace_flags().to_u8()) {
        0x100 => out.extend_from_slice(br#"","flags":256,"name":"#),
        0x101 => out.extend_from_slice(br#"","flags":257,"name":"#),
        0x300 => out.extend_from_slice(br#"","flags":768,"name":"#),
        0x301 => out.extend_from_slice(br#"","flags":769,"name":"#),
        other => {
            out.extend_from_slice(br#"","flags":"#);
            int(out, other);
            out.extend_from_slice(br#","name":"#);
        }
    }
    fragments.put(out, Fragment::String, Text::from(&data.name));
    out.extend_from_slice(match data.span_kind {
        SpanKind::Internal => br#","kind":1,"startTimeUnixNano":""#,
        SpanKind::Server => br#","kind":2,"startTimeUnixNano":""#,
        SpanKind::Client => br#","kind":3,"startTimeUnixNano":""#,
        SpanKind::Producer => br#","kind":4,"startTimeUnixNano":""#,
        SpanKind::Consumer => br#","kind":5,"startTimeUnixNano":""#,
    });
    int(out, unix_nanos(data.start_time));
    out.extend_from_slice(br#"","endTimeUnixNano":""#);
    int(out, unix_nanos(data.end_time));
    out.extend_from_slice(br#"","attributes":"#);
    attributes(out, fragments, &data.attributes);
    if data.dropped_attributes_count == 0
        && data.events.events.is_empty()
        && data.events.dropped_count == 0
        && data.links.links.is_empty()
        && data.links.dropped_count == 0
    {
        out.extend_from_slice(
            br#","droppedAttributesCount":0,"events":[],"droppedEventsCount":0,"links":[],"droppedLinksCount":0"#,
        );
    } else {
        events_and_links(out, fragments, data);
    }
    match &data.status {
        Status::Unset => out.extend_from_slice(br#","status":{"message":"","code":0}}"#),
        Status::Ok => out.extend_from_slice(br#","status":{"message":"","code":1}}"#),
        Status::Error { description } => {
            out.extend_from_slice(br#","status":{"message":"#);
            string(out, description);
            out.extend_from_slice(br#","code":2}}"#);
        }
    }
}

/// From `,"droppedAttributesCount":` to the dropped links' count.
fn events_and_links(out: &mut Vec<u8>, fragments: &mut Fragments, data: &SpanData) {
    out.extend_from_slice(br#","droppedAttributesCount":"#);
    int(out, data.dropped_attributes_count);
    out.extend_from_slice(br#","events":["#);
    for (i, event) in data.events.events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"timeUnixNano":""#);
        int(out, unix_nanos(event.timestamp));
        out.extend_from_slice(br#"","name":"#);
        fragments.put(out, Fragment::String, Text::from(&event.name));
        out.extend_from_slice(br#","attributes":"#);
        attributes(out, fragments, &event.attributes);
        out.extend_from_slice(br#","droppedAttributesCount":"#);
        int(out, event.dropped_attributes_count);
        out.push(b'}');
    }
    out.extend_from_slice(br#"],"droppedEventsCount":"#);
    int(out, data.events.dropped_count);
    out.extend_from_slice(br#","links":["#);
    for (i, link) in data.links.links.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let cx = &link.span_context;
        identity(out, cx);
        out.extend_from_slice(br#","attributes":"#);
        attributes(out, fragments, &link.attributes);
        out.extend_from_slice(br#","droppedAttributesCount":"#);
        int(out, link.dropped_attributes_count);
        out.extend_from_slice(br#","flags":"#);
        int(out, span_flags(cx.is_remote(), cx.trace_flags().to_u8()));
        out.push(b'}');
    }
    out.extend_from_slice(br#"],"droppedLinksCount":"#);
    int(out, data.links.dropped_count);
}

fn attributes(out: &mut Vec<u8>, fragments: &mut Fragments, attributes: &[KeyValue]) {
    out.push(b'[');
    for (i, attribute) in attributes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let key = attribute.key.as_str();
        fragments.put(out, Fragment::Key, Text::Key(&attribute.key));
        match &attribute.value {
            // A task id is new in every span: kept, it would only displace
            // a fragment that repeats.
            Value::String(_) if key == crate::attrs::TASK_ID => value(out, &attribute.value),
            Value::String(text) => fragments.put(out, Fragment::StringValue, Text::Value(text)),
            other => value(out, other),
        }
        out.push(b'}');
    }
    out.push(b']');
}

/// JSON fragments of the texts a process repeats in span after span
/// (contract keys, span names, function and component names, digests),
/// encoded once and then copied: a hit costs a look-up and one copy
/// instead of an escape scan and the fragment's assembly, piece by piece.
///
/// A text's pair of slots is chosen by its address and length, where a
/// shared or static text sits every time. A slot keeps a copy of the text
/// it encodes, and, when it can, what owns the text's memory: a clone of
/// the key or string value (for a shared one, a count on its `Arc`), or
/// nothing for a `&'static str`. While a slot holds that memory no other
/// text can come to sit there, so the same address and length are the
/// same text and a hit needs no compare; any other text is compared with
/// the copy, so the output is right whatever text comes to sit where
/// another was. A miss encodes the text and takes the pair's slot used less
/// lately: two texts a span repeats that fall on one pair both stay, and a
/// text seen once displaces at most one. Task ids, new in every span, are
/// not offered at all.
#[derive(Debug)]
struct Fragments {
    pairs: Box<[Pair]>,
}

#[derive(Debug)]
struct Pair {
    slots: [Slot; 2],
    /// Which of the two (0 or 1) was used last: it is looked at first.
    last: usize,
}

/// What a fragment encodes its text as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fragment {
    /// `{"key":"…","value":`, an attribute's start.
    Key,
    /// `{"stringValue":"…"}`.
    StringValue,
    /// `"…"`, a span or event name.
    String,
}

/// A text offered to [`Fragments::put`], with what owns its memory.
#[derive(Debug, Clone, Copy)]
enum Text<'a> {
    /// Memory that is never freed: a name made once for good.
    Static(&'static str),
    /// An attribute's key.
    Key(&'a Key),
    /// An attribute's string value.
    Value(&'a StringValue),
    /// Anything else: only ever compared.
    Other(&'a str),
}

impl Text<'_> {
    fn as_str(&self) -> &str {
        match self {
            Text::Static(text) => text,
            Text::Key(key) => key.as_str(),
            Text::Value(value) => value.as_str(),
            Text::Other(text) => text,
        }
    }

    /// What a slot keeps so that the text's memory stays the text's.
    fn owner(&self) -> Owner {
        match self {
            Text::Static(text) => Owner::Static(text),
            Text::Key(key) => Owner::Key((*key).clone()),
            Text::Value(value) => Owner::Value((*value).clone()),
            Text::Other(_) => Owner::None,
        }
    }
}

impl<'a> From<&'a Cow<'static, str>> for Text<'a> {
    fn from(name: &'a Cow<'static, str>) -> Self {
        match name {
            Cow::Borrowed(name) => Text::Static(name),
            Cow::Owned(name) => Text::Other(name),
        }
    }
}

/// What keeps a slot's text where it is (see [`Fragments`]).
#[derive(Debug)]
enum Owner {
    /// Nothing does: the slot's text is only compared.
    None,
    /// The text is never freed.
    Static(&'static str),
    Key(Key),
    Value(StringValue),
}

impl Owner {
    /// Where the text it keeps sits; 0 when it keeps none.
    fn address(&self) -> usize {
        let text = match self {
            Owner::None => return 0,
            Owner::Static(text) => text,
            Owner::Key(key) => key.as_str(),
            Owner::Value(value) => value.as_str(),
        };
        text.as_ptr() as usize
    }
}

#[derive(Debug)]
struct Slot {
    kind: Fragment,
    /// The address of the text, while `owner` keeps it there; 0 otherwise.
    at: usize,
    owner: Owner,
    text: Vec<u8>,
    /// Empty while the slot holds nothing.
    json: Vec<u8>,
}

impl Slot {
    /// Whether this slot encodes `text` as `kind`.
    #[inline]
    fn holds(&self, kind: Fragment, text: &str) -> bool {
        self.kind == kind
            && !self.json.is_empty()
            && ((self.at == text.as_ptr() as usize && self.text.len() == text.len())
                || crate::attrs::same_text(&self.text, text.as_bytes()))
    }

    /// Keeps `text` where it sits from now on, if it can be kept.
    fn keep(&mut self, text: Text<'_>) {
        self.owner = text.owner();
        self.at = self.owner.address();
    }
}

/// Pairs of slots, as a power of two.
const FRAGMENT_PAIRS_LOG2: u32 = 6;
const FRAGMENT_PAIRS: usize = 1 << FRAGMENT_PAIRS_LOG2;
/// Longer texts are encoded each time: a slot's buffers stay small.
const FRAGMENT_TEXT_BYTES: usize = 256;

impl Default for Fragments {
    fn default() -> Self {
        let empty = || Slot {
            kind: Fragment::String,
            at: 0,
            owner: Owner::None,
            text: Vec::new(),
            json: Vec::new(),
        };
        Self {
            pairs: (0..FRAGMENT_PAIRS)
                .map(|_| Pair {
                    slots: [empty(), empty()],
                    last: 0,
                })
                .collect(),
        }
    }
}

impl Fragments {
    /// Writes `text` encoded as `kind` to `out`. The hit is kept small
    /// enough to inline; the miss is out of line.
    #[inline]
    fn put(&mut self, out: &mut Vec<u8>, kind: Fragment, text: Text<'_>) {
        let str = text.as_str();
        if str.len() <= FRAGMENT_TEXT_BYTES {
            let pair = &mut self.pairs[pair_of(kind, str)];
            let first = pair.last;
            for way in [first, first ^ 1] {
                let slot = &pair.slots[way];
                if slot.holds(kind, str) {
                    out.extend_from_slice(&slot.json);
                    pair.last = way;
                    return;
                }
            }
        }
        self.miss(out, kind, text);
    }

    /// Encodes `text` as `kind` and keeps it in its pair's slot used less
    /// lately.
    #[cold]
    #[inline(never)]
    fn miss(&mut self, out: &mut Vec<u8>, kind: Fragment, text: Text<'_>) {
        let str = text.as_str();
        let start = out.len();
        match kind {
            Fragment::Key => {
                out.extend_from_slice(br#"{"key":"#);
                string(out, str);
                out.extend_from_slice(br#","value":"#);
            }
            Fragment::StringValue => {
                out.extend_from_slice(br#"{"stringValue":"#);
                string(out, str);
                out.push(b'}');
            }
            Fragment::String => string(out, str),
        }
        if str.len() > FRAGMENT_TEXT_BYTES {
            return;
        }
        let pair = &mut self.pairs[pair_of(kind, str)];
        let way = pair.last ^ 1;
        pair.last = way;
        let slot = &mut pair.slots[way];
        slot.kind = kind;
        slot.text.clear();
        slot.text.extend_from_slice(str.as_bytes());
        slot.json.clear();
        slot.json.extend_from_slice(&out[start..]);
        slot.keep(text);
    }
}

/// The pair of slots for `text` as `kind`, from its address and length.
fn pair_of(kind: Fragment, text: &str) -> usize {
    let address = text.as_ptr() as u64 ^ (text.len() as u64) ^ (kind as u64);
    let hash = address.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - FRAGMENT_PAIRS_LOG2);
    hash as usize & (FRAGMENT_PAIRS - 1)
}

/// An `AnyValue`: integers as strings, as the OTLP-JSON mapping has them.
fn value(out: &mut Vec<u8>, any: &Value) {
    match any {
        Value::String(text) => {
            out.extend_from_slice(br#"{"stringValue":"#);
            string(out, text.as_str());
            out.push(b'}');
        }
        Value::I64(number) => {
            out.extend_from_slice(br#"{"intValue":""#);
            int(out, *number);
            out.extend_from_slice(br#""}"#);
        }
        Value::Bool(true) => out.extend_from_slice(br#"{"boolValue":true}"#),
        Value::Bool(false) => out.extend_from_slice(br#"{"boolValue":false}"#),
        Value::F64(number) => {
            out.extend_from_slice(br#"{"doubleValue":"#);
            double(out, *number);
            out.push(b'}');
        }
        Value::Array(array) => {
            out.extend_from_slice(br#"{"arrayValue":{"values":["#);
            match array {
                Array::Bool(values) => list(out, values, |out, v| {
                    value(out, &Value::Bool(*v));
                }),
                Array::I64(values) => list(out, values, |out, v| {
                    value(out, &Value::I64(*v));
                }),
                Array::F64(values) => list(out, values, |out, v| {
                    value(out, &Value::F64(*v));
                }),
                Array::String(values) => list(out, values, |out, v| {
                    out.extend_from_slice(br#"{"stringValue":"#);
                    string(out, v.as_str());
                    out.push(b'}');
                }),
                other => {
                    // A kind of array this encoder does not know yet: the
                    // reference encoding, whatever it is.
                    let any = proto::AnyValue::from(Value::Array(other.clone()));
                    let Some(proto::any_value::Value::ArrayValue(array)) = any.value else {
                        return;
                    };
                    list(out, &array.values, |out, v| {
                        serde_json::to_writer(&mut *out, v).expect("values serialize");
                    });
                }
            }
            out.extend_from_slice(b"]}}");
        }
        other => {
            serde_json::to_writer(&mut *out, &proto::AnyValue::from(other.clone()))
                .expect("values serialize");
        }
    }
}

fn list<T>(out: &mut Vec<u8>, items: &[T], mut each: impl FnMut(&mut Vec<u8>, &T)) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        each(out, item);
    }
}

/// A JSON string: copied as it is unless it holds a character JSON must
/// escape (then escaped exactly as `serde_json` does).
fn string(out: &mut Vec<u8>, text: &str) {
    if needs_escape(text.as_bytes()) {
        serde_json::to_writer(&mut *out, text).expect("strings serialize");
    } else {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    }
}

/// Whether `bytes` hold a control character, a quote or a backslash.
/// Most strings here are keys, ids and names of 10 to 70 bytes, scanned
/// once per span: 16 bytes at a time where the CPU has SSE2 (every
/// x86-64), else 8 at a time; the last block overlaps the one before.
fn needs_escape(bytes: &[u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if bytes.len() >= 16 {
        return needs_escape_sse2(bytes);
    }
    needs_escape_words(bytes)
}

/// [`needs_escape`] eight bytes at a time.
fn needs_escape_words(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Whether any byte of `w` is below 0x20 or equal to `"` or `\`: exact,
    // by the classic has-zero-byte and has-less-than bit tricks.
    let special = |w: u64| {
        let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
        (w.wrapping_sub(ONES * 0x20) & !w & HIGH)
            | zero(w ^ (ONES * u64::from(b'"')))
            | zero(w ^ (ONES * u64::from(b'\\')))
            != 0
    };
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"));
    match bytes.len() {
        0..8 => bytes
            .iter()
            .any(|&b| (b < 0x20) | (b == b'"') | (b == b'\\')),
        len => {
            let mut at = 0;
            while at + 8 < len {
                if special(word(at)) {
                    return true;
                }
                at += 8;
            }
            special(word(len - 8))
        }
    }
}

/// [`needs_escape`] sixteen bytes at a time, for at least sixteen bytes.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn needs_escape_sse2(bytes: &[u8]) -> bool {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    let len = bytes.len();
    debug_assert!(len >= 16);
    // SAFETY: SSE2 is part of x86-64; every load reads 16 bytes inside
    // `bytes` (`at + 16 <= len`), unaligned loads being allowed.
    unsafe {
        let quote = _mm_set1_epi8(b'"' as i8);
        let backslash = _mm_set1_epi8(b'\\' as i8);
        let control = _mm_set1_epi8(0x1f);
        let special = |at: usize| {
            let v = _mm_loadu_si128(bytes.as_ptr().add(at).cast::<__m128i>());
            // A byte is at most 0x1f exactly when max(byte, 0x1f) is 0x1f.
            let low = _mm_cmpeq_epi8(_mm_max_epu8(v, control), control);
            let either = _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash));
            _mm_movemask_epi8(_mm_or_si128(low, either)) != 0
        };
        let mut at = 0;
        while at + 16 < len {
            if special(at) {
                return true;
            }
            at += 16;
        }
        special(len - 16)
    }
}

fn trace_state(out: &mut Vec<u8>, state: &TraceState) {
    if *state == TraceState::NONE {
        out.extend_from_slice(b"\"\"");
    } else {
        string(out, &state.header());
    }
}

fn double(out: &mut Vec<u8>, number: f64) {
    serde_json::to_writer(&mut *out, &number).expect("numbers serialize");
}

fn int(out: &mut Vec<u8>, number: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(number).as_bytes());
}

/// Each byte's two lower-case hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut b = 0;
    while b < 256 {
        pairs[b] = [DIGITS[b >> 4], DIGITS[b & 0xf]];
        b += 1;
    }
    pairs
};

/// Lower-case hex of an id, made on the stack and copied in once.
fn hex<const N: usize>(out: &mut Vec<u8>, bytes: &[u8; N]) {
    let mut text = [[0u8; 2]; N];
    for (pair, &b) in text.iter_mut().zip(bytes) {
        *pair = HEX_PAIRS[usize::from(b)];
    }
    out.extend_from_slice(text.as_flattened());
}

/// The OTLP span flags: the W3C trace flags plus whether the parent is remote.
fn span_flags(parent_is_remote: bool, trace_flags: u8) -> u32 {
    // SpanFlags::ContextHasIsRemoteMask and ContextIsRemoteMask.
    u32::from(trace_flags) | 0x100 | if parent_is_remote { 0x200 } else { 0 }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
